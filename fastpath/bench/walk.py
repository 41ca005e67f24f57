"""`fastpath bench walk`: address translations per second, the compiled walkers beside the
pure-Python reference in the same run, with the TLB off and on.

The job measured: translate a burst of random addresses inside a mapped range, read accesses,
through 4-level EPT (GPA -> HPA) and through 4-level guest paging over 4-level EPT (GVA -> GPA ->
HPA, 24 references a walk), 4 KiB pages everywhere so that every walk goes the whole depth.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from fastpath.bench._report import environment, print_table, write_json
from fastpath.hv import ept, paging
from fastpath.hv.ept import PAGE_4K, Tlb
from fastpath.hv.paging import DEFAULT_CR0, DEFAULT_CR4, DEFAULT_EFER
from fastpath.scenarios.walk import GVA_BASE, WalkPlatform


class Rig:
    """The walk scenario's platform with every page mapped (4-level EPT under 4-level guest
    paging, 4 KiB pages), and a fixed set of random offsets into its RAM to walk."""

    def __init__(self, pages: int, seed: int = 1):
        self.platform = WalkPlatform(pages, PAGE_4K, ept_levels=4, guest_levels=4,
                                     unmapped=0.0, seed=seed)
        self.mem, self.eptp = self.platform.mem, self.platform.eptp
        self.cr3 = self.platform.guest.cr3
        rng = np.random.default_rng(seed)
        self.offsets = (rng.integers(0, pages * PAGE_4K, size=1 << 20, dtype=np.uint64)
                        & ~np.uint64(7))

    def addresses(self, kind: str, n: int) -> np.ndarray:
        """n addresses of the kind ('ept': GPAs, '2d': GVAs), cycling through the random set."""
        picked = np.resize(self.offsets, n)
        return picked if kind == "ept" else picked + np.uint64(GVA_BASE)

    def core(self, kind: str, n: int, tlb: Tlb | None) -> tuple[float, float]:
        """Compiled walks per second over a burst of n addresses, and references per walk."""
        addrs = self.addresses(kind, n)
        start = time.perf_counter()
        if kind == "ept":
            burst = ept.walk_burst(self.mem, self.eptp, addrs, "r", tlb=tlb)
        else:
            burst = paging.walk_2d_burst(self.mem, self.eptp, self.cr3, addrs, "r",
                                         tlb=tlb)
        elapsed = time.perf_counter() - start
        if burst.translated != n:
            raise RuntimeError(f"{n - burst.translated} of {n} {kind} walks failed "
                               f"(codes {set(burst.codes)})")
        return n / elapsed, burst.references / n

    def reference(self, kind: str, n: int) -> float:
        """Pure-Python reference walks per second over n addresses."""
        from fastpath.testing.reference import paging as reference

        addrs = [int(a) for a in self.addresses(kind, n)]
        caps = ept.DEFAULT_CAPS.word
        start = time.perf_counter()
        if kind == "ept":
            for a in addrs:
                reference.ept_walk(self.mem, self.eptp, a, "r", caps_word=caps)
        else:
            for a in addrs:
                reference.walk_2d(self.mem, self.eptp, self.cr3, a, "r", cr0=DEFAULT_CR0,
                                  cr4=DEFAULT_CR4, efer=DEFAULT_EFER, caps_word=caps)
        return n / (time.perf_counter() - start)


@dataclass
class Row:
    """One line of the result table."""

    walk: str
    tlb: bool
    core: float
    reference: float
    references_per_walk: float
    tlb_hit_rate: float | None

    @property
    def ratio(self) -> float:
        return self.core / self.reference


KINDS = ("ept", "2d")


def measure(args: argparse.Namespace, progress) -> list[Row]:
    """Each walk kind with the TLB off and on, alternating core and reference runs."""
    rig = Rig(args.pages)
    rows = []
    for kind in args.walks_of:
        reference_rates = []
        for use_tlb in (False, True):
            progress(f"{kind} walks, TLB {'on' if use_tlb else 'off'}")
            rates, hit_rate = [], None
            rig.core(kind, 1000, None)  # warm caches
            for _ in range(args.repeat):
                tlb = Tlb(args.tlb_entries) if use_tlb else None
                rate, references = rig.core(kind, args.walks, tlb)
                rates.append(rate)
                if tlb is not None:
                    hit_rate = tlb.hits / (tlb.hits + tlb.misses)
                if len(reference_rates) < args.repeat:
                    reference_rates.append(rig.reference(kind, args.reference_walks))
            rows.append(Row(kind, use_tlb, max(rates), max(reference_rates), references,
                            hit_rate))
    rig.platform.close()
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `fastpath bench walk`."""
    parser.add_argument("--walks", type=int, default=2_000_000,
                        help="addresses per compiled burst")
    parser.add_argument("--reference-walks", type=int, default=20_000,
                        help="addresses per pure-Python reference run")
    parser.add_argument("--pages", type=int, default=4096,
                        help="4 KiB pages mapped (the addresses fall in them at random)")
    parser.add_argument("--tlb-entries", type=int, default=8192,
                        help="TLB entries for the runs with the TLB on (a power of two)")
    parser.add_argument("--kinds", dest="walks_of", type=_kinds, default="ept,2d",
                        help="walks to time, comma-separated: ept (GPA->HPA), 2d (GVA->HPA)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="alternated runs of each side; the best of each is reported")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def _kinds(text: str) -> list[str]:
    kinds = [k for k in text.split(",") if k]
    if not kinds or set(kinds) - set(KINDS):
        raise argparse.ArgumentTypeError("expected a comma-separated list of ept/2d")
    return kinds


def run(args: argparse.Namespace) -> int:
    """`fastpath bench walk`: measure, print the table, write JSON if asked."""
    env = environment()
    print(f"fastpath bench walk  ({env['fastpath']}, git {env['git']}, {env['build']} build, "
          f"{args.pages} pages, 4-level, 4 KiB pages, one core)", flush=True)
    if env["build"] == "debug":
        print("warning: the core is a FASTPATH_DEBUG build; figures are not representative "
              "(rebuild with `make build`)", file=sys.stderr)
    rows = measure(args, lambda message: print(message, file=sys.stderr, flush=True))
    print_table(
        ["walk", "TLB", "refs/walk", "core (M walks/s)", "reference (k walks/s)",
         "core/reference", "TLB hits"],
        [[r.walk, "on" if r.tlb else "off", f"{r.references_per_walk:.1f}",
          f"{r.core / 1e6:.1f}",
          f"{r.reference / 1e3:.1f}", f"{r.ratio:.0f}x",
          "-" if r.tlb_hit_rate is None else f"{r.tlb_hit_rate:.0%}"] for r in rows],
    )
    if args.json:
        write_json(args.json, {"benchmark": "walk", "environment": env,
                               "arguments": vars(args) | {"func": None},
                               "results": [asdict(r) | {"ratio": r.ratio} for r in rows]})
        print(f"results written to {args.json}")
    return 0
