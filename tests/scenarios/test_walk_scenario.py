"""`fastpath hv walk`'s figures against what the walkers model: references per walk by depth
and page size (SDM Vol. 3C §29.3.3's (n+1)(m+1)-1 for the 2-D walk), EPT violations exactly
where pages are unmapped, and the TLB's effect and its loss to INVEPT and INVVPID."""

import pytest

from fastpath.scenarios import walk

SMALL = {"addresses": 600, "pages": 128}


def passes(report, kind):
    return {p["pass"]: p for p in report.figures[kind]}


@pytest.mark.parametrize("ept_levels, guest_levels", [(4, 4), (5, 4), (4, 5), (5, 5)])
def test_with_the_tlb_off_every_4k_walk_goes_the_whole_depth(ept_levels, guest_levels):
    report = walk.run(**SMALL, ept_levels=ept_levels, guest_levels=guest_levels, unmapped=0)
    ept, two_d = passes(report, "ept")["TLB off"], passes(report, "2d")["TLB off"]
    assert ept["references_per_translation"] == ept["worst_case_references"] == ept_levels
    worst = (ept_levels + 1) * (guest_levels + 1) - 1
    assert two_d["references_per_translation"] == two_d["worst_case_references"] == worst
    assert ept["translated"] == two_d["translated"] == SMALL["addresses"]
    assert ept["page_sizes"] == two_d["page_sizes"] == {"4K": SMALL["addresses"]}


def test_large_pages_end_the_walk_early():
    report = walk.run(**SMALL, page_size=1 << 21, unmapped=0)
    ept, two_d = passes(report, "ept")["TLB off"], passes(report, "2d")["TLB off"]
    assert ept["references_per_translation"] == 3 and ept["page_sizes"] == {"2M": 600}
    # Three guest table reads of four EPT reads each (the tables sit in 4 KiB pages), each
    # table's own read, and the final GPA's 3-level EPT walk.
    assert two_d["references_per_translation"] == 3 * 4 + 3 + 3


def test_addresses_on_unmapped_pages_are_ept_violations_with_their_qualifications():
    report = walk.run(**SMALL, unmapped=0.25, access="rw")
    ept, two_d = passes(report, "ept")["TLB off"], passes(report, "2d")["TLB off"]
    assert report.figures["unmapped_pages"] == 32
    for p in (ept, two_d):
        assert p["translated"] + p["ept_violations"] == SMALL["addresses"]
        assert sum(p["violations_by_qualification"].values()) == p["ept_violations"] > 0
    # The same addresses fault in both walks: a read or a write (bits 0, 1) to a page EPT
    # does not map (bits 5:3 clear), and in the 2-D walk, the final translation of a linear
    # address (bits 7 and 8).
    assert set(ept["violations_by_qualification"]) == {"0x1", "0x2"}
    assert {f"{int(q, 16) & 0x7F:#x}": n for q, n in
            two_d["violations_by_qualification"].items()} == ept["violations_by_qualification"]
    assert set(two_d["violations_by_qualification"]) == {"0x181", "0x182"}


@pytest.mark.parametrize("kind", ["ept", "2d"])
def test_the_tlb_saves_walks_and_invalidation_takes_the_saving_back(kind):
    report = walk.run(**SMALL, unmapped=0.1)
    p = passes(report, kind)
    off, cold, warm = p["TLB off"], p["TLB on, cold"], p["TLB on, warm"]
    after_invept = p["after INVEPT single-context"]
    for one in (cold, warm, after_invept):
        assert one["tlb_hits"] + one["tlb_misses"] == SMALL["addresses"]
        assert one["translated"] == off["translated"]
    assert off["references"] > cold["references"] > warm["references"]
    assert warm["tlb_hits"] > cold["tlb_hits"]
    assert after_invept["entries_dropped"] > 0
    # Everything the warm TLB held is gone: the pass after INVEPT is the cold pass again.
    assert (after_invept["tlb_hits"], after_invept["references"]) == (
        cold["tlb_hits"], cold["references"])
    if kind == "2d":
        after_invvpid = p["after INVVPID single-context"]
        assert after_invvpid["entries_dropped"] > 0
        assert after_invvpid["references"] == cold["references"]
