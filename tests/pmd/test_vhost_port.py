"""The vhost-user port with a real front-end (fastpath's own virtio-net driver over a Unix
socket and memfd memory): frames in through rx_burst and out through tx_burst, byte for byte."""

import time

import pytest

from fastpath.devices.net import NetFrontend
from fastpath.pmd import MbufPool, VhostPort


@pytest.fixture(scope="module", autouse=True)
def compiled(tmp_path_factory):
    """Compile the port kernels (or load them from Numba's cache) before any test's clock runs:
    after a change to the package that takes longer than a test's deadline on a busy machine."""
    pool = MbufPool(8)
    with VhostPort(str(tmp_path_factory.mktemp("warm") / "vhost.sock"), pool) as port:
        mbufs = pool.burst(1)
        port.rx_burst(0, mbufs, 1)
        port.tx_burst(0, mbufs, 0)


def echo(port, pool, count, timeout=10.0):
    """Send back every frame received until `count` passed; returns them."""
    mbufs = pool.burst(32)
    seen = []
    deadline = time.monotonic() + timeout
    while len(seen) < count and time.monotonic() < deadline:
        n = port.rx_burst(0, mbufs, 32)
        seen += [pool.frame(m) for m in mbufs[:n]]
        sent = 0
        while sent < n and time.monotonic() < deadline:
            sent += port.tx_burst(0, mbufs[sent:], n - sent)
    return seen


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_frames_come_in_and_go_back_byte_for_byte(tmp_path, packed):
    pool = MbufPool(512)
    frames = [bytes([k % 251]) * (60 + 7 * k) for k in range(200)]
    with VhostPort(str(tmp_path / "vhost.sock"), pool) as port, \
            NetFrontend(str(tmp_path / "vhost.sock"), packed=packed) as driver:
        assert port.wait_ready(10)
        seen, back = [], []
        for first in range(0, len(frames), 50):
            assert driver.send(frames[first:first + 50]) == 50
            seen += echo(port, pool, 50)
            back += driver.receive(50)
        assert seen == frames
        assert back == frames
        counters = port.counters()
        assert counters.rx_frames == counters.tx_frames == len(frames)
        assert counters.rx_bytes == sum(map(len, frames))
    assert pool.in_use == 0


def test_nothing_moves_while_no_front_end_is_connected(tmp_path):
    pool = MbufPool(64)
    with VhostPort(str(tmp_path / "vhost.sock"), pool) as port:
        mbufs = pool.burst(8)
        assert port.rx_burst(0, mbufs, 8) == 0
        assert pool.alloc(mbufs, 8) == 8
        assert port.tx_burst(0, mbufs, 8) == 0
        pool.release(mbufs, 8)
    assert pool.in_use == 0


def test_a_short_pool_leaves_frames_in_the_ring(tmp_path):
    pool = MbufPool(8)
    frames = [bytes([k]) * 64 for k in range(20)]
    with VhostPort(str(tmp_path / "vhost.sock"), pool) as port, \
            NetFrontend(str(tmp_path / "vhost.sock")) as driver:
        assert port.wait_ready(10)
        assert driver.send(frames) == 20
        mbufs = pool.burst(32)
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 20 and time.monotonic() < deadline:
            n = port.rx_burst(0, mbufs, 32)
            got += [pool.frame(m) for m in mbufs[:n]]
            pool.release(mbufs, n)
        assert got == frames
        assert port.counters().rx_no_mbuf > 0


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_frames_left_in_a_transmitq_the_driver_stops_are_received_after(tmp_path, packed):
    # The device drains a transmitq as the driver disables and stops it; the port's compiled
    # receive gives those frames out first, after the front-end has gone.
    pool = MbufPool(64)
    frames = [bytes([k]) * (60 + 9 * k) for k in range(100)]
    with VhostPort(str(tmp_path / "vhost.sock"), pool) as port:
        with NetFrontend(str(tmp_path / "vhost.sock"), packed=packed) as driver:
            assert port.wait_ready(10)
            assert driver.send(frames) == len(frames)
            driver.frontend.stop_vring(1)
        mbufs = pool.burst(32)
        got = []
        while n := port.rx_burst(0, mbufs, 32):
            got += [pool.frame(m) for m in mbufs[:n]]
            pool.release(mbufs, n)
        assert got == frames
        assert port.counters().rx_frames == len(frames)
    assert pool.in_use == 0
