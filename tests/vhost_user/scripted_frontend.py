"""A scripted front-end for back-end tests: the front-end half of a socket pair, sending what
DPDK's virtio-user sends (see the shared notes on peers) and reading the replies."""

import os
import socket
import threading
from contextlib import contextmanager

from fastpath.errors import RequestRefused
from fastpath.hv import GuestMemory
from fastpath.vhost_user import Channel
from fastpath.vhost_user._backend import Backend
from fastpath.vhost_user._device import Device
from fastpath.vhost_user.wire import (
    FLAG_NEED_REPLY,
    U64,
    VRING_F_LOG,
    FrontendRequest,
    MemoryRegion,
    MemoryTable,
    ProtocolFeature,
    VringAddress,
    VringFile,
    VringState,
    decode_message,
    encode_message,
)
from fastpath.vring import (
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    ring_layout,
)

F = FrontendRequest
PROTOCOL_FEATURES_BIT = 1 << 30
FEATURES = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_F_RING_PACKED


class PlainDevice(Device):
    """A device of `queues` virtqueues offering `features`, with a config space of bytes that
    SET_CONFIG may write within; with `tracks_inflight`, one whose rings record what is in
    flight (INFLIGHT_SHMFD)."""

    def __init__(self, *, features: int = FEATURES, queues: int = 2, config: bytes = b"",
                 queue_num: int = 1, tracks_inflight: bool = False,
                 max_queue_size: int = Device.max_queue_size):
        self.features = features
        self.queues = queues
        self.config = bytearray(config)
        self._queue_num = queue_num
        self.tracks_inflight = tracks_inflight
        self.max_queue_size = max_queue_size

    @property
    def queue_num(self) -> int:
        return self._queue_num

    def read_config(self, offset: int, size: int) -> bytes:
        return bytes(self.config[offset:offset + size])

    def write_config(self, offset: int, data: bytes) -> None:
        if offset + len(data) > len(self.config):
            raise RequestRefused(f"config write {offset}+{len(data)} is past the "
                                 f"{len(self.config)}-byte config space")
        self.config[offset:offset + len(data)] = data


@contextmanager
def served(path: str, device=lambda: PlainDevice(features=1 << VIRTIO_F_VERSION_1), **options):
    """A listening back-end of engines for `device()` (a PlainDevice offering VERSION_1) on
    `path`, its loop in a thread until the context ends; anything escaping the adapter's loop
    fails the test there."""
    from fastpath.vhost_user import BackendServer

    server = BackendServer(path, lambda channel: Backend(channel, device()), **options)
    stop = threading.Event()
    failures = []

    def loop():
        try:
            while not stop.is_set():
                server.serve_once(0.02)
        except BaseException as e:
            failures.append(e)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(5)
        server.close()
    assert not failures, failures


class ScriptedFrontend:
    """The front-end half of a socket pair, sending encoded messages and reading replies."""

    def __init__(self, make_backend=None):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = ours
        if make_backend is None:
            self.backend = Backend(Channel(theirs), PlainDevice(config=bytes(range(12))))
        else:
            self.backend = make_backend(Channel(theirs))
        self.memory = GuestMemory([(0, 4 << 20)])

    def send(self, request, payload=None, fds=(), need_reply=False):
        args = () if payload is None else (payload,)
        data = encode_message(request, *args, flags=FLAG_NEED_REPLY if need_reply else 0)
        socket.send_fds(self.sock, [data], list(fds)) if fds else self.sock.send(data)
        return self.backend.handle_request()

    def reply(self):
        data = self.sock.recv(4096)
        return decode_message(data, reply=True).payload

    def reply_with_fds(self):
        """The next reply's payload and the fds that came with it (now the caller's)."""
        data, fds, _, _ = socket.recv_fds(self.sock, 4096, 4)
        return decode_message(data, fds, reply=True).payload, fds

    def handshake(self, packed: bool, extra_features: int = 0, extra_protocol: int = 0):
        region = self.memory.regions[0]
        assert self.send(F.SET_OWNER)
        self.send(F.GET_FEATURES)
        offered = self.reply().value
        assert offered & PROTOCOL_FEATURES_BIT and offered & FEATURES == FEATURES
        self.send(F.GET_PROTOCOL_FEATURES)
        assert self.reply().value == self.backend.protocol_offered
        self.send(F.SET_PROTOCOL_FEATURES, U64(ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK
                                               | ProtocolFeature.STATUS | extra_protocol))
        for index in (0, 1):  # DPDK sends the call fds before SET_FEATURES
            self.send(F.SET_VRING_CALL, VringFile(index), fds=[os.eventfd(0)])
        acked = 1 << VIRTIO_F_VERSION_1 | PROTOCOL_FEATURES_BIT | extra_features | (
            1 << VIRTIO_F_RING_PACKED if packed else 0)
        self.send(F.SET_FEATURES, U64(acked))
        self.send(F.SET_STATUS, U64(0x0B), need_reply=True)
        assert self.reply() == U64(0)
        self.send(F.GET_STATUS)
        assert self.reply() == U64(0x0B)
        table = MemoryTable((MemoryRegion(0, region.size, region.user_addr, 0),))
        self.send(F.SET_MEM_TABLE, table, fds=[os.dup(region.fd)], need_reply=True)
        assert self.reply() == U64(0)

    def start_vring(self, index, size, packed, base=0, log_used=False):
        """Set vring `index` up and start it; with `log_used`, ask for its used-ring writes to
        be logged (VHOST_VRING_F_LOG, the used ring's guest address as the log address)."""
        rings = ring_layout(size, 0x1000 + index * 0x10000, packed)
        uva = self.memory.regions[0].user_addr
        self.send(F.SET_VRING_NUM, VringState(index, size))
        self.send(F.SET_VRING_BASE, VringState(index, base))
        self.send(F.SET_VRING_ADDR, VringAddress(index, VRING_F_LOG if log_used else 0,
                                                 uva + rings.desc, uva + rings.device,
                                                 uva + rings.driver,
                                                 rings.device if log_used else 0))
        self.send(F.SET_VRING_KICK, VringFile(index), fds=[os.eventfd(0)])
        self.send(F.SET_VRING_ENABLE, VringState(index, 1))
        return rings
