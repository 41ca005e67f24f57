"""The virtio-user port (fastpath's virtio-net driver over vhost-user) against real back-ends:
`fastpath vhost-net` in a child process, DPDK testpmd's vhost PMD and fastpath's own vhost
port. Frames sent with tx_burst come back byte for byte through rx_burst, on split and packed
rings, with and without mergeable receive buffers, on every queue pair."""

import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpath.errors import BackendRefused
from fastpath.pmd import MbufPool, VhostPort
from fastpath.pmd._virtio_user import VirtioUserPort
from fastpath.testing import Testpmd, VhostNetProcess, received_frames
from fastpath.testing.reference import net as reference_net

# Each test starts a vhost-net back-end process (or DPDK's): release pass only.
pytestmark = pytest.mark.release_pass

RING_TYPES = pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
# Mergeable receive buffers of 512 bytes: a full-size frame comes back in four of them.
MERGEABLE = pytest.mark.parametrize("buffers", [{}, {"mergeable": True, "rx_buffer_size": 512}],
                                    ids=["plain", "mergeable"])
# A pool of the process's own memory (frames copied into transmit buffers) or one shared with
# the back-end (frames sent from their mbufs).
POOLS = pytest.mark.parametrize("shared", [False, True], ids=["copy", "zero-copy"])


def frames(n=300, tag=0):
    """Sizes from a minimum Ethernet frame to a full one, each with its own pattern."""
    out = []
    for k in range(n):
        size = 60 + (k * 97) % (1514 - 60 + 1)
        dst, src = bytes([0x02, tag, 0, 0, k >> 8, k & 0xFF]), bytes([0x04, 0, 0, 0, 0, 1])
        out.append(dst + src + b"\x88\xb5" + bytes((k + tag + i) & 0xFF for i in range(size - 14)))
    return out


def send(port, queue, batch):
    """tx_burst every frame of `batch` (retrying while the ring is full)."""
    pool = port.pool
    mbufs = pool.burst(len(batch))
    assert pool.alloc(mbufs, len(batch)) == len(batch)
    for mbuf, frame in zip(mbufs, batch, strict=True):
        pool.put(int(mbuf), frame)
    sent, deadline = 0, time.monotonic() + 5
    while sent < len(batch) and time.monotonic() < deadline:
        sent += port.tx_burst(queue, mbufs[sent:], len(batch) - sent)
    pool.release(mbufs[sent:], len(batch) - sent)
    return sent


def receive(port, queue, count, timeout=5.0):
    """Frames rx_burst returns until `count` came or `timeout` seconds passed."""
    pool = port.pool
    mbufs = pool.burst(32)
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        n = port.rx_burst(queue, mbufs, 32)
        got += [pool.frame(int(m)) for m in mbufs[:n]]
        pool.release(mbufs, n)
    return got


def round_trip(port, sent, queue=0, batch=16):
    """Send in batches, each taken back before the next goes: a looping back-end drops what
    finds no receive buffer (and fastpath vhost-net what needs more than the 64 buffers one
    burst may hold: 16 frames in 512-byte buffers need up to 64)."""
    got = []
    for first in range(0, len(sent), batch):
        chunk = sent[first:first + batch]
        assert send(port, queue, chunk) == len(chunk)
        got += receive(port, queue, len(chunk))
    return got


def macswap(frame):
    return frame[6:12] + frame[:6] + frame[12:]


# --- fastpath vhost-net ---


@RING_TYPES
@pytest.mark.parametrize(("fwd", "buffers"), [
    ("io", {}), ("io", {"mergeable": True, "rx_buffer_size": 512}), ("macswap", {})],
    ids=["io-plain", "io-mergeable", "macswap"])
@POOLS
def test_frames_come_back_from_fastpath_vhost_net(tmp_path, packed, fwd, buffers, shared):
    sock = str(tmp_path / "vhost.sock")
    pool = MbufPool(1024, shared=shared)
    with VhostNetProcess(sock, fwd=fwd, backoff=100, cpu=None) as backend:
        with VirtioUserPort(sock, pool, packed=packed, **buffers) as port:
            assert port.packed == packed
            assert port.mergeable == bool(buffers)
            sent = frames()
            got = round_trip(port, sent)
            counters = port.counters()
        result = backend.stop()
    assert got == (sent if fwd == "io" else [macswap(f) for f in sent])
    assert counters.tx_frames == counters.rx_frames == len(sent)
    assert counters.tx_bytes == counters.rx_bytes == sum(map(len, sent))
    assert counters.errors == counters.rx_no_mbuf == 0
    pair = result["connections"][0]["queue_pairs"][0]
    assert pair["rx_frames"] == pair["tx_frames"] == len(sent)
    assert pool.in_use == 0


@RING_TYPES
def test_every_queue_pair_carries_its_own_traffic(tmp_path, packed):
    sock = str(tmp_path / "vhost.sock")
    pool = MbufPool(1024)
    with VhostNetProcess(sock, fwd="io", queues=2, backoff=100, cpu=None) as backend:
        with VirtioUserPort(sock, pool, queues=2, packed=packed) as port:
            per_queue = {q: frames(100, tag=q + 1) for q in range(2)}
            got = {q: [] for q in range(2)}
            for first in range(0, 100, 25):
                for q in range(2):
                    assert send(port, q, per_queue[q][first:first + 25]) == 25
                for q in range(2):
                    got[q] += receive(port, q, 25)
            counters = [port.counters(q) for q in range(2)]
        result = backend.stop()
    assert got == per_queue
    assert [c.rx_frames for c in counters] == [c.tx_frames for c in counters] == [100, 100]
    pairs = result["connections"][0]["queue_pairs"]
    assert [p["rx_frames"] for p in pairs] == [p["tx_frames"] for p in pairs] == [100, 100]


# --- DPDK testpmd's vhost PMD ---


@pytest.mark.peer("dpdk")
@RING_TYPES
@MERGEABLE
@POOLS
def test_frames_come_back_from_dpdk_vhost(tmp_path, packed, buffers, shared):
    sock = str(tmp_path / "vhost.sock")
    pool = MbufPool(1024, shared=shared)
    with Testpmd.vhost(sock, forward="io", cpu=0) as peer:
        with VirtioUserPort(sock, pool, packed=packed, **buffers) as port:
            assert port.packed == packed and port.mergeable == bool(buffers)
            sent = frames()
            got = round_trip(port, sent)
            errors = port.counters().errors
        peer.stop()
        totals = peer.final_totals()
    assert got == sent
    assert errors == 0
    assert totals["rx_packets"] == totals["tx_packets"] == len(sent)
    assert pool.in_use == 0


@pytest.mark.peer("dpdk")
def test_both_queue_pairs_come_back_from_dpdk_vhost(tmp_path):
    sock = str(tmp_path / "vhost.sock")
    pool = MbufPool(1024)
    with Testpmd.vhost(sock, forward="io", queues=2, cpu=0) as peer:
        with VirtioUserPort(sock, pool, queues=2) as port:
            sent = {q: frames(100, tag=q + 1) for q in range(2)}
            got = {q: round_trip(port, sent[q], queue=q) for q in range(2)}
        peer.stop()
        totals = peer.final_totals()
    assert got == sent
    assert totals["rx_packets"] == totals["tx_packets"] == 200


# --- bad input ---


def test_a_missing_back_end_is_a_clear_error(tmp_path):
    sock = str(tmp_path / "nobody.sock")
    with pytest.raises(FileNotFoundError, match="no vhost-user back-end listening on .*nobody"):
        VirtioUserPort(sock, MbufPool(64), connect_timeout=0.2)


def test_a_back_end_with_too_few_queue_pairs_refuses(tmp_path):
    sock = str(tmp_path / "vhost.sock")
    with VhostNetProcess(sock, fwd="io", queues=1, backoff=100, cpu=None):
        with pytest.raises(BackendRefused, match="serves 1 queue pairs, not 2"):
            VirtioUserPort(sock, MbufPool(64), queues=2)


def test_a_frame_longer_than_a_transmit_buffer_is_counted_not_sent(tmp_path):
    sock = str(tmp_path / "vhost.sock")
    pool = MbufPool(64, room=4096)
    short, long = frames(1)[0], bytes(range(256)) * 12
    with VhostNetProcess(sock, fwd="io", backoff=100, cpu=None) as backend:
        with VirtioUserPort(sock, pool) as port:
            assert send(port, 0, [short, long, short]) == 3
            assert receive(port, 0, 2) == [short, short]
            counters = port.counters()
        result = backend.stop()
    assert counters.errors == 1
    assert result["connections"][0]["queue_pairs"][0]["rx_frames"] == 2
    assert pool.in_use == 0


@MERGEABLE
def test_a_short_pool_leaves_frames_in_the_ring(tmp_path, buffers):
    sock = str(tmp_path / "vhost.sock")
    pool = MbufPool(40)
    sent = frames(30)
    with VhostNetProcess(sock, fwd="io", backoff=100, cpu=None):
        with VirtioUserPort(sock, pool, **buffers) as port:
            for first in (0, 15):   # in bursts of 64 receive buffers at most
                assert send(port, 0, sent[first:first + 15]) == 15
                time.sleep(0.3)   # looped back into the receive buffers
            held = pool.burst(37)
            assert pool.alloc(held, 37) == 37   # three mbufs left for receiving
            got = receive(port, 0, 30)
            pool.release(held, 37)
            counters = port.counters()
    assert got == sent
    assert counters.rx_no_mbuf > 0
    assert counters.errors == 0
    assert pool.in_use == 0


def test_a_mergeable_frame_longer_than_an_mbuf_is_dropped_and_counted(tmp_path):
    # fastpath's vhost port sends from a pool of larger mbufs than the driver's own.
    sock = str(tmp_path / "vhost.sock")
    device_pool, driver_pool = MbufPool(64, room=4096), MbufPool(64, room=1024)
    sizes = [100, 3000, 200, 1025, 1024]
    with VhostPort(sock, device_pool) as device, \
            VirtioUserPort(sock, driver_pool, mergeable=True, rx_buffer_size=512) as port:
        assert device.wait_ready(10)
        sent = [bytes([k]) * size for k, size in enumerate(sizes)]
        mbufs = device_pool.burst(len(sent))
        device_pool.alloc(mbufs, len(sent))
        for mbuf, frame in zip(mbufs, sent, strict=True):
            device_pool.put(int(mbuf), frame)
        assert device.tx_burst(0, mbufs, len(sent)) == len(sent)
        got = receive(port, 0, 3)
        assert got == [sent[0], sent[2], sent[4]]
        assert receive(port, 0, 1, timeout=0.2) == []
        assert port.counters().errors == 2
    assert driver_pool.in_use == 0


def test_a_port_whose_back_end_left_closes_and_moves_nothing(tmp_path):
    sock = str(tmp_path / "vhost.sock")
    pool = MbufPool(64)
    with VhostNetProcess(sock, fwd="io", backoff=100, cpu=None) as backend:
        port = VirtioUserPort(sock, pool)
        assert round_trip(port, frames(4)) == frames(4)
        backend.kill()
    port.close()
    mbufs = pool.burst(8)
    assert port.rx_burst(0, mbufs, 8) == 0
    assert pool.alloc(mbufs, 8) == 8
    assert port.tx_burst(0, mbufs, 8) == 0
    pool.release(mbufs, 8)
    assert pool.in_use == 0


# --- zero copy ---


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_frames_from_a_shared_pool_stay_in_their_mbufs_until_used(tmp_path, packed):
    # The mbufs sent are the buffers: they stay out of the pool until the device has used
    # them (taken back by a later burst), and close gives back any it never did.
    sock = str(tmp_path / "vhost.sock")
    pool = MbufPool(256, shared=True)
    with VhostNetProcess(sock, fwd="drop", backoff=100, cpu=None) as backend:
        with VirtioUserPort(sock, pool, packed=packed) as port:
            assert send(port, 0, frames(32)) == 32
            posted = port.mbufs_posted   # the receiveq's buffers: a quarter of the pool
            assert posted == 64
            assert port.mbufs_in_flight == pool.in_use - posted == 32
            more, deadline = 0, time.monotonic() + 5
            while port.mbufs_in_flight > 1 and time.monotonic() < deadline:
                more += send(port, 0, frames(1))
            assert port.mbufs_in_flight == pool.in_use - posted == 1
            counters = port.counters()
        assert pool.in_use == 0
        result = backend.stop()
    assert counters.tx_frames == 32 + more
    assert counters.tx_bytes == sum(map(len, frames(32))) + more * len(frames(1)[0])
    assert received_frames(result) == 32 + more


def test_a_shared_pool_frame_is_one_descriptor_behind_its_header(tmp_path):
    # The header sits in the mbuf's headroom, so the device pops one descriptor a frame: the
    # single-descriptor chains its fast path serves.
    sock = str(tmp_path / "vhost.sock")
    device_pool, pool = MbufPool(64), MbufPool(256, shared=True)
    with VhostPort(sock, device_pool) as device, VirtioUserPort(sock, pool) as port:
        assert device.wait_ready(10)
        sent = frames(8)
        assert send(port, 0, sent) == 8
        queue = port.driver.queues[1]
        descriptors = port.driver.memory.view(queue.addresses.desc, 16 * 8)
        descriptors = descriptors.view(np.dtype([("addr", "<u8"), ("len", "<u4"),
                                                 ("flags", "<u2"), ("next", "<u2")]))
        assert list(descriptors["len"]) == [len(f) + 12 for f in sent]
        assert not descriptors["flags"].any()     # no NEXT: one descriptor a chain
        got = receive_from(device, device_pool, 8)
        assert got == sent
    assert pool.in_use == 0


def receive_from(port, pool, count, timeout=5.0):
    """Frames a port's rx_burst returns until `count` came or `timeout` seconds passed."""
    mbufs = pool.burst(32)
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        n = port.rx_burst(0, mbufs, 32)
        got += [pool.frame(int(m)) for m in mbufs[:n]]
        pool.release(mbufs, n)
    return got


def reassembled(used):
    """The frames in the used buffers the reference device filled: each its header's
    num_buffers buffers joined, less the header."""
    out = []
    while used:
        (count,) = struct.unpack_from("<H", used[0], reference_net.NET_HDR_SIZE - 2)
        out.append(b"".join(used[:count])[reference_net.NET_HDR_SIZE:])
        used = used[count:]
    return out


@settings(max_examples=25, deadline=None)
@given(packed=st.booleans(), mergeable=st.booleans(),
       buffer_size=st.sampled_from([300, 700, 2060, 4096]),
       sizes=st.lists(st.integers(60, 2100), min_size=1, max_size=20))
def test_zero_copy_receive_delivers_what_the_reference_device_places(packed, mergeable,
                                                                      buffer_size, sizes):
    # Received into the mbufs themselves: each frame handed up whole in the mbuf its first
    # buffer was, one that spans buffers (smaller than the room) copied into it; one longer
    # than the room dropped and counted. What arrives is what the reference device places.
    room = 2048
    sent = [bytes([k, *range(7)]) * (size // 8) + bytes(size % 8)
            for k, size in enumerate(sizes)]
    device_pool, pool = MbufPool(64, room=4096), MbufPool(256, room=room, shared=True)
    with tempfile.TemporaryDirectory() as tmp:
        sock = str(Path(tmp) / "vhost.sock")
        with VhostPort(sock, device_pool) as device, \
                VirtioUserPort(sock, pool, packed=packed, mergeable=mergeable,
                               rx_buffer_size=buffer_size) as port:
            assert device.wait_ready(10)
            posted = port.mbufs_posted
            buffers = [min(buffer_size, room + reference_net.NET_HDR_SIZE)] * posted
            taken, used = reference_net.placed_frames(sent, buffers, mergeable=mergeable,
                                                      stride=4096)
            placed = reassembled(used)
            expected = [f for f in placed if len(f) <= room]
            mbufs = device_pool.burst(len(sent))
            assert device_pool.alloc(mbufs, len(sent)) == len(sent)
            for mbuf, frame in zip(mbufs, sent, strict=True):
                device_pool.put(int(mbuf), frame)
            assert device.tx_burst(0, mbufs, len(sent)) == taken
            device_pool.release(mbufs[taken:], len(sent) - taken)
            got = receive_from(port, pool, len(expected), timeout=2.0)
            assert receive_from(port, pool, 1, timeout=0.05) == []
            assert got == expected
            assert port.counters().errors == len(placed) - len(expected)
            assert pool.in_use == port.mbufs_posted == posted
    assert pool.in_use == 0
