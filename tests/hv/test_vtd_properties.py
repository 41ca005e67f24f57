"""Round trips for VT-d remapping: random domains (3-, 4- and 5-level, mixed page sizes and
permissions, pass-through and device-TLB contexts) are built with the builders, entries are
flipped at random, and the compiled core and the pure-Python reference must agree on every
translation, page size, permission, domain, reference count and fault. The caches must never
change an answer while the tables stand, and a burst must say what single translations say.
"""

from __future__ import annotations

import functools

import hypothesis.strategies as st
import numpy as np
from hypothesis import HealthCheck, given, settings

from fastpath.errors import DmaFault
from fastpath.hv import HostMemory, vtd
from fastpath.hv.vtd import (
    PAGE_1G,
    PAGE_2M,
    PAGE_4K,
    RootTable,
    SecondLevelTables,
    TranslationType,
    VtdCaches,
    VtdCaps,
)
from fastpath.testing.reference import vtd as reference

MIB = 1 << 20
SIZES = [PAGE_4K, PAGE_2M, PAGE_1G]
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CAPS = [VtdCaps(levels=(3, 4, 5), mgaw=57), VtdCaps(), VtdCaps(page_1g=False, mgaw=40),
        VtdCaps(levels=(3, 4, 5), mgaw=57, snoop_control=True, device_tlb=False, haw=40)]


def outcome(call):
    try:
        return ("ok", tuple(call()))
    except DmaFault as e:
        return ("fault", (e.reason, e.source_id, e.address, e.read, e.references, e.qualified))


def core(mem, rtaddr, sid, iova, access, caps, caches=None, ats=False):
    return vtd.translate(mem, rtaddr, sid, iova, access, caps=caps, caches=caches,
                         translation_request=ats)


def oracle(mem, rtaddr, sid, iova, access, caps, ats=False):
    return reference.translate(mem, rtaddr, sid, iova, access, cap=caps.cap, ecap=caps.ecap,
                               haw=caps.haw, translation_request=ats)


# Entry bits whose flips the rules single out: PS, SNP, bits at and above HAW, TM, ignored bits,
# X, TT, table addresses inside and outside (bit 21: beyond 2 MiB) memory.
INTERESTING_BITS = [7, 11, 21, 46, 47, 51, 62, 63, 2, 3, 13, 25, 35, 64 + 1, 64 + 7, 64 + 30]

mapping = st.tuples(st.integers(0, 3), st.integers(0, (1 << 30) - 1),
                    st.integers(0, (1 << 27) - 1), st.sampled_from(SIZES),
                    st.sampled_from(["r", "w", "rw"]))
device = st.tuples(st.integers(0, 0xFFFF), st.integers(0, 3), st.sampled_from([0, 1, 2]),
                   st.booleans())


def build(mem, devices, mappings, levels):
    """Four domains of the given depths; devices attached to them; mappings placed."""
    root = RootTable(mem, mem.frames)
    domains = [SecondLevelTables(mem, mem.frames, levels[k]) for k in range(4)]
    placed = []
    for domain, page, frame, size, perms in mappings:
        iova, hpa = page * PAGE_4K // size * size, frame * PAGE_4K // size * size
        try:
            domains[domain].map(iova, hpa, size, perms)
        except (ValueError, MemoryError):
            continue
        placed.append((domain, iova, size))
    attached = {}
    # One plain device per domain, then the drawn ones (which may replace them).
    for sid, domain, tt, fpd in [(0x0F00 | k, k, 0, False) for k in range(4)] + devices:
        try:
            root.attach(sid, domain + 1, None if tt == 2 else domains[domain], tt=tt, fpd=fpd)
        except MemoryError:
            continue
        attached[sid] = domain
    return root, placed, attached, domains


@settings(SETTINGS, max_examples=200)
@given(levels=st.tuples(*[st.sampled_from([3, 4, 5])] * 4),
       devices=st.lists(device, min_size=1, max_size=6),
       mappings=st.lists(mapping, min_size=1, max_size=16),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.one_of(
           st.integers(0, 127), st.sampled_from(INTERESTING_BITS))), max_size=6),
       probes=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6),
                                 st.integers(0, (1 << 30) - 1), st.sampled_from("rw"),
                                 st.booleans()),
                       min_size=1, max_size=10),
       path_flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 5), st.one_of(
           st.integers(0, 63), st.sampled_from(INTERESTING_BITS[:9]))), max_size=3),
       caps=st.sampled_from(CAPS))
def test_translations_agree_with_the_reference(levels, devices, mappings, flips, probes,
                                               path_flips, caps):
    mem = HostMemory(2 * MIB, table_area=(0, 2 * MIB))
    root, placed, attached, domains = build(mem, devices, mappings, levels)
    # And in the second-level entries on the way to a mapping (found before any is flipped).
    targets = []
    for pick, level, bit in path_flips:
        if placed:
            domain, iova, _ = placed[pick % len(placed)]
            try:
                at = domains[domain].entry_address(iova, min(level, domains[domain].levels))
            except LookupError:
                continue
            targets.append((at, bit, domain, iova))
    # Flip bits anywhere in the tables (root, context and second-level entries alike).
    used = mem.array.view("<u8").nonzero()[0]
    for pick, bit in flips:
        at = int(used[pick % len(used)]) * 8 + (8 if bit >= 64 else 0)
        mem.write64(at, mem.read64(at) ^ 1 << bit % 64)
    for at, bit, _, _ in targets:
        mem.write64(at, mem.read64(at) ^ 1 << bit)
    sids = sorted(attached)
    requests = []
    for device_pick, map_pick, offset, access, ats in probes:
        # Mostly attached devices; one probe in eight from anyone.
        sid = sids[device_pick % len(sids)] if device_pick % 8 != 7 else device_pick & 0xFFFF
        domain = attached.get(sid, 0)
        pages = [(iova, size) for d, iova, size in placed if d == domain] or [(0, PAGE_4K)]
        iova, size = pages[map_pick % len(pages)]
        requests += [(sid, probe, access, ats) for probe in (
            iova + offset % size, iova + offset * PAGE_4K, iova | 1 << (38 + offset % 20))]
    # Every device of a flipped path's domain reads and writes through it.
    requests += [(sid, iova, access, False) for _, _, domain, iova in targets
                 for sid in sids if attached[sid] == domain for access in "rw"]
    for sid, iova, access, ats in requests:
        assert (outcome(functools.partial(core, mem, root.root, sid, iova, access, caps, ats=ats))
                == outcome(functools.partial(oracle, mem, root.root, sid, iova, access, caps,
                                             ats=ats)))


@SETTINGS
@given(levels=st.tuples(*[st.sampled_from([3, 4])] * 4),
       devices=st.lists(device, min_size=1, max_size=6),
       mappings=st.lists(mapping, min_size=1, max_size=12),
       probes=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6),
                                 st.integers(0, (1 << 30) - 1), st.sampled_from("rw"),
                                 st.booleans()),
                       min_size=1, max_size=24),
       sizes=st.sampled_from([(1, 1), (8, 4), (1024, 256)]))
def test_the_caches_never_change_an_answer_while_the_tables_stand(levels, devices, mappings,
                                                                   probes, sizes):
    """Cached or walked, a translation is the same, and so is every fault (a refused hit
    walks); only the references differ."""
    mem = HostMemory(2 * MIB, table_area=(0, 2 * MIB))
    root, placed, attached, domains = build(mem, devices, mappings, levels)
    caches = VtdCaches(*sizes)
    sids = sorted(attached)
    for device_pick, map_pick, offset, access, ats in probes:
        sid = sids[device_pick % len(sids)]
        targets = [(iova, size) for d, iova, size in placed if d == attached[sid]] or [(0, 4096)]
        iova, size = targets[map_pick % len(targets)]
        probe = iova + offset % size

        def walk(caches, probe=probe, access=access, sid=sid, ats=ats):
            return core(mem, root.root, sid, probe, access, vtd.DEFAULT_CAPS, caches, ats)[:2]

        cached, walked = outcome(functools.partial(walk, caches)), outcome(
            functools.partial(walk, None))
        assert cached[0] == walked[0]
        if cached[0] == "ok":
            assert cached == walked
        else:
            assert cached[1][:4] == walked[1][:4]
    assert caches.iotlb_hits + caches.iotlb_misses == len(probes)


@SETTINGS
@given(mappings=st.lists(mapping, min_size=1, max_size=12),
       iovas=st.lists(st.integers(0, (1 << 40) - 1), min_size=1, max_size=40),
       access=st.sampled_from("rw"), cached=st.booleans())
def test_a_burst_says_what_single_translations_say(mappings, iovas, access, cached):
    mem = HostMemory(2 * MIB, table_area=(0, 2 * MIB))
    root, placed, _, _ = build(mem, [(0x0100, 0, TranslationType.TT_SECOND_LEVEL, False)],
                            mappings, (4, 4, 4, 4))
    iovas = [iova for domain, iova, _ in placed if domain == 0] + iovas
    burst = vtd.translate_burst(mem, root.root, 0x0100, iovas, access,
                                caches=VtdCaches() if cached else None)
    references = 0
    for k, iova in enumerate(iovas):
        answer = outcome(functools.partial(oracle, mem, root.root, 0x0100, iova, access,
                                           vtd.DEFAULT_CAPS))
        if answer[0] == "ok":
            assert (burst.hpas[k], burst.reasons[k]) == (answer[1][0], 0)
            references += answer[1][2]
        else:
            assert (burst.hpas[k], burst.reasons[k]) == (0, answer[1][0])
            references += answer[1][4]
    assert burst.translated == int(np.count_nonzero(burst.reasons == 0))
    if not cached:
        assert burst.references == references
