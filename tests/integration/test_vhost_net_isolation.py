"""One `fastpath vhost-net` process, a well-behaved front-end moving frames through it, and a
hostile front-end on the same socket doing its worst: the hostile one costs only its own
connection, and frames keep coming back byte for byte."""

import mmap
import os
import socket
import time

import numpy as np
import pytest

from fastpath.devices.net import NetFrontend
from fastpath.hv import GuestMemory, SharedRegion
from fastpath.testing import VhostNetProcess
from fastpath.vhost_user import Frontend
from fastpath.vhost_user.wire import U64, FrontendRequest, encode_message
from fastpath.vring import ring_layout

F = FrontendRequest


def frames(tag: int, n: int = 64) -> list[bytes]:
    return [bytes([2, 0, 0, 0, tag, k]) + bytes([4, 0, 0, 0, 0, 1]) + b"\x88\xb5"
            + bytes((k + i) & 0xFF for i in range(50 + k)) for k in range(n)]


def round_trip(fe: NetFrontend, tag: int) -> None:
    sent = frames(tag)
    assert fe.send(sent) == len(sent)
    assert fe.receive(len(sent), timeout=10) == sent


@pytest.fixture
def vhost_net(tmp_path):
    with VhostNetProcess(tmp_path / "vhost.sock", fwd="io", backoff=100, cpu=None) as process:
        yield process
        result = process.stop()
    process.final = result


def still_serving(process: VhostNetProcess) -> None:
    # A new front-end is answered, and frames go through it.
    with NetFrontend(process.path) as fe:
        round_trip(fe, 99)


def test_two_hundred_front_ends_that_leave_before_their_reply(vhost_net):
    with NetFrontend(vhost_net.path) as good:
        round_trip(good, 0)
        for how in range(200):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(vhost_net.path)
            if how % 2:  # half of them reset the connection instead of closing it
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            sock.send(encode_message(F.GET_FEATURES))
            sock.close()
        round_trip(good, 1)
    still_serving(vhost_net)


@pytest.mark.parametrize("cut", [5, 15], ids=["half-a-header", "half-a-payload"])
def test_a_front_end_stuck_in_the_middle_of_a_message(vhost_net, cut):
    hostile = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hostile.connect(vhost_net.path)
    hostile.send(encode_message(F.SET_FEATURES, U64(1 << 32))[:cut])
    with NetFrontend(vhost_net.path) as good:
        for tag in range(3):
            round_trip(good, tag)
    still_serving(vhost_net)
    hostile.close()


def test_a_front_end_that_never_reads_its_replies(vhost_net):
    hostile = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hostile.connect(vhost_net.path)
    hostile.settimeout(0.5)
    with NetFrontend(vhost_net.path) as good:
        try:
            for _ in range(20_000):
                hostile.send(encode_message(F.GET_FEATURES) * 16)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        round_trip(good, 0)
    still_serving(vhost_net)
    hostile.close()


def unsealed_memory(size: int) -> tuple[GuestMemory, int, mmap.mmap]:
    """Guest memory as a front-end that does not seal its memfd (DPDK's) has it: the fd, and
    the front-end's own mapping, whose address is the user address it shares."""
    fd = os.memfd_create("hostile-guest", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    own = mmap.mmap(fd, size)
    user_addr = np.frombuffer(own, dtype=np.uint8).ctypes.data
    return GuestMemory.from_shared([SharedRegion(os.dup(fd), 0, size, user_addr)]), fd, own


def test_a_front_end_that_shrinks_its_memory_under_running_rings(vhost_net):
    memory, fd, own = unsealed_memory(4 << 20)
    hostile = Frontend(vhost_net.path)
    hostile.negotiate(1 << 32)
    hostile.set_memory(memory)
    for index in (0, 1):  # a receiveq and a transmitq that the back-end polls
        hostile.start_vring(index, 256, memory, ring_layout(256, 0x1000 + index * 0x10000,
                                                            packed=False))
    hostile.set_status(0x0F)
    with NetFrontend(vhost_net.path) as good:
        round_trip(good, 0)
        os.ftruncate(fd, 0)   # the back-end's next look at the rings faults
        deadline = time.monotonic() + 10
        while "cut its shared memory short" not in vhost_net.output:
            assert time.monotonic() < deadline, vhost_net.output
            time.sleep(0.05)
        round_trip(good, 1)
    still_serving(vhost_net)
    hostile.close()
    memory.close()
    del own
    os.close(fd)
