"""`make bench-check`, the throughput regression gate, run for real: a baseline exported and
built by the Makefile, a copy of it as an identical tree, which passes, and a copy slowed on
purpose, which fails. It takes minutes, so `make test` leaves it out and `.ci/run` runs it
(FASTPATH_BENCH_GATE=1)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fastpath.testing import Testpmd

CHECKOUT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.skipif(os.environ.get("FASTPATH_BENCH_GATE") != "1",
                       reason="minutes of benchmarks: .ci/run runs it (FASTPATH_BENCH_GATE=1)"),
    pytest.mark.skipif(Testpmd.find() is None, reason="dpdk-testpmd is not installed"),
]

# Appended to the slowed copy's fastpath/pmd/_host.py: after every kernel call of every poll
# host in that checkout (the vhost-net back-end's, an IoJob's reactor), the host spins on its
# CPU, holding the GIL, as long again as the call took, so it polls half the time, as a
# back-end that spent twice as long per burst would; seen from outside, a slower change.
# (Slowing the whole process from its first import instead would slow its kernels' compilation
# with it, and the back-end would miss its start-up deadline before measuring.)
SLOWDOWN = '''

def _slowed_step(self, rounds=None, _step=PollHost.step):
    start = time.perf_counter()
    work = _step(self, rounds)
    end = 2 * time.perf_counter() - start
    while time.perf_counter() < end:
        pass
    return work


PollHost.step = _slowed_step
'''


def make(*args, timeout=1200):
    # -o build: the trees compared are built here, not the working tree that `build` builds.
    return subprocess.run(["make", "--no-print-directory", "-o", "build", "-C", str(CHECKOUT),
                           *args], capture_output=True, text=True, timeout=timeout)


def gate(tmp_path, baseline, tree, name):
    # The packet leg with the Makefile's floor and pairs; one size and direction, to keep it
    # to a few minutes.
    report = tmp_path / f"{name}.json"
    result = make("bench-check-packets", f"BASELINE={baseline}",
                  f"BASELINE_DIR={tmp_path / 'baseline'}", f"BENCH_TREE={tree}",
                  f"BENCH_JSON={report}", "BENCH_SIZES=64", "BENCH_DIRECTIONS=rx")
    return result, (json.loads(report.read_text()) if report.exists() else None)


def iops_gate(tmp_path, baseline, tree, name):
    # The IOPS leg as the Makefile runs it.
    report = tmp_path / f"{name}-iops.json"
    result = make("bench-check-iops", f"BASELINE={baseline}",
                  f"BASELINE_DIR={tmp_path / 'baseline'}", f"BENCH_TREE={tree}",
                  f"IOPS_JSON={report}")
    return result, (json.loads(report.read_text()) if report.exists() else None)


def test_the_gate_fails_a_slowed_tree_and_passes_an_identical_one(tmp_path):
    revision = subprocess.run(["git", "-C", str(CHECKOUT), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    built = make("bench-baseline", f"BASELINE={revision}",
                 f"BASELINE_DIR={tmp_path / 'baseline'}")
    assert built.returncode == 0, built.stdout + built.stderr
    assert (tmp_path / "baseline" / ".revision").read_text().strip() == revision
    same, slowed = tmp_path / "same", tmp_path / "slowed"
    for tree in (same, slowed):
        shutil.copytree(tmp_path / "baseline", tree, symlinks=True)
    (slowed / ".revision").write_text("slowed-on-purpose\n")
    with open(slowed / "fastpath" / "pmd" / "_host.py", "a") as f:
        f.write(SLOWDOWN)

    passed, report = gate(tmp_path, revision, same, "same")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "REGRESSION" not in passed.stderr
    assert_each_side_ran_its_checkout(report, same, tmp_path / "baseline")

    failed, report = gate(tmp_path, revision, slowed, "slowed")
    # make fails (2) because the benchmark did with 1, a regression (2 would be a run of the
    # wrong checkout or a refused option).
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert "bench-check-packets] Error 1" in failed.stderr
    assert "REGRESSION in rx 64 B" in failed.stderr
    assert_each_side_ran_its_checkout(report, slowed, tmp_path / "baseline")
    # The baseline was built once and not rebuilt for the second comparison.
    assert "exporting and building" not in failed.stdout

    passed, report = iops_gate(tmp_path, revision, same, "same")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "fastpath/baseline at or above" in passed.stdout
    assert report["ratio"]["passed"] is True

    failed, report = iops_gate(tmp_path, revision, slowed, "slowed")
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert "bench-check-iops] Error 1" in failed.stderr
    assert "fastpath/baseline BELOW" in failed.stdout
    assert report["ratio"]["passed"] is False
    # Each side's runs ran that side's checkout (the command checks, and refuses otherwise).
    assert {r["runner"] for r in report["results"]} == {"fastpath", "baseline"}


def assert_each_side_ran_its_checkout(report, tree, baseline):
    assert report["checkouts"] == {"fastpath": str(tree), "baseline": str(baseline)}
    for run in report["runs"]:
        expected = tree if run["side"] == "fastpath" else baseline
        assert run["checkout"] == str(expected)
        assert Path(run["reported"]["file"]) == expected / "fastpath" / "__init__.py"
    revisions = {run["side"]: run["reported"]["revision"] for run in report["runs"]}
    assert revisions["baseline"] == (baseline / ".revision").read_text().strip()
    assert revisions["fastpath"] == (tree / ".revision").read_text().strip()
