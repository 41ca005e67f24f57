"""Where a benchmark's two CPUs sit: the cache-line probe and the placements it tells apart."""

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastpath.bench._placement import (
    MODE_NAMES,
    Placement,
    describe_same_placement,
    line_transfer_ns,
    mode_of,
    same_placement,
)

TWO_CPUS = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")


@TWO_CPUS
def test_a_line_takes_tens_to_hundreds_of_nanoseconds_between_two_cpus():
    allowed = os.sched_getaffinity(0)
    cpus = tuple(sorted(allowed))[:2]
    transfer = line_transfer_ns(cpus, rounds=2000)
    assert transfer is not None and 5 < transfer < 20_000
    # The probe pins its own threads and leaves the calling thread where it was.
    assert os.sched_getaffinity(0) == allowed


def test_no_figure_comes_of_one_cpu_or_a_cpu_not_ours():
    cpu = min(os.sched_getaffinity(0))
    assert line_transfer_ns((cpu, cpu)) is None
    assert line_transfer_ns((cpu, max(os.sched_getaffinity(0)) + 1)) is None


def test_placements_part_at_their_bounds():
    assert [mode_of(ns) for ns in (35, 59.9, 60, 77, 119.9, 120, 200)] == [
        "near", "near", "mid", "mid", "mid", "far", "far"]
    assert mode_of(None) == "unknown"
    assert Placement(70, 80).mode == "mid"
    assert Placement(35, 190).mode == "moved"
    assert Placement(None, 35).mode == "unknown"
    assert Placement(190, 200).describe() == "far (190 → 200 ns)"


placements = st.builds(Placement, st.one_of(st.none(), st.floats(1, 1000)),
                       st.one_of(st.none(), st.floats(1, 1000)))


@given(st.lists(st.tuples(st.floats(0.1, 100), placements, st.floats(0.1, 100), placements)))
def test_only_pairs_that_kept_one_placement_are_counted_by_it(pairs):
    by_mode = same_placement(pairs)
    kept = [(a / b, p.mode) for a, p, b, q in pairs
            if p.mode == q.mode and p.mode in MODE_NAMES]
    assert list(by_mode) == [m for m in MODE_NAMES if any(mode == m for _, mode in kept)]
    for mode, figures in by_mode.items():
        ratios = sorted(r for r, m in kept if m == mode)
        assert figures["pairs"] == len(ratios)
        assert ratios[0] <= figures["median"] <= ratios[-1]
    assert describe_same_placement(by_mode) == (", ".join(
        f"{m} {v['median']:.2f} ({v['pairs']})" for m, v in by_mode.items()) or "-")
