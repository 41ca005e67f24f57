"""Random addresses through EPT (GPA -> HPA) and through the two-dimensional walk (GVA -> GPA
-> HPA: guest IA-32e paging whose every table read is itself an EPT walk), over raw tables in
host memory, with the TLB off, cold, warm, and after INVVPID and INVEPT.

What is modelled: guest RAM of --pages pages of --page-size, mapped by EPT tables of
--ept-levels levels and by guest page tables of --guest-levels levels (CR4.LA57 for 5) at the
same page size; the guest's own tables sit in 4 KiB pages of guest RAM that EPT maps too. A
fraction --unmapped of the RAM pages is left out of EPT, so that addresses landing there end in
an EPT violation (for the 2-D walk, at the final translation of the linear address). Every
walk is the compiled walker's, one address at a time, accesses taken in turn from --access.
The TLB is tagged by EPTP (guest-physical entries) and by VPID and PCID (combined entries);
the same addresses are walked with it cold (empty), warm (after the cold pass), and again
after INVVPID single-context (which drops the VPID's combined entries) and after INVEPT
single-context (every entry of the EPTP).

Translations table, one row per pass:
  walk           EPT (GPA->HPA) or 2-D (GVA->HPA)
  pass           TLB off, TLB on cold and warm, and after an invalidation (with the entries
                 it dropped)
  translated     walks that produced an HPA
  EPT violations walks that ended in an EPT violation (exit reason 48)
  refs/walk      paging-structure reads per translated walk, on average (0 on a TLB hit)
  worst case     the reads of one walk with nothing cached and 4 KiB pages: n for n-level
                 EPT, (n+1)(m+1)-1 for m-level guest paging over it (24 for 4 over 4)
  TLB hits       lookups the TLB answered; TLB misses: lookups that walked the tables
  page sizes     the page sizes the translations ended in (for 2-D, the smaller of the two)
EPT violations table: each exit qualification met, in words (SDM Table 28-7), and how many.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from fastpath.errors import EptViolation, TranslationFault
from fastpath.hv import FrameAllocator, HostMemory, ept, paging
from fastpath.hv.ept import (
    CAP_BITS,
    INVEPT_SINGLE_CONTEXT,
    INVVPID_SINGLE_CONTEXT,
    PAGE_4K,
    EptCaps,
    EptTables,
    Tlb,
)
from fastpath.hv.paging import DEFAULT_CR4, ControlBits, GuestPageTables
from fastpath.scenarios._options import (
    fraction,
    page_size_name,
    parse_page_size,
    positive_int,
    power_of_two,
    whole_number,
)
from fastpath.scenarios._qualifications import describe_ept_violation
from fastpath.scenarios._report import Report, Table

MAX_PAGES = 1 << 18
# The guest-physical span stays below 2^42 so that data HPAs (span above DATA_HPA) stay inside
# the model's 46-bit MAXPHYADDR.
MAX_SPAN = 1 << 42
DATA_HPA = 1 << 44          # data pages need no host memory: walks read only the tables
GVA_BASE = 1 << 44          # canonical under 4- and 5-level paging, 1 GiB-aligned
VPID = 1
# A CPU with every EPT feature the model knows, 5-level walks included.
CAPS = EptCaps.with_features(*CAP_BITS)
ENTRIES_PER_TABLE = 512


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `fastpath hv walk`."""
    parser.add_argument("--addresses", type=positive_int,
                        help="random addresses walked in each pass")
    parser.add_argument("--pages", type=positive_int,
                        help=f"guest RAM pages (at most {MAX_PAGES}); the addresses fall in "
                        "them at random")
    parser.add_argument("--page-size", type=parse_page_size,
                        help="the page size EPT and the guest map RAM with: 4k, 2m or 1g")
    parser.add_argument("--ept-levels", type=int, choices=(4, 5),
                        help="EPT paging-structure levels")
    parser.add_argument("--guest-levels", type=int, choices=(4, 5),
                        help="guest paging levels (5 is CR4.LA57)")
    parser.add_argument("--unmapped", type=fraction,
                        help="fraction of RAM pages left out of EPT: walks to them end in an "
                        "EPT violation")
    parser.add_argument("--access", type=_accesses,
                        help="accesses the walks make, in turn: letters of r, w, x")
    parser.add_argument("--tlb-entries", type=power_of_two,
                        help="TLB entries for the passes with the TLB on")
    parser.add_argument("--seed", type=whole_number,
                        help="seed of the random addresses and of the unmapped pages")


def _accesses(text: str) -> str:
    if not text or set(text) - set("rwx"):
        raise argparse.ArgumentTypeError(f"expected letters of r, w, x, not {text!r}")
    return text


class WalkPlatform:
    """Host memory holding EPT tables that map guest RAM (less the unmapped pages) and the
    guest's page tables, and guest tables mapping a linear range onto all of RAM."""

    def __init__(self, pages: int, size: int, ept_levels: int, guest_levels: int,
                 unmapped: float, seed: int):
        if pages > MAX_PAGES or pages * size > MAX_SPAN:
            raise ValueError(f"{pages} pages of {page_size_name(size)} are more than the "
                             f"model maps here (at most {MAX_PAGES} pages and "
                             f"{MAX_SPAN >> 40} TiB)")
        self.ept_levels, self.guest_levels = ept_levels, guest_levels
        rng = np.random.default_rng(seed)
        self.unmapped = frozenset(
            rng.choice(pages, size=round(unmapped * pages), replace=False).tolist())
        # Enough table frames for one leaf table per 512 entries and every level above.
        guest_table_bytes = (pages // ENTRIES_PER_TABLE + 8 * guest_levels) * PAGE_4K
        ept_table_bytes = ((pages + guest_table_bytes // PAGE_4K) // ENTRIES_PER_TABLE
                           + 8 * ept_levels) * PAGE_4K
        guest_tables_hpa = PAGE_4K + ept_table_bytes
        self.mem = HostMemory(guest_tables_hpa + guest_table_bytes,
                              table_area=(PAGE_4K, guest_tables_hpa))
        self.ept = EptTables(self.mem, self.mem.frames, ept_levels)
        for page in range(pages):
            if page not in self.unmapped:
                self.ept.map(page * size, DATA_HPA + page * size, size)
        # The guest's tables live in 4 KiB pages of guest RAM just above the data.
        tables_gpa = pages * size
        for offset in range(0, guest_table_bytes, PAGE_4K):
            self.ept.map(tables_gpa + offset, guest_tables_hpa + offset)

        def hpa_of(gpa: int) -> int:
            return gpa - tables_gpa + guest_tables_hpa

        frames = FrameAllocator(tables_gpa, tables_gpa + guest_table_bytes,
                                lambda gpa: self.mem.zero_frame(hpa_of(gpa)))
        self.guest = GuestPageTables(self.mem, frames, hpa_of, guest_levels)
        for page in range(pages):
            self.guest.map(GVA_BASE + page * size, page * size, size)
        self.eptp = self.ept.eptp()
        self.cr4 = DEFAULT_CR4 | (ControlBits.CR4_LA57 if guest_levels == 5 else 0)

    def worst_case(self, kind: str) -> int:
        """Reads of one walk with nothing cached and 4 KiB pages (hv.md §1.10's (n+1)(m+1)-1
        for the 2-D walk: each of the m guest table reads and the final GPA take an n-level
        EPT walk, and each guest table read is a read itself)."""
        n, m = self.ept_levels, self.guest_levels
        return n if kind == "ept" else (n + 1) * (m + 1) - 1

    def walk(self, kind: str, offset: int, access: str, tlb: Tlb | None):
        """One walk of the address `offset` bytes into RAM (a GPA, or a GVA above GVA_BASE)."""
        if kind == "ept":
            return ept.walk(self.mem, self.eptp, offset, access, caps=CAPS, tlb=tlb)
        return paging.walk_2d(self.mem, self.eptp, self.guest.cr3, GVA_BASE + offset, access,
                              cr4=self.cr4, caps=CAPS, tlb=tlb, vpid=VPID)

    def close(self) -> None:
        """Let go of host memory."""
        self.mem.close()


def _pass(platform: WalkPlatform, kind: str, offsets: list[int], accesses: str,
          tlb: Tlb | None, label: str, dropped: int | None = None) -> dict:
    translated = references = translated_references = 0
    page_sizes: Counter[str] = Counter()
    violations: Counter[int] = Counter()
    other_faults: Counter[str] = Counter()
    if tlb is not None:
        tlb.reset_counters()
    for k, offset in enumerate(offsets):
        try:
            done = platform.walk(kind, offset, accesses[k % len(accesses)], tlb)
        except EptViolation as violation:
            violations[violation.qualification] += 1
            references += violation.references
            continue
        except TranslationFault as fault:
            other_faults[type(fault).__name__] += 1
            references += fault.references
            continue
        translated += 1
        references += done.references
        translated_references += done.references
        page_sizes[page_size_name(done.page_size)] += 1
    return {
        "pass": label,
        "tlb": tlb is not None,
        "entries_dropped": dropped,
        "addresses": len(offsets),
        "translated": translated,
        "ept_violations": sum(violations.values()),
        "other_faults": dict(other_faults),
        "references": references,
        "references_per_translation": translated_references / translated if translated else 0,
        "worst_case_references": platform.worst_case(kind),
        "page_sizes": dict(page_sizes),
        "tlb_hits": None if tlb is None else tlb.hits,
        "tlb_misses": None if tlb is None else tlb.misses,
        "violations_by_qualification": {f"{q:#x}": n for q, n in sorted(violations.items())},
    }


def _passes(platform: WalkPlatform, kind: str, offsets: list[int], accesses: str,
            tlb_entries: int) -> list[dict]:
    passes = [_pass(platform, kind, offsets, accesses, None, "TLB off")]
    tlb = Tlb(tlb_entries, CAPS)
    passes.append(_pass(platform, kind, offsets, accesses, tlb, "TLB on, cold"))
    passes.append(_pass(platform, kind, offsets, accesses, tlb, "TLB on, warm"))
    if kind == "2d":
        # INVVPID drops the combined (linear) entries only; the guest-physical ones stay.
        dropped = tlb.invvpid(INVVPID_SINGLE_CONTEXT, VPID)
        passes.append(_pass(platform, kind, offsets, accesses, tlb,
                            "after INVVPID single-context", dropped))
    dropped = tlb.invept(INVEPT_SINGLE_CONTEXT, platform.eptp)
    passes.append(_pass(platform, kind, offsets, accesses, tlb,
                        "after INVEPT single-context", dropped))
    return passes


WALK_NAMES = {"ept": "EPT (GPA->HPA)", "2d": "2-D (GVA->HPA)"}


def run(addresses: int = 5000, pages: int = 1024, page_size: int = PAGE_4K,
        ept_levels: int = 4, guest_levels: int = 4, unmapped: float = 0.1,
        access: str = "rw", tlb_entries: int = 1024, seed: int = 1) -> Report:
    """Walk `addresses` random addresses through EPT and through the 2-D walk, each with the
    TLB off, cold, warm, and after INVVPID (2-D) and INVEPT; see the module docstring."""
    platform = WalkPlatform(pages, page_size, ept_levels, guest_levels, unmapped, seed)
    try:
        rng = np.random.default_rng(seed + 1)
        offsets = (rng.integers(0, pages * page_size, size=addresses, dtype=np.uint64)
                   & ~np.uint64(7)).tolist()
        results = {kind: _passes(platform, kind, offsets, access, tlb_entries)
                   for kind in WALK_NAMES}
    finally:
        platform.close()
    figures = {
        "pages": pages, "page_size": page_size, "ept_levels": ept_levels,
        "guest_levels": guest_levels, "unmapped_pages": len(platform.unmapped),
        "access": access, "tlb_entries": tlb_entries,
        **results,
    }
    return Report("walk", figures, [_translations_table(results),
                                    _violations_table(results)])


def _translations_table(results: dict[str, list[dict]]) -> Table:
    table = Table("Translations", ["walk", "pass", "translated", "EPT violations",
                                   "refs/walk", "worst case", "TLB hits", "TLB misses",
                                   "page sizes"])
    for kind, passes in results.items():
        for p in passes:
            label = p["pass"] + ("" if p["entries_dropped"] is None
                                 else f" ({p['entries_dropped']} dropped)")
            table.rows.append([
                WALK_NAMES[kind], label, p["translated"], p["ept_violations"],
                f"{p['references_per_translation']:.2f}", p["worst_case_references"],
                "-" if p["tlb_hits"] is None else p["tlb_hits"],
                "-" if p["tlb_misses"] is None else p["tlb_misses"],
                " ".join(f"{size}:{n}" for size, n in p["page_sizes"].items()) or "-"])
    return table


def _violations_table(results: dict[str, list[dict]]) -> Table:
    table = Table("EPT violations by qualification (TLB off)",
                  ["walk", "qualification", "meaning", "count"])
    for kind, passes in results.items():
        for qualification, count in passes[0]["violations_by_qualification"].items():
            table.rows.append([WALK_NAMES[kind], qualification,
                               describe_ept_violation(int(qualification, 16)), count])
    return table
