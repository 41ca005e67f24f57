"""`fastpath bench iops`: the bdevperf-style report, its JSON fields, fio beside it, and the
errors a user meets."""

from __future__ import annotations

import json

import pytest

from fastpath.cli import main

_BDEVPERF_FIELDS = {"job", "core_mask", "workload", "status", "queue_depth", "io_size",
                    "runtime", "iops", "mibps", "io_failed", "io_timeout", "avg_latency_us",
                    "min_latency_us", "max_latency_us"}


def test_a_run_reports_bdevperf_fields_and_draws_a_plot(tmp_path, capsys):
    report, picture = tmp_path / "iops.json", tmp_path / "iops.png"
    status = main(["bench", "iops", "--bdev", "malloc:16M", "--workload", "randrw",
                   "--rwmix", "60", "--qd", "8", "--time", "0.5", "--json", str(report),
                   "--plot", str(picture)])
    assert status == 0
    data = json.loads(report.read_text())
    [result] = data["results"]
    assert _BDEVPERF_FIELDS <= set(result) and result["percentage"] == 60
    assert result["iops"] > 1000 and result["io_failed"] == 0 and result["status"] == "finished"
    assert set(result["latency_percentiles_us"]) == {"p50", "p99", "p99.9"}
    assert data["core_count"] == 1 and picture.stat().st_size > 10_000
    assert "M IOPS" in capsys.readouterr().out


@pytest.mark.peer("fio")
def test_fio_runs_the_same_job_and_the_ratio_is_printed(tmp_path, capsys):
    report = tmp_path / "iops.json"
    status = main(["bench", "iops", "--bdev", "null:1G", "--time", "0.5", "--peer", "fio",
                   "--pairs", "1", "--json", str(report)])
    assert status == 0
    data = json.loads(report.read_text())
    assert [r["runner"] for r in data["results"]] == ["fastpath", "fio"]
    assert all(r["iops"] > 1000 for r in data["results"])
    assert data["ratio"]["other"] == "fio" and data["ratio"]["median"] > 0
    assert "fastpath/fio IOPS: median" in capsys.readouterr().out


@pytest.mark.parametrize("arguments, message", [
    (["--bdev", "tape:1G"], "no bdev kind 'tape'"),
    (["--bdev", "malloc:16M", "--peer", "fio"], "fio has no engine"),
    (["--workload", "verify", "--peer", "fio"], "does not run the verify workload"),
    (["--qd", "0"], "must be positive"),
    (["--peer", "qsd"], "--target vhost"),
    (["--target", "vhost", "--bdev", "nvme:malloc:1M", "--peer", "qsd"], "no disk like"),
])
def test_what_cannot_run_says_why_before_running(arguments, message, capsys):
    assert main(["bench", "iops", "--time", "0.2", *arguments]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.release_pass
@pytest.mark.peer("qsd")
def test_vhost_blk_runs_the_job_beside_qemu_storage_daemon(tmp_path, capsys):
    report = tmp_path / "iops.json"
    status = main(["bench", "iops", "--target", "vhost", "--bdev", "malloc:16M", "--time",
                   "1", "--peer", "qsd", "--pairs", "1", "--json", str(report)])
    assert status == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    assert [r["runner"] for r in data["results"]] == ["fastpath", "qsd"]
    assert all(r["iops"] > 1000 and r["io_failed"] == 0 for r in data["results"])
    assert "fastpath/qsd IOPS: median" in capsys.readouterr().out


def test_the_nvme_target_drives_a_queue_pair_to_a_modelled_controller(tmp_path):
    report = tmp_path / "iops.json"
    status = main(["bench", "iops", "--target", "nvme", "--bdev", "malloc:16M", "--workload",
                   "verify", "--time", "0.5", "--json", str(report)])
    assert status == 0
    [result] = json.loads(report.read_text())["results"]
    assert result["iops"] > 1000 and result["io_failed"] == 0
