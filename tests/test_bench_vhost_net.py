"""`fastpath bench vhost-net` and what the regression gate stands on: a checkout started as a
baseline imports nothing but itself, a back-end says and shows which checkout it runs, the
arithmetic of a run's figures, and the refusals of bad options."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastpath.bench._placement import Placement, same_placement
from fastpath.bench.vhost_net import (
    Cell,
    Run,
    WrongCheckout,
    _best_running_rate,
    _placed_pairs,
    check_checkout,
    checkout_of_this_fastpath,
    cpu_seconds,
)
from fastpath.testing import VhostNetProcess, loaded_checkouts, source_python

FASTPATH = [str(Path(sys.executable).parent / "fastpath")]
CHECKOUT = Path(__file__).resolve().parent.parent


def test_a_baseline_imports_its_own_fastpath_even_from_the_tree_s_directory(tmp_path):
    # A checkout with a fastpath package of its own, started from the tree's root, where `-m`
    # would put the current directory (the tree's fastpath) first on the path.
    other = tmp_path / "other"
    (other / "fastpath").mkdir(parents=True)
    (other / "fastpath" / "__init__.py").write_text("")
    python, env = source_python(other)
    found = subprocess.run([*python, "-c", "import fastpath, numpy; print(fastpath.__file__)"],
                           cwd=CHECKOUT, env=env, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == str(other / "fastpath" / "__init__.py")


def test_the_checkouts_a_process_loaded_come_from_its_memory_map():
    import fastpath.vring  # noqa: F401  (it loads this checkout's compiled core)

    assert loaded_checkouts(os.getpid()) == {str(checkout_of_this_fastpath())}


@pytest.mark.release_pass
def test_a_back_end_says_and_shows_which_checkout_it_runs(tmp_path):
    with VhostNetProcess(tmp_path / "vhost.sock", fwd="drop", source=CHECKOUT,
                         extra=["--stats-period", "0"]) as backend:
        assert backend.reported["file"] == str(CHECKOUT / "fastpath" / "__init__.py")
        assert backend.checkouts() == {str(CHECKOUT)}
        assert check_checkout("fastpath", backend, CHECKOUT)[0] == str(CHECKOUT)
        with pytest.raises(WrongCheckout, match="loaded fastpath from"):
            check_checkout("baseline", backend, tmp_path)
        backend.stop()


def test_cpu_seconds_count_every_thread_of_a_process():
    # The main thread and another one each run for half a second of CPU, then wait.
    code = ("import threading, time\n"
            "done = threading.Barrier(2); end = threading.Event()\n"
            "def spin():\n"
            "    stop = time.thread_time() + 0.5\n"
            "    while time.thread_time() < stop: pass\n"
            "    done.wait()\n"
            "def other(): spin(); end.wait()\n"
            "threading.Thread(target=other, daemon=True).start(); spin()\n"
            "print('spun', flush=True); input()")
    busy = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert busy.stdout.readline() == "spun\n"
        assert 1.0 <= cpu_seconds(busy.pid) < 5.0
    finally:
        busy.communicate("\n", timeout=10)


def test_the_running_rate_counts_the_time_both_sides_ran():
    # (wall seconds, frames, back-end CPU seconds, front-end CPU seconds), half a second apart.
    alone = [(0.0, 0, 0.0, 0.0), (0.5, 1_000_000, 0.5, 0.5), (1.0, 2_000_000, 1.0, 1.0)]
    assert _best_running_rate(alone) == pytest.approx(2e6)
    # Each side on its CPU half of the time: both ran for a quarter of the second.
    shared = [(0.0, 0, 0.0, 0.0), (0.5, 250_000, 0.25, 0.25), (1.0, 500_000, 0.5, 0.5)]
    assert _best_running_rate(shared) == pytest.approx(2e6)
    # The best second counts: the host slowed the second one down.
    slowed = alone + [(1.5, 2_250_000, 1.5, 1.5), (2.0, 2_500_000, 2.0, 2.0)]
    assert _best_running_rate(slowed) == pytest.approx(2e6)
    # A back-end that ran for 2 ms of the second: no second counts, the whole stretch does.
    starved = [(0.0, 0, 0.0, 0.0), (0.5, 1024, 0.001, 0.5), (1.0, 2048, 0.002, 1.0)]
    assert _best_running_rate(starved) == pytest.approx(2048 / 0.002)


def vhost_net_bench(*args):
    return subprocess.run(FASTPATH + ["bench", "vhost-net", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--sizes", "32"], "frame sizes are 60 to 1518 bytes"),
    (["--directions", "rx,up"], "up: not rx, tx or loop"),
    (["--rings", "split,round"], "round: not split or packed"),
    (["--mergeable", "maybe"], "maybe: not on or off"),
    (["--pairs", "0"], "--pairs must be at least 1"),
    (["--baseline", "/nonexistent"], "--baseline /nonexistent is not a fastpath checkout"),
    (["--tree", "/nonexistent"], "--tree /nonexistent is not a fastpath checkout"),
])
def test_bad_options_are_refused_with_the_reason(args, message):
    result = vhost_net_bench(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_help_names_the_directions_the_baseline_and_the_judge():
    result = vhost_net_bench("--help")
    assert result.returncode == 0
    for text in ("txonly", "rxonly", "flowgen", "--rings", "--mergeable", "--baseline", "--tree",
                 "--pairs", "--fail-below",
                 "median"):
        assert text in result.stdout


def test_each_pair_keeps_its_runs_placements_for_the_same_placement_median():
    near, far = Placement(35, 40), Placement(190, 200)

    def run(side, rate, placement):
        return Run(side, "rx", 64, "split", True, rate, rate, rate, 1.0, 1.0, 10, 10, 0, 0,
                   placement=placement)

    # Alternated: fastpath, DPDK, then DPDK, fastpath; the host moved the CPUs for the third.
    runs = [run("fastpath", 10.0, near), run("dpdk", 8.0, near), run("dpdk", 5.0, far),
            run("fastpath", 20.0, near)]
    pairs = _placed_pairs(runs, Cell("rx", 64), "dpdk")
    assert pairs == [(10.0, near, 8.0, near), (20.0, near, 5.0, far)]
    assert same_placement(pairs) == {"near": {"median": 1.25, "pairs": 1}}
