"""pytest-benchmark suite for virtqueue bursts: the compiled core and the pure-Python reference.

`pytest bench --benchmark-enable` times them; in the default suite (benchmarks disabled) each
runs once, so that the benchmark code itself stays working. `fastpath bench vring` is the
side-by-side report with two-process runs.
"""

import pytest

from fastpath.bench.vring import Rig
from fastpath.testing.reference import run_reference_loop

CHAINS = 200_000


@pytest.mark.parametrize("ring", ["split", "packed"])
@pytest.mark.parametrize("burst", [1, 32, 256])
def bench_core_one_process(benchmark, ring, burst):
    rig = Rig(ring == "packed", 256, burst, 64)
    rig.one_process(1000)
    rate = benchmark(rig.one_process, CHAINS)
    assert rate > 0
    assert rig.device.errors == {} and rig.driver.errors == {}


@pytest.mark.parametrize("ring", ["split", "packed"])
def bench_reference(benchmark, ring):
    rate = benchmark(run_reference_loop, ring == "packed", 256, 32, 2000, 64)
    assert rate > 0
