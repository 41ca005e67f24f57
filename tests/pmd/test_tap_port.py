"""The TAP port against the kernel: what tx_burst sends, an AF_PACKET socket bound to the
interface receives, byte for byte; what such a socket sends out of the interface comes out of
rx_burst, byte for byte.

A fresh interface may carry frames of the kernel's own (IPv6 router solicitations, MLD reports)
until IPv6 is turned off on it, so the tests only count frames that carry their marker.
"""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid

import pytest

from fastpath.pmd import MbufPool, open_port
from fastpath.pmd._tap import TapPort

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
ETHERTYPE = 0x88B5            # IEEE 802 local experimental
MARKER = b"fastpath-tap-test"
TIMEOUT = 10.0

TUNSETIFF, TUNSETPERSIST = 0x400454CA, 0x400454CB
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000


def new_name() -> str:
    return "fpt" + uuid.uuid4().hex[:8]


def open_tap(pool, name=None, **options) -> TapPort:
    """A TapPort on a new interface with IPv6 off, or a skip saying why there can be none."""
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("/dev/net/tun is missing (no TUN/TAP driver here)")
    try:
        port = TapPort(name or new_name(), pool, **options)
    except FileNotFoundError as e:
        pytest.skip(f"no TUN/TAP device: {e}")
    except PermissionError as e:
        pytest.skip(f"not permitted to open a TAP interface: {e}")
    disable_ipv6 = f"/proc/sys/net/ipv6/conf/{port.interface}/disable_ipv6"
    if os.path.exists(disable_ipv6):
        with open(disable_ipv6, "w") as file:
            file.write("1")
    return port


def frame(seq: int, length: int) -> bytes:
    """A marked Ethernet frame: to a made-up unicast address, the marker, the number, filler."""
    head = bytes.fromhex("020000000001" "020000000002") + ETHERTYPE.to_bytes(2, "big")
    body = MARKER + seq.to_bytes(4, "big")
    return (head + body + bytes((seq + i) % 256 for i in range(length)))[:length]


def marked(data: bytes) -> bool:
    return data[12:14] == ETHERTYPE.to_bytes(2, "big") and data[14:14 + len(MARKER)] == MARKER


def packet_socket(interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((interface, ETH_P_ALL))
    sock.setblocking(False)
    return sock


def packet_receive(sock: socket.socket, count: int) -> list[bytes]:
    """The first `count` marked frames the kernel received on the socket's interface."""
    seen = []
    deadline = time.monotonic() + TIMEOUT
    while len(seen) < count and time.monotonic() < deadline:
        if not select.select([sock], [], [], 0.1)[0]:
            continue
        data, address = sock.recvfrom(65536)
        if address[2] != PACKET_OUTGOING and marked(data):
            seen.append(data)
    return seen


def send_all(port: TapPort, pool: MbufPool, frames: list[bytes], queue: int = 0) -> int:
    """tx_burst until every frame is taken; returns how many bursts it took."""
    mbufs = pool.burst(len(frames))
    assert pool.alloc(mbufs, len(frames)) == len(frames)
    for mbuf, data in zip(mbufs, frames, strict=True):
        pool.put(mbuf, data)
    sent = bursts = 0
    deadline = time.monotonic() + TIMEOUT
    while sent < len(frames):
        assert time.monotonic() < deadline, "the TAP stopped taking frames"
        sent += port.tx_burst(queue, mbufs[sent:], len(frames) - sent)
        bursts += 1
    return bursts


def receive_marked(port: TapPort, pool: MbufPool, count: int) -> list[bytes]:
    """rx_burst on every queue until `count` marked frames came; returns them in arrival order
    per queue, queue after queue."""
    mbufs = pool.burst(32)
    seen: list[list[bytes]] = [[] for _ in range(port.queues)]
    deadline = time.monotonic() + TIMEOUT
    while sum(map(len, seen)) < count and time.monotonic() < deadline:
        for q in range(port.queues):
            n = port.rx_burst(q, mbufs, 32)
            seen[q] += [data for data in map(pool.frame, mbufs[:n]) if marked(data)]
            pool.release(mbufs, n)
    return [data for queue in seen for data in queue]


def drain(port: TapPort, pool: MbufPool) -> None:
    """Receive and drop whatever the kernel has queued for the port."""
    mbufs = pool.burst(32)
    for q in range(port.queues):
        while n := port.rx_burst(q, mbufs, 32):
            pool.release(mbufs, n)


LENGTHS = [60, 61, 64, 100, 128, 511, 1000, 1499, 1514]


def test_frames_sent_reach_the_kernel_byte_for_byte():
    pool = MbufPool(512)
    with open_tap(pool) as port:
        assert port.created
        sock = packet_socket(port.interface)
        frames = [frame(k, LENGTHS[k % len(LENGTHS)]) for k in range(100)]
        for first in range(0, len(frames), 25):
            send_all(port, pool, frames[first:first + 25])
        assert packet_receive(sock, len(frames)) == frames
        sock.close()
        counters = port.counters()
        assert counters.tx_frames == len(frames) and counters.errors == 0
        assert counters.tx_bytes == sum(map(len, frames))
    assert pool.in_use == 0


def test_frames_the_kernel_sends_come_out_of_rx_burst_byte_for_byte():
    pool = MbufPool(512)
    with open_tap(pool) as port:
        sock = packet_socket(port.interface)
        frames = [frame(k, LENGTHS[k % len(LENGTHS)]) for k in range(100)]
        seen = []
        for first in range(0, len(frames), 25):
            for data in frames[first:first + 25]:
                sock.send(data)
            seen += receive_marked(port, pool, 25)
        sock.close()
        assert seen == frames
        assert port.counters().rx_frames >= len(frames)
    assert pool.in_use == 0


def test_a_frame_too_long_for_an_mbuf_is_dropped_and_counted():
    pool = MbufPool(64, room=128)
    with open_tap(pool) as port:
        drain(port, pool)
        errors = port.counters().errors
        sock = packet_socket(port.interface)
        sock.send(frame(1, 200))
        sock.send(frame(2, 128))
        sock.close()
        assert receive_marked(port, pool, 1) == [frame(2, 128)]
        assert port.counters().errors == errors + 1
    assert pool.in_use == 0


def test_a_frame_the_kernel_refuses_is_dropped_and_counted_and_the_rest_go_through():
    pool = MbufPool(64)
    with open_tap(pool) as port:
        sock = packet_socket(port.interface)
        good = [frame(1, 60), frame(2, 60)]
        send_all(port, pool, [good[0], b"\1\2\3", good[1]])
        assert packet_receive(sock, 2) == good
        sock.close()
        assert port.counters().errors == 1
    assert pool.in_use == 0


def test_a_multi_queue_tap_serves_every_queue():
    pool = MbufPool(512)
    with open_tap(pool, queues=2) as port:
        assert len(port.fds) == 2
        sock = packet_socket(port.interface)
        frames = [frame(k, 60 + k) for k in range(40)]
        send_all(port, pool, frames[:20], queue=0)
        send_all(port, pool, frames[20:], queue=1)
        assert packet_receive(sock, 40) == frames
        for data in frames:
            sock.send(data)
        sock.close()
        assert sorted(receive_marked(port, pool, 40)) == sorted(frames)
    assert pool.in_use == 0


def test_open_port_names_a_tap():
    pool = MbufPool(64)
    name = new_name()
    open_tap(pool, name).close()   # skips here when TAPs cannot be made
    with open_port(f"tap:{name},queues=2", pool) as port:
        assert isinstance(port, TapPort) and port.queues == 2


def test_an_interface_the_port_made_goes_away_when_it_closes():
    pool = MbufPool(64)
    port = open_tap(pool)
    index = socket.if_nametoindex(port.interface)
    assert index == port.ifindex
    port.close()
    port.close()
    with pytest.raises(OSError):
        socket.if_nametoindex(port.interface)
    mbufs = pool.burst(4)
    assert port.rx_burst(0, mbufs, 4) == 0


def _set_persistent(name: str, persistent: bool) -> None:
    with open("/dev/net/tun", "r+b", buffering=0) as tun:
        fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
        fcntl.ioctl(tun, TUNSETPERSIST, 1 if persistent else 0)


def test_a_persistent_tap_is_used_and_left_in_place():
    pool = MbufPool(64)
    name = new_name()
    open_tap(pool, name).close()
    _set_persistent(name, True)
    try:
        with open_tap(pool, name) as port:
            assert not port.created
            sock = packet_socket(name)
            send_all(port, pool, [frame(7, 80)])
            assert packet_receive(sock, 1) == [frame(7, 80)]
            sock.close()
        assert socket.if_nametoindex(name)
    finally:
        _set_persistent(name, False)
    with pytest.raises(OSError):
        socket.if_nametoindex(name)


def test_an_interface_that_is_no_tap_is_refused():
    pool = MbufPool(64)
    name = new_name()
    open_tap(pool, name).close()
    with pytest.raises(ValueError, match="lo exists and is not a TAP"):
        TapPort("lo", pool)


@pytest.mark.parametrize("bad", ["", "a/b", "a:b", "a b", ".", "..", "x" * 16])
def test_bad_interface_names_are_refused(bad):
    with pytest.raises(ValueError, match="an interface name is"):
        TapPort(bad, MbufPool(64))


@pytest.mark.parametrize("queues", [0, 257])
def test_queue_counts_outside_the_kernels_range_are_refused(queues):
    with pytest.raises(ValueError, match="a TAP has 1 to 256 queues"):
        TapPort(new_name(), MbufPool(64), queues=queues)


def test_without_cap_net_admin_the_error_says_so():
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv(1) to run a process without CAP_NET_ADMIN")
    open_tap(MbufPool(64)).close()
    script = "\n".join([
        "from fastpath.pmd import MbufPool",
        "from fastpath.pmd._tap import TapPort",
        "try:",
        f"    TapPort({new_name()!r}, MbufPool(64))",
        "except PermissionError as e:",
        "    print(e)",
        "    raise SystemExit(3)",
    ])
    result = subprocess.run([setpriv, "--bounding-set=-net_admin", "--inh-caps=-net_admin",
                             sys.executable, "-c", script],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "needs CAP_NET_ADMIN" in result.stdout
