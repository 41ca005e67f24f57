"""`fastpath bench txgen`, fastpath's traffic generator against DPDK's: its help and refusals, a
real short run into both sinks writing JSON, and the arithmetic of its ratios."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastpath.bench._placement import Placement
from fastpath.bench.txgen import Run, best_rate, summarize
from fastpath.testing import Testpmd

FASTPATH = [str(Path(sys.executable).parent / "fastpath")]
NEEDS_DPDK = pytest.mark.skipif(Testpmd.find() is None, reason="dpdk-testpmd is not installed")


def txgen(*args, timeout=900):
    return subprocess.run(FASTPATH + ["bench", "txgen", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_names_both_generators_both_sinks_and_the_options():
    result = txgen("--help")
    assert result.returncode == 0
    for text in ("fwd", "txonly", "testpmd", "rxonly", "--fwd drop", "ceiling", "--sizes",
                 "--sinks", "--rounds", "--json", "example"):
        assert text in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--sizes", "64,12"], "'12' is not a frame size of 60 to 1518 bytes"),
    (["--sinks", "qemu"], "unknown sink 'qemu'"),
    (["--rounds", "0"], "--rounds must be at least 1"),
])
def test_bad_arguments_are_refused_with_the_reason(args, message):
    result = txgen(*args)
    assert result.returncode == 2
    assert message in result.stderr


NEAR, FAR, MOVED = Placement(35, 40), Placement(190, 200), Placement(35, 190)


def test_ratios_are_of_the_best_runs_and_the_median_of_the_pairs():
    runs = [Run("fastpath", "dpdk", 64, 10.0, 9.0, FAR), Run("dpdk", "dpdk", 64, 20.0, 19.0, NEAR),
            Run("dpdk", "dpdk", 64, 10.0, 9.0, FAR), Run("fastpath", "dpdk", 64, 12.0, 11.0, FAR),
            Run("fastpath", "fastpath", 64, 15.0, 14.0, NEAR),
            Run("dpdk", "fastpath", 64, 5.0, 4.0, MOVED)]
    by_sink = {s["sink"]: s for s in summarize(runs, [64], ["dpdk", "fastpath"])}
    assert by_sink["dpdk"]["best_ratio"] == pytest.approx(12 / 20)
    assert by_sink["dpdk"]["ratios"] == [pytest.approx(0.5), pytest.approx(1.2)]
    assert by_sink["dpdk"]["median_ratio"] == pytest.approx(0.85)
    # The first pair ran far against near: only the second kept one placement.
    assert by_sink["dpdk"]["same_placement"] == {"far": {"median": pytest.approx(1.2),
                                                         "pairs": 1}}
    assert by_sink["fastpath"]["best_ratio"] == pytest.approx(3.0)
    assert by_sink["fastpath"]["same_placement"] == {}


def test_the_best_second_is_found_among_quarter_second_samples():
    # 1 M frames a second, then a second at 3 M: the best window is that one.
    samples = [(t / 4, 250_000 * t) for t in range(9)]
    samples += [(2 + t / 4, 2_000_000 + 750_000 * t) for t in range(1, 5)]
    assert best_rate(samples) == pytest.approx(3e6)


@pytest.mark.release_pass
@NEEDS_DPDK
def test_a_short_run_into_both_sinks_writes_the_table_and_json(tmp_path):
    out = tmp_path / "txgen.json"
    result = txgen("--sizes", "1518", "--rounds", "1", "--seconds", "1", "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "median ratio" in result.stdout and "same placement" in result.stdout
    data = json.loads(out.read_text())
    # Each run says where the CPUs were, from a probe before it and one after.
    for r in data["runs"]:
        assert r["placement_mode"] in ("near", "mid", "far", "moved")
        assert r["placement"]["before_ns"] > 0 and r["placement"]["after_ns"] > 0
    assert {(r["sink"], r["generator"]) for r in data["runs"]} == {
        (s, g) for s in ("dpdk", "fastpath") for g in ("dpdk", "fastpath")}
    for row in data["summary"]:
        assert row["fastpath_mpps"] > 0.1 and row["dpdk_mpps"] > 0.1
        assert row["best_ratio"] > 0
