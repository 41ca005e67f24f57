"""pytest-benchmark suite for the poll-mode drivers: a forwarding loop's rounds through each
engine, with frames circling a shared-memory ring port (it sends to itself), and txonly into a
null port.

`pytest bench --benchmark-enable` times them; in the default suite each runs once, so that the
benchmark code stays working. `fastpath bench pvp` is the end-to-end packet benchmark.
"""

import pytest

from fastpath.pmd import ForwardingLoop, MbufPool, NullPort, RingPort, Stream
from fastpath.pmd._traffic import profile_frames
from fastpath.pmd.fwd import setup_engine

ROUNDS = 2000
BURST = 32
FRAMES_IN_FLIGHT = 512


@pytest.fixture
def circling_ring(tmp_path):
    """A ring port holding FRAMES_IN_FLIGHT frames, opened as its own partner."""
    pool = MbufPool(4096)
    port = RingPort(f"bench-{tmp_path.name}", pool, slots=1024, create=True)
    mbufs = pool.burst(FRAMES_IN_FLIGHT)
    frames = profile_frames("udp64", count=FRAMES_IN_FLIGHT)
    pool.alloc(mbufs, FRAMES_IN_FLIGHT)
    for m, frame in zip(mbufs, frames, strict=True):
        pool.put(int(m), frame)
    assert port.tx_burst(0, mbufs, FRAMES_IN_FLIGHT) == FRAMES_IN_FLIGHT
    yield pool, port
    port.close()


@pytest.mark.parametrize("mode", ["io", "macswap", "mac", "csum"])
def bench_engine_over_a_ring(benchmark, circling_ring, mode):
    pool, port = circling_ring
    loop = ForwardingLoop([Stream(port, 0, port, 0)], setup_engine(mode), pool, burst=BURST)
    moved = benchmark(loop.step, ROUNDS)
    assert moved == ROUNDS * BURST
    assert port.pending == FRAMES_IN_FLIGHT


@pytest.mark.parametrize("size", [64, 1518])
def bench_txonly_into_a_null_port(benchmark, size):
    pool = MbufPool(4096)
    port = NullPort(pool)
    loop = ForwardingLoop([Stream(port, 0, port, 0)], setup_engine("txonly", size=size), pool,
                          burst=BURST)
    moved = benchmark(loop.step, ROUNDS)
    assert moved == ROUNDS * BURST
    assert pool.in_use == 0
