"""`fastpath bench pvp`, the packet benchmark `make run` runs: its help and refusals, real short
runs against fastpath's and DPDK's back-ends and the traffic's own ceiling writing JSON and a
chart, the regression judge failing when a floor is not met, and the arithmetic behind its
figures: best runs, refusals, loss, generator-bound sizes and the median of pairs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastpath.bench.pvp import Run, _best_rate, summarize
from fastpath.testing import Testpmd

FASTPATH = [str(Path(sys.executable).parent / "fastpath")]
CHECKOUT = Path(__file__).resolve().parent.parent
NEEDS_DPDK = pytest.mark.skipif(Testpmd.find() is None, reason="dpdk-testpmd is not installed")


def pvp(*args, timeout=600):
    return subprocess.run(FASTPATH + ["bench", "pvp", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_teaches_the_job_and_the_comparisons():
    result = pvp("--help")
    assert result.returncode == 0
    for text in ("virtio-user", "vhost-net", "--peer", "--baseline", "--fail-below", "imix",
                 "--plot", "example"):
        assert text in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--sizes", "64,12"], "'12' is neither imix nor a size of 60 to 2030 bytes"),
    (["--sizes", "jumbo"], "'jumbo' is neither imix"),
    (["--fail-below", "0.7"], "--fail-below needs --baseline or --peer dpdk"),
    (["--baseline", "/nonexistent"], "/nonexistent is not a fastpath checkout"),
])
def test_bad_arguments_are_refused_with_the_reason(args, message):
    result = pvp(*args)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.release_pass
@NEEDS_DPDK
def test_a_short_run_beside_dpdk_writes_the_table_json_and_chart(tmp_path):
    out, chart = tmp_path / "pvp.json", tmp_path / "pvp.png"
    result = pvp("--peer", "dpdk", "--sizes", "64,imix", "--rounds", "1", "--seconds", "1",
                 "--json", str(out), "--plot", str(chart))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fastpath/dpdk" in result.stdout
    data = json.loads(out.read_text())
    assert set(data["backends"]) == {"fastpath", "dpdk", "sink"}
    assert [row["size"] for row in data["summary"]] == ["64", "imix"]
    for row in data["summary"]:
        for backend in ("fastpath", "dpdk"):
            # Frames go round and come back: a rate, and next to no loss.
            assert row[backend]["mpps"] > 0.1 and row[backend]["loss"] < 0.01
            assert row[backend]["generator_bound"] == (row[backend]["mpps"]
                                                       >= 0.9 * row["sink"]["mpps"])
            assert row[backend]["refused"] >= 0 and 0 <= row[backend]["refused_share"] < 1
        # The traffic alone into a sink: frames sent, none back.
        assert row["sink"]["mpps"] > 0.1
        assert row["fastpath/dpdk"] == pytest.approx(row["fastpath"]["mpps"]
                                                     / row["dpdk"]["mpps"])
    runs = {(r["backend"], r["size"]): r for r in data["runs"]}
    assert len(runs) == 6
    assert "generator-bound" in result.stdout and "refused" in result.stdout
    assert runs["fastpath", "64"]["frame_bytes"] == 64
    assert runs["sink", "64"]["frame_bytes"] == 64
    # IMIX: 7:4:1 of 64, 570 and 1518 bytes (FCS excluded) is 353.8 bytes a frame on average.
    assert runs["fastpath", "imix"]["frame_bytes"] == pytest.approx(353.8, abs=10)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.release_pass
def test_a_floor_not_met_fails_on_the_median_of_the_rounds():
    # This checkout against itself is near 1, so a floor of 100 cannot be met.
    result = pvp("--baseline", str(CHECKOUT), "--fail-below", "100", "--sizes", "64",
                 "--rounds", "1", "--seconds", "0.5")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "REGRESSION at 64: fastpath/baseline" in result.stderr
    assert "median of 1 round(s)" in result.stderr
    assert result.stderr.count("baseline    64:") == 1


def test_the_best_window_is_the_fastest_second_of_the_samples():
    # Quarter-second samples of a counter: 1 M frames/s, then a second at 3 M frames/s.
    samples = [(t / 4, int(t * 250_000)) for t in range(9)]
    samples += [(2 + t / 4, samples[-1][1] + t * 750_000) for t in range(1, 5)]
    assert _best_rate(samples) == pytest.approx(3e6)


def test_the_summary_takes_each_back_end_s_best_run_and_their_ratio():
    runs = [Run("fastpath", "64", 6.0, 5.5, 64, 100, 99, 0),
            Run("dpdk", "64", 10.0, 9.0, 64, 200, 198, 0),
            Run("dpdk", "64", 5.0, 4.0, 64, 200, 200, 0),
            Run("fastpath", "64", 8.0, 7.5, 64, 100, 100, 0)]
    (row,) = summarize(runs, ["64"], ["fastpath", "dpdk"])
    assert row["fastpath"]["mpps"] == 8.0 and row["fastpath"]["loss"] == 0.0
    assert row["fastpath"]["median_mpps"] == 7.0
    assert row["dpdk"]["loss"] == pytest.approx(0.01)
    assert row["fastpath"]["gbps"] == pytest.approx(8.0 * 64 * 8 / 1000)
    assert row["fastpath/dpdk"] == pytest.approx(0.8)
    # Round by round: 6/10 and 8/5.
    assert row["fastpath/dpdk median"] == pytest.approx((0.6 + 1.6) / 2)


def test_refusals_are_kept_and_sizes_near_the_traffic_s_ceiling_are_generator_bound():
    runs = [Run("fastpath", "64", 8.0, 7.5, 64, 1000, 1000, 250),
            Run("sink", "64", 8.5, 8.0, 64, 1200, 0, 0),
            Run("fastpath", "1518", 2.0, 1.9, 1518, 1000, 990, 0),
            Run("sink", "1518", 3.5, 3.4, 1518, 1800, 0, 0)]
    low, high = summarize(runs, ["64", "1518"], ["fastpath", "sink"])
    assert low["fastpath"]["refused"] == 250 and low["fastpath"]["refused_share"] == 0.2
    assert low["fastpath"]["generator_bound"]          # 8.0 >= 0.9 * 8.5
    assert not high["fastpath"]["generator_bound"]     # 2.0 < 0.9 * 3.5
    assert high["fastpath"]["loss"] == pytest.approx(0.01)
    assert low["sink"]["loss"] == 0.0 and "fastpath/sink" not in low
