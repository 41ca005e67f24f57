"""GET_INFLIGHT_FD and SET_INFLIGHT_FD (QEMU docs/interop/vhost-user.rst, "Inflight I/O
tracking" and the two requests), through real sockets: the area the back-end allocates, the
regions the rings record in, a back-end killed with requests in flight and the one after it
popping them again first, and every bad description refused, costing only the front-end that
sent it while another is served."""

import fcntl
import logging
import mmap
import os
import socket
import struct

import numpy as np
import pytest
from scripted_frontend import (
    PROTOCOL_FEATURES_BIT,
    F,
    PlainDevice,
    ScriptedFrontend,
    served,
)

from fastpath.testing import reference as ref
from fastpath.vhost_user import Backend
from fastpath.vhost_user.wire import (
    U64,
    FrontendRequest,
    Inflight,
    MemoryRegion,
    MemoryTable,
    ProtocolFeature,
    decode_message,
    decode_payload,
    encode_message,
)
from fastpath.vring import (
    VIRTIO_F_VERSION_1,
    InflightRegion,
    inflight_region_size,
)

INFLIGHT = ProtocolFeature.INFLIGHT_SHMFD
QUEUE_SIZE = 32     # what QEMU's device is configured with; the rings may be smaller
RING_SIZE = 16
BUFFERS = 0x100000


def tracking(**options) -> ScriptedFrontend:
    """A scripted front-end facing a device whose rings record what is in flight."""
    return ScriptedFrontend(lambda channel: Backend(channel, PlainDevice(tracks_inflight=True,
                                                                         **options)))


def get_area(fe: ScriptedFrontend, num_queues: int = 2, queue_size: int = QUEUE_SIZE):
    """GET_INFLIGHT_FD: the description answered and the area's fd."""
    fe.send(F.GET_INFLIGHT_FD, Inflight(0, 0, num_queues, queue_size))
    reply, fds = fe.reply_with_fds()
    assert len(fds) == 1
    return reply, fds[0]


def hand_back(fe: ScriptedFrontend, area: Inflight, fd: int) -> None:
    """SET_INFLIGHT_FD, acknowledged."""
    fe.send(F.SET_INFLIGHT_FD, area, fds=[os.dup(fd)], need_reply=True)
    assert fe.reply() == U64(0)


def mapped(fd: int, size: int) -> np.ndarray:
    return np.frombuffer(mmap.mmap(fd, size), dtype=np.uint8)


def test_the_inflight_description_is_the_spec_layout():
    # "Inflight description": mmap size u64, mmap offset u64, num queues u16, queue size u16,
    # and the 4 bytes of tail padding of QEMU's sizeof(VhostUserInflight) (native order: the
    # core runs little-endian only).
    data = struct.pack("<QQHH4x", 0x1122_3344_5566_7788, 0x1000, 3, 256)
    description = Inflight(0x1122_3344_5566_7788, 0x1000, 3, 256)
    assert decode_payload(F.SET_INFLIGHT_FD, data, [7]) == description
    assert encode_message(F.GET_INFLIGHT_FD, description)[12:] == data


def test_only_a_device_that_tracks_inflight_offers_inflight_shmfd():
    for fe, offered in ((ScriptedFrontend(), False), (tracking(), True)):
        fe.send(F.GET_PROTOCOL_FEATURES)
        assert bool(fe.reply().value & INFLIGHT) is offered
        fe.backend.close()


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_get_inflight_fd_answers_a_new_zeroed_sealed_area_of_every_queues_region(packed):
    fe = tracking()
    fe.handshake(packed, extra_protocol=INFLIGHT)
    area, fd = get_area(fe)
    size = 2 * inflight_region_size(QUEUE_SIZE, packed)
    assert area == Inflight(size, 0, 2, QUEUE_SIZE)
    assert os.fstat(fd).st_size >= size
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW
    assert not mapped(fd, size).any()     # version 0 everywhere: nothing initialised yet
    os.close(fd)
    fe.backend.close()


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_a_started_ring_initialises_its_own_region_and_no_other(packed):
    fe = tracking()
    fe.handshake(packed, extra_protocol=INFLIGHT)
    area, fd = get_area(fe)
    hand_back(fe, area, fd)
    fe.start_vring(1, RING_SIZE, packed, base=0x8000 if packed else 0)
    stride = inflight_region_size(QUEUE_SIZE, packed)
    view = mapped(fd, area.mmap_size)
    first, second = (InflightRegion(view[k * stride:(k + 1) * stride], QUEUE_SIZE, packed)
                     for k in (0, 1))
    assert not first.holds_state
    assert second.holds_state and int(second.header["desc_num"][0]) == QUEUE_SIZE
    assert fe.backend.vrings[1].queue.inflight is not None
    os.close(fd)
    fe.backend.close()


class Guest:
    """A reference driver on vring 0 of a scripted front-end's memory, offering numbered
    buffers of 16 bytes (one descriptor each, or three)."""

    def __init__(self, fe: ScriptedFrontend, rings, packed: bool):
        cls = ref.PackedDriver if packed else ref.SplitDriver
        self.driver = cls(fe.memory, RING_SIZE, rings)
        self.memory = fe.memory
        self.content: dict[int, bytes] = {}   # chain id -> the buffer's bytes

    def offer(self, number: int, pieces: int = 1) -> int:
        data = bytes([number]) * 16
        address = BUFFERS + number * 0x100
        self.memory.write(address, data)
        chain_id = self.driver.add(readable=[(address + 16 // pieces * k, 16 // pieces)
                                             for k in range(pieces - 1)]
                                   + [(address + 16 // pieces * (pieces - 1),
                                       16 - 16 // pieces * (pieces - 1))])
        self.content[chain_id] = data
        return chain_id

    def collect(self) -> list[int]:
        return [chain_id for chain_id, _ in self.driver.collect()]


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_a_backend_killed_with_requests_in_flight_is_followed_by_one_that_pops_them_first(
        packed, caplog):
    fe = tracking()
    fe.handshake(packed, extra_protocol=INFLIGHT)
    area, fd = get_area(fe)
    hand_back(fe, area, fd)
    rings = fe.start_vring(0, RING_SIZE, packed, base=0x8000 if packed else 0)
    guest = Guest(fe, rings, packed)
    ids = [guest.offer(k, pieces=1 + 2 * (k % 2)) for k in range(5)]
    queue = fe.backend.vrings[0].queue
    burst = queue.new_burst(8)
    assert queue.pop(burst) == 5
    queue.push(burst, order=[1, 3])       # completed out of order, as a block device does
    assert guest.collect() == [ids[1], ids[3]]
    position = queue.avail_state if packed else queue.last_avail_idx
    fe.backend.close()                    # killed: no GET_VRING_BASE, nothing drained

    again = tracking()
    again.memory = fe.memory
    again.handshake(packed, extra_protocol=INFLIGHT)
    hand_back(again, area, fd)
    with caplog.at_level(logging.INFO, logger="fastpath.vhost_user"):
        again.start_vring(0, RING_SIZE, packed, base=0)    # the base a crash leaves QEMU
    assert "3 requests in flight before the restart go first" in caplog.text
    queue = again.backend.vrings[0].queue
    assert queue.resubmit_ids() == [ids[0], ids[2], ids[4]]
    assert (queue.avail_state if packed else queue.last_avail_idx) == position
    new = guest.offer(5)
    burst = queue.new_burst(8)
    assert queue.pop(burst) == 4
    popped = [int(i) for i in burst.chains["id"][:4]]
    assert popped == [ids[0], ids[2], ids[4], new]
    assert [burst.readable(k) for k in range(4)] == [guest.content[i] for i in popped]
    queue.push(burst)
    assert sorted(guest.collect()) == sorted(popped)
    os.close(fd)
    again.backend.close()


def test_a_ring_moved_to_a_new_memory_table_hands_its_requests_in_flight_out_again():
    # The device lets the old queue go (and its requests, which it must not complete into the
    # ring); the new queue over the same region returns them, as after a restart.
    fe = tracking()
    fe.handshake(False, extra_protocol=INFLIGHT)
    area, fd = get_area(fe)
    hand_back(fe, area, fd)
    rings = fe.start_vring(0, RING_SIZE, False)
    guest = Guest(fe, rings, False)
    ids = [guest.offer(k) for k in range(3)]
    old = fe.backend.vrings[0].queue
    burst = old.new_burst(4)
    assert old.pop(burst) == 3
    old.push(burst, order=[1])
    region = fe.memory.regions[0]
    fe.send(F.SET_MEM_TABLE, MemoryTable((MemoryRegion(0, region.size, region.user_addr, 0),)),
            fds=[os.dup(region.fd)], need_reply=True)
    assert fe.reply() == U64(0)
    queue = fe.backend.vrings[0].queue
    assert queue is not old and queue.resubmit_ids() == [ids[0], ids[2]]
    os.close(fd)
    fe.backend.close()


def test_reset_device_lets_the_area_go():
    fe = tracking()
    fe.handshake(False, extra_protocol=INFLIGHT | ProtocolFeature.RESET_DEVICE)
    area, fd = get_area(fe)
    hand_back(fe, area, fd)
    assert fe.backend.inflight is not None
    fe.send(F.RESET_DEVICE)
    assert fe.backend.inflight is None
    os.close(fd)
    fe.backend.close()


def test_a_front_end_that_cuts_its_inflight_area_short_is_closed():
    fe = tracking()
    fe.handshake(False, extra_protocol=INFLIGHT)
    size = 2 * inflight_region_size(QUEUE_SIZE, False)
    fd = os.memfd_create("unsealed-inflight")
    os.ftruncate(fd, size)
    hand_back(fe, Inflight(size, 0, 2, QUEUE_SIZE), fd)
    rings = fe.start_vring(0, RING_SIZE, False)
    guest = Guest(fe, rings, False)
    os.ftruncate(fd, 0)
    guest.offer(0)
    queue = fe.backend.vrings[0].queue
    assert queue.pop(queue.new_burst(1)) == 1     # its record lands on a zero page
    assert "inflight area" in fe.backend.must_close
    os.close(fd)
    fe.backend.close()


def test_get_inflight_fd_without_inflight_shmfd_negotiated_closes_the_connection(caplog):
    fe = tracking()
    fe.handshake(False)
    with caplog.at_level(logging.ERROR, logger="fastpath.vhost_user"):
        assert fe.send(F.GET_INFLIGHT_FD, Inflight(0, 0, 2, QUEUE_SIZE)) is False
    assert "INFLIGHT_SHMFD" in caplog.text
    fe.backend.close()


# --- hostile descriptions, while another front-end is served ------------------------------------


class Client:
    """A front-end on the listening socket, with just enough of the protocol for the area."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(5)

    def send(self, request: FrontendRequest, payload=None, fds=(), need_reply=False) -> None:
        args = () if payload is None else (payload,)
        data = encode_message(request, *args, flags=8 if need_reply else 0)
        socket.send_fds(self.sock, [data], list(fds))

    def reply(self):
        data, fds, _, _ = socket.recv_fds(self.sock, 4096, 4)
        return decode_message(data, fds, reply=True).payload, fds

    def negotiate(self) -> None:
        self.send(F.GET_FEATURES)
        assert self.reply()[0].value & PROTOCOL_FEATURES_BIT
        self.send(F.SET_PROTOCOL_FEATURES, U64(INFLIGHT | ProtocolFeature.REPLY_ACK))
        self.send(F.SET_FEATURES, U64(1 << VIRTIO_F_VERSION_1 | PROTOCOL_FEATURES_BIT))

    def closed(self) -> bool:
        self.sock.settimeout(2)
        try:
            return self.sock.recv(4096) == b""
        except ConnectionResetError:
            return True

    def still_served(self) -> bool:
        self.send(F.GET_QUEUE_NUM)
        return self.reply()[0] == U64(1)


def memfd(size: int) -> int:
    fd = os.memfd_create("inflight")
    os.ftruncate(fd, size)
    return fd


def pipe() -> int:
    read, write = os.pipe()
    os.close(write)
    return read


NEED = 2 * inflight_region_size(QUEUE_SIZE, False)
MOST = 2 * inflight_region_size(QUEUE_SIZE, True)
BAD_GETS = {
    "no queues": Inflight(0, 0, 0, QUEUE_SIZE),
    "more queues than the device has": Inflight(0, 0, 3, QUEUE_SIZE),
    "empty queues": Inflight(0, 0, 2, 0),
    "queues larger than the device serves": Inflight(0, 0, 2, 2048),
    "the largest queues the wire can say": Inflight(0, 0, 0xFFFF, 0xFFFF),
}
BAD_SETS = {
    "smaller than its queues need": (Inflight(NEED - 64, 0, 2, QUEUE_SIZE), lambda: memfd(NEED)),
    "larger than any layout needs": (Inflight(MOST + 64, 0, 2, QUEUE_SIZE),
                                     lambda: memfd(MOST + 64)),
    "past the end of the fd": (Inflight(NEED, 0, 2, QUEUE_SIZE), lambda: memfd(NEED - 1)),
    "at an offset past the fd": (Inflight(NEED, 1 << 20, 2, QUEUE_SIZE), lambda: memfd(NEED)),
    "at an offset that wraps": (Inflight(NEED, (1 << 64) - 4096, 2, QUEUE_SIZE),
                                lambda: memfd(NEED)),
    "at an unaligned offset": (Inflight(NEED, 100, 2, QUEUE_SIZE), lambda: memfd(NEED + 4096)),
    "in a pipe": (Inflight(NEED, 0, 2, QUEUE_SIZE), pipe),
    "for no queues": (Inflight(NEED, 0, 0, QUEUE_SIZE), lambda: memfd(NEED)),
    "for more queues than the device has": (Inflight(NEED, 0, 3, QUEUE_SIZE),
                                            lambda: memfd(NEED)),
    "for empty queues": (Inflight(NEED, 0, 2, 0), lambda: memfd(NEED)),
    "for queues larger than the device serves": (Inflight(NEED, 0, 2, 2048),
                                                 lambda: memfd(NEED)),
}


def tracking_device() -> PlainDevice:
    return PlainDevice(features=1 << VIRTIO_F_VERSION_1, tracks_inflight=True,
                       max_queue_size=1024)


@pytest.fixture
def server(tmp_path):
    # Anything escaping the adapter's loop fails the test (see `served`).
    with served(str(tmp_path / "vhost.sock"), device=tracking_device) as srv:
        yield srv


def well_behaved(path: str) -> None:
    """Another front-end gets its area, hands it back and is answered, all the while."""
    good = Client(path)
    good.negotiate()
    good.send(F.GET_INFLIGHT_FD, Inflight(0, 0, 2, QUEUE_SIZE))
    area, fds = good.reply()
    assert area == Inflight(NEED, 0, 2, QUEUE_SIZE) and len(fds) == 1
    good.send(F.SET_INFLIGHT_FD, area, fds=fds, need_reply=True)
    assert good.reply()[0] == U64(0)
    os.close(fds[0])
    good.sock.close()


@pytest.mark.parametrize("case", sorted(BAD_GETS))
def test_a_get_inflight_fd_the_device_cannot_serve_closes_that_connection_alone(server, case,
                                                                                caplog):
    bad = Client(server.path)
    bad.negotiate()
    with caplog.at_level(logging.ERROR, logger="fastpath.vhost_user"):
        bad.send(F.GET_INFLIGHT_FD, BAD_GETS[case])
        well_behaved(server.path)
        assert bad.closed()
    assert "GET_INFLIGHT_FD refused" in caplog.text


@pytest.mark.parametrize("acked", [True, False], ids=["acked", "unacked"])
@pytest.mark.parametrize("case", sorted(BAD_SETS))
def test_a_set_inflight_fd_that_cannot_be_mapped_is_refused_and_costs_its_sender_alone(
        server, case, acked, caplog):
    description, make_fd = BAD_SETS[case]
    fd = make_fd()
    bad = Client(server.path)
    bad.negotiate()
    with caplog.at_level(logging.ERROR, logger="fastpath.vhost_user"):
        bad.send(F.SET_INFLIGHT_FD, description, fds=[fd], need_reply=acked)
        os.close(fd)
        well_behaved(server.path)
        if acked:
            # Refused with a failing ack; the front-end knows, and goes on being served.
            assert bad.reply()[0] != U64(0)
            assert bad.still_served()
        else:
            # Believing the area in use, the front-end would lose requests after a crash.
            assert bad.closed()
    assert "SET_INFLIGHT_FD refused" in caplog.text


@pytest.mark.parametrize("fds", [0, 2], ids=["no-fd", "two-fds"])
def test_a_set_inflight_fd_with_other_than_one_fd_closes_that_connection_alone(server, fds):
    bad = Client(server.path)
    bad.negotiate()
    sent = [memfd(NEED) for _ in range(fds)]
    bad.send(F.SET_INFLIGHT_FD, Inflight(NEED, 0, 2, QUEUE_SIZE), fds=sent, need_reply=True)
    for fd in sent:
        os.close(fd)
    well_behaved(server.path)
    assert bad.closed()
