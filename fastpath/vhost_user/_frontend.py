"""`Frontend`: the front-end side of vhost-user (fastpath's own virtio-user), able to drive any
back-end: it negotiates features, shares a `GuestMemory` by its memfds, sets vrings up with
kick and call eventfds, and stops them again. One request at a time, each reply awaited.

With VIRTIO_F_ACCESS_PLATFORM it plays the vIOMMU's part as QEMU does (hv.md §5.3): it sends
IOTLB updates and invalidations and answers the back-end's misses from a resolver."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastpath.errors import BackendRefused
from fastpath.hv import GuestMemory
from fastpath.vhost_user._channel import Channel
from fastpath.vhost_user._payloads import (
    NO_PAYLOAD,
    U64,
    Inflight,
    IotlbAccess,
    IotlbMessage,
    IotlbType,
    MemoryRegion,
    MemoryTable,
    VringAddress,
    VringFile,
    VringState,
)
from fastpath.vhost_user._protocol import (
    ALWAYS_REPLY,
    FLAG_NEED_REPLY,
    VHOST_USER_F_PROTOCOL_FEATURES,
    BackendRequest,
    FrontendRequest,
    Message,
    ProtocolFeature,
    encode_message,
    encode_reply,
)
from fastpath.vring import VIRTIO_F_ACCESS_PLATFORM, RingAddresses

F = FrontendRequest

# What this front-end uses of the protocol unless asked for more: BACKEND_REQ is there to be
# asked for (the caller then answers the back-end's requests with `next_backend_request`).
FRONTEND_PROTOCOL_FEATURES = (ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK
                              | ProtocolFeature.STATUS)


IotlbResolver = Callable[[int, int], "tuple[int, int, int, int] | None"]
"""Answers an IOTLB miss: (iova, access) → (iova, size, user address, access) of the mapping
that holds it, or None when the IOMMU has none (the miss then goes unanswered, as QEMU leaves
it)."""


@dataclass
class Vring:
    """A vring this front-end set up: its eventfds (the front-end's to close)."""

    index: int
    size: int
    kick: int
    call: int

    def kick_backend(self) -> None:
        """Notify the back-end that buffers were added."""
        os.eventfd_write(self.kick, 1)


class Frontend:
    """A connection to the vhost-user back-end listening on `path` (waits up to
    `connect_timeout` seconds for it to appear); with `server`, this side listens on `path`
    and takes the first back-end that connects within `connect_timeout` seconds."""

    def __init__(self, path: str, *, connect_timeout: float = 10.0, reply_timeout: float = 10.0,
                 server: bool = False):
        self.path = path
        sock = _accept(path, connect_timeout) if server else _connect(path, connect_timeout)
        sock.settimeout(reply_timeout)
        self.channel = Channel(sock, replies=True)
        # Requests from the back-end, once BACKEND_REQ is negotiated.
        self.backend_requests: Channel | None = None
        self.features = 0
        self.protocol = 0
        self.vrings: dict[int, Vring] = {}

    # --- requests ---

    def request(self, request: FrontendRequest, payload=NO_PAYLOAD, fds=(), *,
                ack: bool = True):
        """Send one request; return its reply payload (None for a request without one).

        With REPLY_ACK negotiated and `ack`, a request without a reply of its own asks for an
        acknowledgement, and a failing one raises BackendRefused.
        """
        payload, received = self._request(request, payload, fds, ack=ack)
        for fd in received:
            os.close(fd)
        return payload

    def _request(self, request: FrontendRequest, payload, fds, *, ack: bool):
        # The reply payload and the fds that came with it, the caller's to close.
        want_ack = (ack and request not in ALWAYS_REPLY
                    and bool(self.protocol & ProtocolFeature.REPLY_ACK))
        self.channel.send(encode_message(request, payload,
                                         flags=FLAG_NEED_REPLY if want_ack else 0), fds)
        if request not in ALWAYS_REPLY and not want_ack:
            return None, []
        received = self.channel.receive()
        try:
            reply = received.message
            if reply.header.request != request:
                raise BackendRefused(f"{request.name} was answered by "
                                     f"{reply.header.request.name}")
            if want_ack and reply.payload.value != 0:
                raise BackendRefused(f"the back-end refused {request.name} "
                                     f"({reply.payload.value})")
        except BaseException:
            for fd in received.fds:
                os.close(fd)
            raise
        return None if want_ack else reply.payload, list(received.fds)

    def get_inflight_fd(self, num_queues: int, queue_size: int) -> tuple[Inflight, int]:
        """A new inflight area from the back-end (GET_INFLIGHT_FD, INFLIGHT_SHMFD negotiated)
        for `num_queues` rings of `queue_size`: its description and its fd, the caller's to
        keep (and close) and to hand to the back-end that follows (`set_inflight_fd`)."""
        description, fds = self._request(F.GET_INFLIGHT_FD, Inflight(0, 0, num_queues,
                                                                     queue_size), (), ack=True)
        if len(fds) != 1 or not description.mmap_size:
            for fd in fds:
                os.close(fd)
            raise BackendRefused("the back-end gave no inflight area")
        return description, fds[0]

    def set_inflight_fd(self, description: Inflight, fd: int) -> None:
        """Hand an inflight area a back-end gave (`get_inflight_fd`) to this one
        (SET_INFLIGHT_FD): its rings go on from what the area records."""
        self.request(F.SET_INFLIGHT_FD, description, [fd])

    def negotiate(self, features: int, protocol: int = FRONTEND_PROTOCOL_FEATURES) -> int:
        """SET_OWNER, then the features both sides have; returns the virtio features acked."""
        self.request(F.SET_OWNER)
        offered = self.request(F.GET_FEATURES).value
        acked = offered & features
        if offered >> VHOST_USER_F_PROTOCOL_FEATURES & 1:
            acked |= 1 << VHOST_USER_F_PROTOCOL_FEATURES
            self.protocol = self.request(F.GET_PROTOCOL_FEATURES).value & protocol
            self.request(F.SET_PROTOCOL_FEATURES, U64(self.protocol), ack=False)
            if self.protocol & ProtocolFeature.BACKEND_REQ:
                self._open_backend_channel()
        self.request(F.SET_FEATURES, U64(acked))
        self.features = acked
        return acked

    @property
    def iommu(self) -> bool:
        """Whether VIRTIO_F_ACCESS_PLATFORM was negotiated: ring and buffer addresses are
        IOVAs, which the back-end translates through IOTLB messages."""
        return bool(self.features >> VIRTIO_F_ACCESS_PLATFORM & 1)

    def iotlb_update(self, iova: int, size: int, user_addr: int,
                     perm: int = IotlbAccess.READ_WRITE) -> None:
        """Tell the back-end that [iova, iova + size) maps to [user_addr, user_addr + size)
        for `perm` (IOTLB_MSG UPDATE), and wait for its ack."""
        self.request(F.IOTLB_MSG, IotlbMessage(iova, size, user_addr, IotlbAccess(perm),
                                               IotlbType.UPDATE))

    def iotlb_invalidate(self, iova: int, size: int) -> None:
        """Tell the back-end that [iova, iova + size) is no longer mapped (IOTLB_MSG
        INVALIDATE), and wait for its ack: once it comes the back-end no longer reaches
        that memory through those IOVAs."""
        self.request(F.IOTLB_MSG, IotlbMessage(iova, size, 0, IotlbAccess.NONE,
                                               IotlbType.INVALIDATE))

    def answer_misses(self, resolver: IotlbResolver, timeout: float) -> int:
        """Answer the back-end's IOTLB misses with updates from `resolver` until none has
        come for `timeout` seconds; returns how many were answered. Other back-end requests
        are acknowledged and dropped."""
        answered = 0
        while (message := self.next_backend_request(timeout)) is not None:
            request = message.payload
            if (message.header.request != BackendRequest.IOTLB_MSG
                    or request.type != IotlbType.MISS):
                continue
            mapping = resolver(request.iova, request.perm)
            if mapping is not None:
                self.iotlb_update(*mapping)
                answered += 1
        return answered

    def next_backend_request(self, timeout: float, *, status: int = 0) -> Message | None:
        """Wait up to `timeout` seconds for a request on the back-end channel; acknowledge it
        with `status` (0: carried out) when the back-end asks, and return it, or None if none
        came. The caller acts on it (GET_CONFIG after a CONFIG_CHANGE_MSG, say)."""
        if self.backend_requests is None:
            raise BackendRefused("no back-end channel: BACKEND_REQ was not negotiated")
        self.backend_requests.sock.settimeout(timeout)
        try:
            received = self.backend_requests.receive()
        except TimeoutError:
            return None
        for fd in received.fds:
            os.close(fd)
        message = received.message
        if message.header.need_reply:
            self.backend_requests.send(encode_reply(message.header.request, U64(status)))
        return message

    def _open_backend_channel(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.request(F.SET_BACKEND_REQ_FD, fds=[theirs.fileno()])
        finally:
            theirs.close()
        self.backend_requests = Channel(ours, requests=BackendRequest)

    def queue_num(self) -> int | None:
        """The most queues the back-end serves (GET_QUEUE_NUM; queue pairs for a net device),
        or None when MQ was not negotiated."""
        if not self.protocol & ProtocolFeature.MQ:
            return None
        return self.request(F.GET_QUEUE_NUM).value

    def set_status(self, status: int) -> None:
        """Tell the back-end the device status (virtio 1.2 §2.1), when STATUS was negotiated."""
        if self.protocol & ProtocolFeature.STATUS:
            self.request(F.SET_STATUS, U64(status))

    def set_memory(self, memory: GuestMemory) -> None:
        """Share every region of `memory` with the back-end (SET_MEM_TABLE)."""
        regions = memory.regions
        table = MemoryTable(tuple(MemoryRegion(r.guest_phys_addr, r.size, r.user_addr, 0)
                                  for r in regions))
        self.request(F.SET_MEM_TABLE, table, [r.fd for r in regions])

    def start_vring(self, index: int, size: int, memory: GuestMemory, rings: RingAddresses, *,
                    base: int = 0) -> Vring:
        """Describe vring `index` at guest-physical `rings` (IOVAs with ACCESS_PLATFORM),
        give it eventfds and enable it.

        `base` is the first avail index (split) or slot with its wrap counter in bit 15
        (packed: 0x8000 for a new ring).
        """
        # QEMU docs/interop/vhost-user.rst, "IOMMU support": the ring addresses are IOVAs.
        uva = (lambda iova: iova) if self.iommu else memory.guest_to_user
        self.request(F.SET_VRING_NUM, VringState(index, size))
        self.request(F.SET_VRING_BASE, VringState(index, base))
        self.request(F.SET_VRING_ADDR, VringAddress(index, 0, uva(rings.desc), uva(rings.device),
                                                    uva(rings.driver), 0))
        vring = Vring(index, size, kick=os.eventfd(0, os.EFD_NONBLOCK),
                      call=os.eventfd(0, os.EFD_NONBLOCK))
        self.vrings[index] = vring
        self.request(F.SET_VRING_CALL, VringFile(index), [vring.call])
        self.request(F.SET_VRING_KICK, VringFile(index), [vring.kick])
        if self.features >> VHOST_USER_F_PROTOCOL_FEATURES & 1:
            self.request(F.SET_VRING_ENABLE, VringState(index, 1))
        return vring

    def stop_vring(self, index: int) -> int:
        """Stop vring `index` (GET_VRING_BASE); returns where the back-end stopped."""
        if self.features >> VHOST_USER_F_PROTOCOL_FEATURES & 1:
            self.request(F.SET_VRING_ENABLE, VringState(index, 0))
        base = self.request(F.GET_VRING_BASE, VringState(index, 0)).num
        vring = self.vrings.pop(index, None)
        if vring is not None:
            os.close(vring.kick)
            os.close(vring.call)
        return base

    def close(self) -> None:
        """Close the connection and every eventfd."""
        for vring in self.vrings.values():
            os.close(vring.kick)
            os.close(vring.call)
        self.vrings.clear()
        if self.backend_requests is not None:
            self.backend_requests.close()
        self.channel.close()


def _connect(path: str, timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            if time.monotonic() > deadline:
                raise type(e)(e.errno, f"no vhost-user back-end listening on {path} (waited "
                              f"{timeout} s): {e.strerror}") from None
            time.sleep(0.05)


def _accept(path: str, timeout: float) -> socket.socket:
    # The front-end as the socket's server (QEMU's server=on, DPDK virtio-user's server=1), for
    # a back-end in client mode. One back-end serves one front-end: the listening socket and
    # its file go once it is in.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
    except OSError:
        listener.close()
        raise
    try:
        listener.listen(1)
        listener.settimeout(timeout)
        try:
            sock, _ = listener.accept()
        except TimeoutError:
            raise TimeoutError(f"no vhost-user back-end connected to {path} within {timeout} "
                               "s") from None
        return sock
    finally:
        listener.close()
        os.unlink(path)
