"""IoJob, the bdevperf-style poller: keeps its queue depth in flight on the poll host, times
every request, and verify catches a disk that does not give back what was written."""

from __future__ import annotations

import pytest

from fastpath.devices.blk import IO_READ, IO_WRITE
from fastpath.pmd import PollHost
from fastpath.spdk_like import WORKLOADS, IoJob, MallocBdev, NullBdev


def _run(job: IoJob, rounds: int) -> PollHost:
    host = PollHost("job-test", rounds=rounds)
    host.add(job)
    host.step()
    job.drain()
    while job.in_flight:
        host.step()
    job.service()
    return host


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_every_workload_runs_without_failures_on_malloc(workload):
    with MallocBdev(1 << 20) as bdev:
        channel = bdev.open_channel(16)
        job = IoJob(channel, workload, queue_depth=16, io_size=4096)
        _run(job, rounds=200)
        assert job.completed > 16 and job.failed == 0 and job.miscompares == 0
        assert job.histogram.total_count == job.completed
        assert job.histogram.get_value_at_percentile(50) > 0
        stats = bdev.statistics()
        if workload in ("read", "randread"):
            assert stats.read_ops == job.completed and stats.write_ops == 0
        if workload == "verify":
            assert stats.read_ops > 0 and stats.write_ops >= stats.read_ops


def test_randrw_follows_the_mix():
    with MallocBdev(1 << 20) as bdev:
        job = IoJob(bdev.open_channel(32), "randrw", queue_depth=32, io_size=512, rwmix=70)
        _run(job, rounds=2000)
        stats = bdev.statistics()
        reads = stats.read_ops / (stats.read_ops + stats.write_ops)
        assert 0.6 < reads < 0.8


def test_sequential_writes_cover_the_disk_in_order():
    with MallocBdev(64 * 1024) as bdev:
        job = IoJob(bdev.open_channel(4), "write", queue_depth=4, io_size=4096)
        _run(job, rounds=2)
        # Every slot wrote its own buffer at consecutive offsets: the first 8 blocks.
        assert bdev.statistics().write_ops == job.completed >= 8
        written = {bytes(job.buffers[0, slot]) for slot in range(4)}
        assert bytes(bdev.data[:4096]) in written


def test_verify_reports_miscompares_when_reads_do_not_return_the_data():
    # The null bdev keeps nothing: every read-back differs from what was written.
    with NullBdev(name="null", size=1 << 20) as bdev:
        job = IoJob(bdev.open_channel(8), "verify", queue_depth=8, io_size=4096)
        _run(job, rounds=50)
        assert job.miscompares > 0 and job.failed == job.miscompares


def test_failed_requests_are_counted_and_the_job_goes_on():
    with MallocBdev(1 << 20) as bdev:
        bdev.inject_errors({IO_READ, IO_WRITE}, count=5)
        job = IoJob(bdev.open_channel(8), "randread", queue_depth=8, io_size=4096)
        _run(job, rounds=100)
        assert job.failed == 5 and job.completed > 5


@pytest.mark.parametrize("options, message", [
    (dict(workload="scrub"), "none of"),
    (dict(io_size=1000), "whole number"),
    (dict(io_size=2 << 20), "within"),
    (dict(queue_depth=64), "channel's 16"),
    (dict(rwmix=101), "percentage"),
])
def test_bad_job_settings_say_what_is_wrong(options, message):
    with MallocBdev(1 << 20) as bdev:
        settings = dict(workload="read", queue_depth=8, io_size=4096) | options
        workload = settings.pop("workload")
        with pytest.raises(ValueError, match=message):
            IoJob(bdev.open_channel(16), workload, **settings)


def test_latencies_reach_the_histogram_in_bulk():
    with NullBdev(name="null", size=1 << 30) as bdev:
        job = IoJob(bdev.open_channel(32), "randread", queue_depth=32, io_size=4096)
        host = _run(job, rounds=5000)
        assert job.histogram.total_count == job.completed > 100_000
        assert host.work >= job.completed
