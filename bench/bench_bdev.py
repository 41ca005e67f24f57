"""pytest-benchmark suite for block I/O: an IoJob's rounds on a bdev channel (the bdev layer's
submit and poll loop, no Python per request) on the null and malloc bdevs, and through an NVMe
queue pair to the modelled controller (the nvme bdev over malloc).

`pytest bench --benchmark-enable` times them; in the default suite each runs once, so that the
benchmark code stays working. `fastpath bench iops` is the end-to-end IOPS benchmark.
"""

import pytest

from fastpath.pmd import PollHost
from fastpath.spdk_like import IoJob, open_bdev

ROUNDS = 2000
QUEUE_DEPTH = 32


@pytest.mark.parametrize("spec, workload", [("null:1G", "randread"),
                                            ("malloc:64M", "randread"),
                                            ("malloc:64M", "randwrite"),
                                            ("nvme:malloc:64M", "randread")])
def bench_io_job_rounds(benchmark, spec, workload):
    with open_bdev(spec) as bdev:
        job = IoJob(bdev.open_channel(QUEUE_DEPTH), workload, queue_depth=QUEUE_DEPTH,
                    io_size=4096)
        host = PollHost("bench-bdev", rounds=ROUNDS)
        host.add(job)
        benchmark(host.step)
        job.drain()
        while job.in_flight:
            host.step()
        job.service()
        assert job.completed > 0 and job.failed == 0
