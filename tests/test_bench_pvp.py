"""`fastpath bench pvp`, the packet benchmark `make run` runs: its help and refusals, real short
runs against fastpath's and DPDK's back-ends and the traffic's own ceiling writing JSON and a
chart, with fastpath's traffic process and with DPDK testpmd's, the regression judge failing
when a floor is not met, and the arithmetic behind its figures: best runs, refusals, loss, the
ceiling and the bottleneck rule, and the median of pairs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastpath.bench.pvp import GENERATOR_BOUND, SINKS, Run, bottleneck, summarize

FASTPATH = [str(Path(sys.executable).parent / "fastpath")]
CHECKOUT = Path(__file__).resolve().parent.parent


def pvp(*args, timeout=600):
    return subprocess.run(FASTPATH + ["bench", "pvp", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_teaches_the_job_and_the_comparisons():
    result = pvp("--help")
    assert result.returncode == 0
    for text in ("virtio-user", "vhost-net", "--peer", "--baseline", "--fail-below", "imix",
                 "--plot", "example", "--traffic", "tx_first", "ceiling", "bottleneck",
                 "generator", "--fwd drop", "rxonly", "Reading the table"):
        assert text in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--sizes", "64,12"], "'12' is neither imix nor a size of 60 to 2030 bytes"),
    (["--sizes", "jumbo"], "'jumbo' is neither imix"),
    (["--fail-below", "0.7"], "--fail-below needs --baseline or --peer dpdk"),
    (["--baseline", "/nonexistent"], "/nonexistent is not a fastpath checkout"),
    (["--traffic", "dpdk", "--sizes", "64,imix"], "imix needs --traffic fastpath"),
    (["--traffic", "dpdk", "--burst", "1024"], "testpmd takes 1 to 512 frames a burst"),
])
def test_bad_arguments_are_refused_with_the_reason(args, message):
    result = pvp(*args)
    assert result.returncode == 2
    assert message in result.stderr


def check_ceiling_and_bottleneck(row):
    """The ceiling is the faster sink's best run, named; each back-end's share of it and
    bottleneck follow the rule."""
    assert row["ceiling"]["sink"] in SINKS
    assert row["ceiling"]["mpps"] == max(row[sink]["mpps"] for sink in SINKS) > 0.1
    for backend in ("fastpath", "dpdk"):
        b = row[backend]
        assert b["ceiling_mpps"] == row["ceiling"]["mpps"]
        assert b["ceiling_share"] == pytest.approx(b["mpps"] / row["ceiling"]["mpps"])
        assert b["bottleneck"] == ("generator" if b["ceiling_share"] >= 0.9 else "back-end")
        assert b["generator_bound"] == (b["bottleneck"] == "generator")


@pytest.mark.release_pass
@pytest.mark.peer("dpdk")
def test_a_short_run_beside_dpdk_writes_the_table_json_and_chart(tmp_path):
    out, chart = tmp_path / "pvp.json", tmp_path / "pvp.png"
    result = pvp("--peer", "dpdk", "--sizes", "64,imix", "--rounds", "1", "--seconds", "1",
                 "--json", str(out), "--plot", str(chart))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fastpath/dpdk" in result.stdout and "bottleneck" in result.stdout
    data = json.loads(out.read_text())
    assert data["traffic"]["kind"] == "fastpath"
    assert set(data["backends"]) == {"fastpath", "dpdk", *SINKS}
    assert [row["size"] for row in data["summary"]] == ["64", "imix"]
    for row in data["summary"]:
        for backend in ("fastpath", "dpdk"):
            # Frames go round and come back: a rate, and next to no loss.
            assert row[backend]["mpps"] > 0.1 and row[backend]["loss"] < 0.01
            assert row[backend]["refused"] >= 0 and 0 <= row[backend]["refused_share"] < 1
        check_ceiling_and_bottleneck(row)
        assert row["fastpath/dpdk"] == pytest.approx(row["fastpath"]["mpps"]
                                                     / row["dpdk"]["mpps"])
    runs = {(r["backend"], r["size"]): r for r in data["runs"]}
    assert len(runs) == 8
    assert "generator within 10%" in result.stdout and "refused" in result.stdout
    assert runs["fastpath", "64"]["frame_bytes"] == 64
    assert runs["sink-dpdk", "64"]["frame_bytes"] == 64
    # IMIX: 7:4:1 of 64, 570 and 1518 bytes (FCS excluded) is 353.8 bytes a frame on average.
    assert runs["fastpath", "imix"]["frame_bytes"] == pytest.approx(353.8, abs=10)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.release_pass
@pytest.mark.peer("dpdk")
def test_dpdk_s_traffic_process_goes_round_both_back_ends_and_finds_the_bottleneck(tmp_path):
    out = tmp_path / "pvp.json"
    result = pvp("--traffic", "dpdk", "--peer", "dpdk", "--sizes", "1518", "--rounds", "1",
                 "--seconds", "0.5", "--queue-size", "256", "--burst", "32",
                 "--json", str(out), "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DPDK testpmd virtio-user" in result.stdout and "bottleneck" in result.stdout
    data = json.loads(out.read_text())
    assert data["traffic"]["kind"] == "dpdk"
    (row,) = data["summary"]
    check_ceiling_and_bottleneck(row)
    runs = {r["backend"]: r for r in data["runs"]}
    assert set(runs) == {"fastpath", "dpdk", *SINKS}
    for backend in ("fastpath", "dpdk"):
        r = runs[backend]
        # Half the ring circulates: four bursts of 32, every frame sent back as it returns, so
        # what is out at the end is what was put in, less what testpmd had to drop.
        assert r["in_flight"] == 128 and r["frame_bytes"] == 1518
        assert r["sent"] - r["received"] == r["in_flight"] - r["refused"]
        assert r["received"] > 100_000 and r["loss"] < 0.01
        assert row[backend]["mpps"] > 0.1
    for sink in SINKS:
        # txonly alone: frames sent, none back.
        assert runs[sink]["received"] == 0 and runs[sink]["sent"] > 100_000
        assert runs[sink]["in_flight"] == 0


@pytest.mark.release_pass
def test_a_floor_not_met_fails_on_the_median_of_the_rounds():
    # This checkout against itself is near 1, so a floor of 100 cannot be met.
    result = pvp("--baseline", str(CHECKOUT), "--fail-below", "100", "--sizes", "64",
                 "--rounds", "1", "--seconds", "0.5")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "REGRESSION at 64: fastpath/baseline" in result.stderr
    assert "median of 1 round(s)" in result.stderr
    assert result.stderr.count("baseline    64:") == 1


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
            Run("sink-dpdk", "64", 8.5, 8.0, 64, 1200, 0, 0),
            Run("fastpath", "1518", 2.0, 1.9, 1518, 1000, 990, 0),
            Run("sink-dpdk", "1518", 3.5, 3.4, 1518, 1800, 0, 0)]
    low, high = summarize(runs, ["64", "1518"], ["fastpath", "sink-dpdk"])
    assert low["fastpath"]["refused"] == 250 and low["fastpath"]["refused_share"] == 0.2
    assert low["fastpath"]["bottleneck"] == "generator"          # 8.0 >= 0.9 * 8.5
    assert low["fastpath"]["generator_bound"]
    assert high["fastpath"]["bottleneck"] == "back-end"          # 2.0 < 0.9 * 3.5
    assert high["fastpath"]["ceiling_share"] == pytest.approx(2.0 / 3.5)
    assert high["fastpath"]["loss"] == pytest.approx(0.01)
    assert low["sink-dpdk"]["loss"] == 0.0 and "fastpath/sink-dpdk" not in low


@pytest.mark.parametrize("rate, ceiling, share, limit", [
    (9.0, 10.0, 0.9, "generator"),       # exactly 10 % below: still the generator's figure
    (8.99, 10.0, 0.899, "back-end"),
    (12.0, 10.0, 1.2, "generator"),      # above the ceiling (a noisy one): the generator's
    (0.0, 10.0, 0.0, "back-end"),
])
def test_within_ten_percent_of_the_ceiling_the_generator_is_the_bottleneck(rate, ceiling,
                                                                           share, limit):
    assert GENERATOR_BOUND == 0.9
    got_share, got_limit = bottleneck(rate, ceiling)
    assert got_share == pytest.approx(share) and got_limit == limit


@pytest.mark.parametrize("ceiling", [0.0, -1.0])
def test_a_ceiling_of_nothing_bounds_nothing(ceiling):
    with pytest.raises(ValueError, match="bounds nothing"):
        bottleneck(1.0, ceiling)


def test_the_ceiling_is_the_faster_sink_and_names_it():
    # Into DPDK's sink the traffic tops out at 12.7 Mpps; into fastpath's it sends 16: a
    # back-end at 12.5 would be generator-bound against the slower sink, and is not.
    runs = [Run("fastpath", "1518", 12.5, 12.0, 1518, 1000, 1000, 0),
            Run("sink-dpdk", "1518", 12.7, 12.5, 1518, 1000, 0, 0),
            Run("sink-fastpath", "1518", 16.0, 15.5, 1518, 1000, 0, 0)]
    (row,) = summarize(runs, ["1518"], ["fastpath", "sink-fastpath", "sink-dpdk"])
    assert row["ceiling"]["sink"] == "sink-fastpath" and row["ceiling"]["mpps"] == 16.0
    assert row["ceiling"]["gbps"] == pytest.approx(16.0 * 1518 * 8 / 1000)
    assert row["fastpath"]["ceiling_mpps"] == 16.0
    assert row["fastpath"]["ceiling_share"] == pytest.approx(12.5 / 16.0)
    assert row["fastpath"]["bottleneck"] == "back-end"
    # The ceiling comes from the same rounds: the best of each sink's runs.
    runs.append(Run("sink-dpdk", "1518", 17.0, 16.0, 1518, 1000, 0, 0))
    (row,) = summarize(runs, ["1518"], ["fastpath", "sink-fastpath", "sink-dpdk"])
    assert row["ceiling"]["sink"] == "sink-dpdk" and row["ceiling"]["mpps"] == 17.0


def test_a_round_trip_loses_only_frames_that_stopped_circulating():
    # 128 frames circulate: 128 still out at the end are not lost; 28 out means 100 dropped.
    whole = Run("fastpath", "64", 5.0, 5.0, 64, 10_000, 9_872, 0, in_flight=128)
    dropped = Run("fastpath", "64", 5.0, 5.0, 64, 10_000, 9_972, 100, in_flight=128)
    assert whole.loss == 0.0
    assert dropped.loss == pytest.approx(100 / 10_000)
    # txonly traffic keeps no fixed number out: what did not come back is lost.
    assert Run("fastpath", "64", 5.0, 5.0, 64, 10_000, 9_900, 0).loss == pytest.approx(0.01)
