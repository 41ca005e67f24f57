"""Where the two CPUs a benchmark runs on sit, told by the time a cache line takes from one to
the other, measured just before and just after each run.

The host moves this machine's two virtual CPUs closer together or further apart every few
seconds, and a rate that busy-polls across them follows: the same pair of processes runs
three times faster in one placement than in another. A ratio of two runs in different
placements measures the move, not the software; a run's placement is what tells such pairs
apart."""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass

import numpy as np

from fastpath._core.placement import line_bounce

ROUNDS = 20_000           # round trips of a probe: a few milliseconds in any placement
TIMEOUT_SECONDS = 1.0     # a probe whose other side gets no CPU for this long tells nothing
# One-way transfer times that part the placements. Probed here once a second for half a
# minute: 31 to 45 ns most of the time, 175 to 208 ns for seconds at a stretch; a round trip of
# about 155 ns has also been seen (../shared/peers.md), which falls between.
MODES = ((60.0, "near"), (120.0, "mid"), (float("inf"), "far"))
MODE_NAMES = tuple(name for _, name in MODES)
CACHE_LINE = 64


def mode_of(transfer_ns: float | None) -> str:
    """The placement a one-way transfer time falls in: near, mid or far (unknown: none)."""
    if transfer_ns is None:
        return "unknown"
    return next(name for bound, name in MODES if transfer_ns < bound)


def line_transfer_ns(cpus: tuple[int, int], rounds: int = ROUNDS) -> float | None:
    """Nanoseconds one cache line takes from CPU cpus[0] to CPU cpus[1] (the mean of both ways
    over `rounds` round trips), or None if either CPU is not this process's to use or the
    other side stopped answering."""
    if not set(cpus) <= os.sched_getaffinity(0) or cpus[0] == cpus[1]:
        return None
    # The word sits alone on its cache line, so that nothing else moves with it.
    words = np.zeros(3 * CACHE_LINE // 8, dtype=np.uint64)
    line = words.ctypes.data + (-words.ctypes.data) % CACHE_LINE + CACHE_LINE
    deadline = time.monotonic_ns() + int(TIMEOUT_SECONDS * 1e9)
    took = [-1, -1]

    def play(side: int) -> None:
        # Linux sets the affinity of the calling thread alone.
        os.sched_setaffinity(0, {cpus[side]})
        took[side] = line_bounce(line, side, rounds, deadline)

    threads = [threading.Thread(target=play, args=(side,)) for side in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if took[0] <= 0 or took[1] < 0:
        return None
    return took[0] / (2 * (rounds - 1))


@dataclass(frozen=True)
class Placement:
    """The one-way transfer time between a run's two CPUs just before and just after it."""

    before_ns: float | None
    after_ns: float | None

    @property
    def mode(self) -> str:
        """near, mid or far when both probes agree; moved when they do not (the host moved
        the CPUs during the run); unknown when a probe could not run."""
        before, after = mode_of(self.before_ns), mode_of(self.after_ns)
        if "unknown" in (before, after):
            return "unknown"
        return before if before == after else "moved"

    def describe(self) -> str:
        """\"near (38 → 41 ns)\"."""
        def ns(value: float | None) -> str:
            return "?" if value is None else f"{value:.0f}"
        return f"{self.mode} ({ns(self.before_ns)} → {ns(self.after_ns)} ns)"


def same_placement(pairs: list[tuple[float, Placement, float, Placement]]) -> dict[str, dict]:
    """Of pairs of runs (rate, placement, other rate, other placement), those whose two runs
    kept one placement throughout, by placement: {mode: {"median": median ratio of the
    rates, "pairs": how many}}, the modes in order from near to far."""
    ratios: dict[str, list[float]] = {}
    for rate, placement, other_rate, other_placement in pairs:
        mode = placement.mode
        if mode == other_placement.mode and mode in MODE_NAMES and other_rate > 0:
            ratios.setdefault(mode, []).append(rate / other_rate)
    return {mode: {"median": statistics.median(ratios[mode]), "pairs": len(ratios[mode])}
            for mode in MODE_NAMES if mode in ratios}


def describe_same_placement(by_mode: dict[str, dict]) -> str:
    """\"near 1.70 (1), far 0.84 (3)\", or \"-\" when no pair kept one placement."""
    return ", ".join(f"{mode} {v['median']:.2f} ({v['pairs']})"
                     for mode, v in by_mode.items()) or "-"
