"""The regression gate's judge: alternated pairs of runs in, a verdict out.

A pair is one run of the tree and one of the baseline taken back to back (in either order) on
the same measurement. Its ratio, tree over baseline, cancels what the machine did during those
seconds; the median over pairs discards the pairs where it did something to one side only (on
this shared machine: another process on a CPU, or the host moving the two virtual CPUs apart).
A measurement passes when its median ratio is at or above the floor; the verdict passes when
every measurement does.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Judgement:
    """The verdict on one measurement (a direction and frame size, say)."""

    name: str
    ratios: tuple[float, ...]   # tree/baseline of each pair, in the order measured
    median: float
    floor: float

    @property
    def passed(self) -> bool:
        """Whether the median ratio is at or above the floor."""
        return self.median >= self.floor

    @property
    def spread(self) -> tuple[float, float]:
        """The lowest and the highest pair ratio."""
        return min(self.ratios), max(self.ratios)


@dataclass(frozen=True)
class Verdict:
    """The verdict on every measurement of one comparison."""

    judgements: tuple[Judgement, ...]

    @property
    def passed(self) -> bool:
        """Whether every measurement passed."""
        return all(j.passed for j in self.judgements)

    @property
    def failed(self) -> tuple[Judgement, ...]:
        """The measurements below the floor."""
        return tuple(j for j in self.judgements if not j.passed)


def judge(pairs: Mapping[str, Sequence[tuple[float, float]]], floor: float) -> Verdict:
    """Judge each measurement's pairs of (tree rate, baseline rate) against `floor`.

    Raises ValueError for a measurement without pairs, a negative rate, or a baseline rate of
    zero (a run that measured nothing says nothing about the tree).
    """
    if not 0 < floor:
        raise ValueError(f"the floor must be positive, not {floor}")
    judgements = []
    for name, measured in pairs.items():
        if not measured:
            raise ValueError(f"{name}: no pairs to judge")
        for tree, baseline in measured:
            if tree < 0 or baseline <= 0:
                raise ValueError(f"{name}: a pair of rates {tree}, {baseline} cannot be judged")
        ratios = tuple(tree / baseline for tree, baseline in measured)
        judgements.append(Judgement(name, ratios, statistics.median(ratios), floor))
    return Verdict(tuple(judgements))
