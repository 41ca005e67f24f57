"""The back-end's protocol engine: `handle_request()` handles exactly one message.

It owns no event loop: a selector (or anything else) calls it when the channel is readable.
It keeps the control-plane state the front-end sets up (features, memory, one `VringSetup` per
vring, the inflight area) and turns a started ring into a `DeviceQueue` that a data-plane loop
serves, recording what is in flight in the ring's inflight region for a device that wants it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from fastpath.errors import (
    ChannelClosed,
    FastpathError,
    PeerTooSlow,
    ProtocolError,
    RequestRefused,
)
from fastpath.hv import GuestMemory, SharedRegion
from fastpath.vhost_user._channel import Channel
from fastpath.vhost_user._device import ENGINE_PROTOCOL_FEATURES, Device
from fastpath.vhost_user._inflight import InflightArea
from fastpath.vhost_user._iotlb import Iotlb
from fastpath.vhost_user._payloads import (
    NO_PAYLOAD,
    U64,
    DeviceConfig,
    Inflight,
    IotlbAccess,
    IotlbMessage,
    IotlbType,
    LogArea,
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
    ProtocolFeature,
    encode_message,
    encode_reply,
)
from fastpath.vring import (
    VIRTIO_F_ACCESS_PLATFORM,
    VIRTIO_F_RING_PACKED,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    DeviceQueue,
    PackedDeviceQueue,
    RingAddresses,
    SplitDeviceQueue,
    ring_area_sizes,
)

log = logging.getLogger("fastpath.vhost_user")

F = FrontendRequest

# vhost's own feature bit: the front-end asks for dirty-page logging (live migration).
VHOST_F_LOG_ALL = 26

# Requests that change what a data plane touches: ring state, kick and call fds, memory.
_DATA_PLANE_REQUESTS = {
    F.SET_FEATURES, F.SET_LOG_BASE, F.SET_MEM_TABLE, F.ADD_MEM_REG, F.REM_MEM_REG, F.SET_VRING_KICK,
    F.SET_VRING_CALL, F.SET_VRING_ERR, F.GET_VRING_BASE, F.SET_VRING_ENABLE, F.RESET_DEVICE,
    F.IOTLB_MSG,
}

# QEMU refuses a vIOMMU unless the back-end can be asked for acks and can send misses
# (vhost_user_backend_init: "IOMMU support requires reply-ack and slave-req protocol
# features"); the engine holds a front-end to the same.
_IOMMU_PROTOCOL = ProtocolFeature.REPLY_ACK | ProtocolFeature.BACKEND_REQ

# How long a ring waits for the front-end to answer an IOTLB miss before it is given up.
IOTLB_MISS_DEADLINE = 5.0


class NotAnEventfd(RequestRefused):
    """A kick, call or error fd that is not an eventfd (a pipe, a socket, a file): reading or
    signalling it could block the data plane."""

    closes_unless_acked = True


def _take_eventfd(fds: list[int], what: str) -> int | None:
    # The fd a SET_VRING_KICK/CALL/ERR carries, checked to be an eventfd and made
    # non-blocking, so that signalling a counter the front-end let fill up returns at once
    # (EAGAIN) instead of stopping the data plane. Front-ends create theirs non-blocking
    # anyway (O_NONBLOCK is shared with them).
    if not fds:
        return None
    try:
        target = os.readlink(f"/proc/self/fd/{fds[-1]}")
    except OSError as e:
        target = f"unreadable ({e.strerror})"
    if target != "anon_inode:[eventfd]":
        raise NotAnEventfd(f"the {what} fd is {target}, not an eventfd")
    fd = fds.pop()
    os.set_blocking(fd, False)
    return fd


@dataclass(frozen=True)
class _WithFds:
    """A reply payload and the fds that go with it (GET_INFLIGHT_FD's area)."""

    payload: Any
    fds: tuple[int, ...]


def _replace_fd(holder: object, name: str, fd: int | None) -> None:
    # An fd attribute that a new message replaces: the old one is closed first.
    old = getattr(holder, name)
    if old is not None:
        os.close(old)
    setattr(holder, name, fd)


class _Untranslated(RequestRefused):
    """A ring area's IOVA that the IOTLB does not translate (yet)."""

    def __init__(self, iova: int):
        super().__init__(f"no IOTLB entry for its area at IOVA {iova:#x}")
        self.iova = iova


@dataclass
class VringSetup:
    """One vring as the front-end has described it so far, and its queue once started."""

    num: int = 0
    base: int = 0
    address: VringAddress | None = None
    kick: int | None = None
    call: int | None = None
    err: int | None = None
    enabled: bool = False
    queue: DeviceQueue | None = field(default=None, repr=False)
    # VIRTIO_F_ACCESS_PLATFORM: the IOVA ranges of the ring's areas, once translated; and
    # whether a kicked ring waits for a translation of its areas before it starts.
    ring_iovas: tuple[tuple[int, int], ...] = ()
    awaiting_translation: bool = False
    # The (iova, access) of the last IOTLB miss the ring waits for.
    missing: tuple[int, int] | None = None

    @property
    def started(self) -> bool:
        """Started: a kick fd arrived and the ring was mapped; GET_VRING_BASE stops it."""
        return self.queue is not None

    def replace_fd(self, name: str, fd: int | None) -> None:
        """Keep `fd` as the vring's "kick", "call" or "err" fd, closing the one it replaces."""
        _replace_fd(self, name, fd)

    def close(self) -> None:
        """Close the vring's fds and let go of its queue."""
        for name in ("kick", "call", "err"):
            self.replace_fd(name, None)
        self.queue = None


class Backend:
    """A vhost-user back-end for one connection, serving `device`: it offers what the device
    offers (see `Device`) and keeps the protocol's state, none of the device's."""

    def __init__(self, channel: Channel, device: Device, *, max_mem_slots: int = 8,
                 iotlb_miss_deadline: float = IOTLB_MISS_DEADLINE):
        if device.protocol_features & ~ENGINE_PROTOCOL_FEATURES:
            raise ValueError("protocol features the engine does not implement")
        self.channel = channel
        self.device = device
        self.protocol_offered = device.protocol_features
        if not device.tracks_inflight:
            # Only a device that asks for it has its rings record what is in flight.
            self.protocol_offered &= ~ProtocolFeature.INFLIGHT_SHMFD
        self.offered = device.features | 1 << VHOST_USER_F_PROTOCOL_FEATURES
        if self.protocol_offered & _IOMMU_PROTOCOL != _IOMMU_PROTOCOL:
            self.offered &= ~(1 << VIRTIO_F_ACCESS_PLATFORM)
        # VIRTIO_F_ACCESS_PLATFORM: the IOTLB the front-end fills, and how long a miss may
        # stay unanswered before the ring waiting for it is given up.
        self.iotlb = Iotlb()
        self.iotlb_miss_deadline = iotlb_miss_deadline
        # Signalled by a ring's pop that meets a missing translation: the adapters wait on it
        # beside the channel, so that the miss is sent at once (`poll_iotlb`).
        self.miss_fd = os.eventfd(0, os.EFD_NONBLOCK)
        self.acked = 0
        self.protocol = 0
        self.owner = False
        self.status = 0
        self.max_mem_slots = max_mem_slots
        self.memory: GuestMemory | None = None
        # ADD_MEM_REG of a region already mapped, per guest-physical base (see _add_mem_reg).
        self._region_adds: dict[int, int] = {}
        # Live migration: the dirty log (mapped at guest address 0 of its own GuestMemory)
        # and the optional eventfd to signal when it changed (not used: the log is polled).
        self.log: GuestMemory | None = None
        self.log_fd: int | None = None
        # The back-end channel (SET_BACKEND_REQ_FD), and the requests sent on it whose
        # REPLY_ACK has not come back yet, with when each was sent.
        self.backend_channel: Channel | None = None
        self._unacked: deque[tuple[BackendRequest, float]] = deque()
        # Why the connection must end, found outside a request (a back-end request failed).
        self._failure: str | None = None
        # The inflight area (GET/SET_INFLIGHT_FD): a region for each ring to record in.
        self.inflight: InflightArea | None = None
        self.vrings = [VringSetup() for _ in range(device.queues)]
        self._handlers: dict[FrontendRequest, Callable[[Any, list[int]], Any]] = {
            F.GET_FEATURES: lambda p, fds: U64(self.offered),
            F.SET_FEATURES: self._set_features,
            F.SET_OWNER: self._set_owner,
            F.RESET_OWNER: lambda p, fds: log.info("RESET_OWNER is deprecated; ignored"),
            F.SET_MEM_TABLE: self._set_mem_table,
            F.GET_PROTOCOL_FEATURES: lambda p, fds: U64(self.protocol_offered),
            F.SET_PROTOCOL_FEATURES: self._set_protocol_features,
            F.GET_QUEUE_NUM: lambda p, fds: U64(self.device.queue_num),
            F.SET_VRING_NUM: self._set_vring_num,
            F.SET_VRING_ADDR: self._set_vring_addr,
            F.SET_VRING_BASE: self._set_vring_base,
            F.GET_VRING_BASE: self._get_vring_base,
            F.SET_VRING_KICK: self._set_vring_kick,
            F.SET_VRING_CALL: lambda p, fds: self._set_vring_fd(p, fds, "call"),
            F.SET_VRING_ERR: lambda p, fds: self._set_vring_fd(p, fds, "err"),
            F.SET_VRING_ENABLE: self._set_vring_enable,
            F.GET_CONFIG: self._get_config,
            F.SET_CONFIG: self._set_config,
            F.RESET_DEVICE: lambda p, fds: self.reset(),
            F.GET_MAX_MEM_SLOTS: lambda p, fds: U64(self.max_mem_slots),
            F.ADD_MEM_REG: self._add_mem_reg,
            F.REM_MEM_REG: self._rem_mem_reg,
            F.SET_LOG_BASE: self._set_log_base,
            F.SET_LOG_FD: lambda p, fds: self._keep_fd("log_fd", fds),
            F.SET_BACKEND_REQ_FD: self._set_backend_req_fd,
            F.SET_STATUS: self._set_status,
            F.GET_STATUS: lambda p, fds: U64(self.status),
            F.GET_INFLIGHT_FD: self._get_inflight_fd,
            F.SET_INFLIGHT_FD: self._set_inflight_fd,
            F.IOTLB_MSG: self._iotlb_msg,
        }
        # The device's own requests come after the engine's (which it cannot replace).
        for request, handler in device.requests().items():
            self._handlers.setdefault(request, lambda p, fds, handler=handler: handler(p))

    # --- the engine ---

    def handle_request(self) -> bool:
        """Read what has arrived and handle one message once it is whole; False once the
        connection is over. It never waits for the front-end: call it when the channel is
        readable (a message still incomplete returns True, having done nothing more).

        A malformed message, a failed request that must be answered (the front-end would
        otherwise wait for ever) or a front-end that stops reading its replies ends the
        connection; any other refused request is logged, answered with a failing REPLY_ACK if
        one was asked for, and the back-end carries on.
        """
        try:
            received = self.channel.receive_nowait()
        except ChannelClosed as e:
            log.info("front-end disconnected: %s", e)
            return False
        except ProtocolError as e:
            log.error("closing the connection: %s", e)
            return False
        if received is None:
            return True
        header = received.message.header
        request = header.request
        handler = self._handlers.get(request)
        # A handler takes the fds it keeps out of this list; whatever is left is closed here.
        fds = list(received.fds)
        touches_data_plane = request in _DATA_PLANE_REQUESTS
        with self.device.quiesced() if touches_data_plane else nullcontext():
            try:
                if handler is None:
                    raise RequestRefused(f"{request.name} is not implemented")
                reply = handler(received.message.payload, fds)
                ok = True
            except (FastpathError, OSError) as e:
                acked = header.need_reply and self.protocol & ProtocolFeature.REPLY_ACK
                closes = request in ALWAYS_REPLY or (
                    getattr(e, "closes_unless_acked", False) and not acked)
                log.error("%s refused%s: %s", request.name,
                          "; closing the connection" if closes else "", e)
                if closes:
                    return False
                reply, ok = None, False
            finally:
                for fd in fds:
                    os.close(fd)
                if touches_data_plane:
                    self.device.rings_changed(self)
        try:
            if request in ALWAYS_REPLY:
                reply, reply_fds = ((reply.payload, reply.fds) if isinstance(reply, _WithFds)
                                    else (reply, ()))
                self.channel.send_nowait(encode_reply(request, reply), reply_fds)
            elif header.need_reply and self.protocol & ProtocolFeature.REPLY_ACK:
                self.channel.send_nowait(encode_reply(request, U64(0 if ok else 1)))
        except ChannelClosed as e:
            log.info("front-end disconnected before its reply to %s: %s", request.name, e)
            return False
        except PeerTooSlow as e:
            log.error("closing the connection: %s", e)
            return False
        return True

    def reset(self) -> None:
        """Back to the state of a new connection, but for the memory table (RESET_DEVICE). The
        inflight area goes too: what was in flight is the driver's to recover, and "QEMU
        should retrieve a new one when vm reset" (GET_INFLIGHT_FD)."""
        for vring in self.vrings:
            vring.close()
        self.vrings = [VringSetup() for _ in self.vrings]
        self.iotlb = Iotlb()
        self.acked = 0
        self.status = 0
        self._replace_inflight(None)

    def close(self) -> None:
        """Close every fd and mapping this connection holds."""
        with self.device.quiesced():
            self.device.closed(self)
            for vring in self.vrings:
                vring.close()
            for memory in (self.memory, self.log):
                if memory is not None:
                    memory.close()
            self.memory = self.log = None
            self._keep_fd("log_fd", [])
            self._replace_backend_channel(None)
            self._replace_inflight(None)
        os.close(self.miss_fd)
        self.channel.close()

    @property
    def must_close(self) -> str | None:
        """Why the connection must be closed now, found outside a request, or None: the
        front-end cut a region's file short under the rings (they read zeros there now), or
        a back-end request could not be sent or was answered out of turn."""
        if self.memory is not None and self.memory.faulted:
            return "it cut its shared memory short under its rings"
        if self.inflight is not None and self.inflight.faulted:
            return "it cut its inflight area short under its rings"
        return self._failure

    def waiting_since(self) -> float | None:
        """Since when (time.monotonic) the front-end has kept the back-end waiting: a message
        half-sent, output unread, or a back-end request unacknowledged; None while nothing."""
        times = [self.channel.waiting_since(), self._unacked[0][1] if self._unacked else None,
                 self.backend_channel.waiting_since() if self.backend_channel else None]
        return min((t for t in times if t is not None), default=None)

    # --- back-end requests ---

    def send_backend_request(self, request: BackendRequest, payload: Any = NO_PAYLOAD) -> bool:
        """Send the front-end a request on the back-end channel, without waiting; False when
        there is none (BACKEND_REQ not negotiated, or no SET_BACKEND_REQ_FD). With REPLY_ACK
        negotiated the front-end must acknowledge it: `poll_backend_replies` reads the acks,
        and one that does not come within the adapters' deadline closes the connection."""
        if self.backend_channel is None or not self.protocol & ProtocolFeature.BACKEND_REQ:
            return False
        want_ack = bool(self.protocol & ProtocolFeature.REPLY_ACK)
        try:
            self.backend_channel.send_nowait(encode_message(
                request, payload, flags=FLAG_NEED_REPLY if want_ack else 0))
        except (ChannelClosed, PeerTooSlow) as e:
            self._failure = f"its back-end channel failed: {e}"
            return False
        if want_ack:
            self._unacked.append((request, time.monotonic()))
        return True

    def config_changed(self) -> bool:
        """Tell the front-end that the device's config space changed (CONFIG_CHANGE_MSG), when
        CONFIG and BACKEND_REQ were negotiated; it reads the config again with GET_CONFIG."""
        if not self.protocol & ProtocolFeature.CONFIG:
            return False
        return self.send_backend_request(BackendRequest.CONFIG_CHANGE_MSG)

    def poll_backend_replies(self) -> None:
        """Write what waits on the back-end channel and read the acks that have come back,
        without waiting (the adapters call it on every turn)."""
        channel = self.backend_channel
        if channel is None or self._failure:
            return
        try:
            channel.flush()
            while self._unacked:
                received = channel.receive_nowait()
                if received is None:
                    return
                for fd in received.fds:
                    os.close(fd)
                request, _ = self._unacked.popleft()
                reply = received.message
                if reply.header.request != request:
                    raise ProtocolError(f"{reply.header.request.name} answered {request.name}")
                if reply.payload.value:
                    log.error("the front-end failed %s (%d)", request.name, reply.payload.value)
        except (ChannelClosed, PeerTooSlow, ProtocolError) as e:
            self._failure = f"its back-end channel failed: {e}"

    def _set_backend_req_fd(self, payload: Any, fds: list[int]) -> None:
        # The fd stays in `fds` (closed by handle_request) until it proves to be a socket.
        sock = socket.socket(fileno=fds[-1])
        fds.pop()
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            sock.close()
            raise RequestRefused("the back-end channel is not a Unix stream socket")
        self._replace_backend_channel(Channel(sock, requests=BackendRequest, replies=True))

    def _replace_backend_channel(self, channel: Channel | None) -> None:
        if self.backend_channel is not None:
            self.backend_channel.close()
        self.backend_channel = channel
        self._unacked.clear()

    @property
    def packed(self) -> bool:
        """Whether the front-end acked VIRTIO_F_RING_PACKED (every ring is packed)."""
        return bool(self.acked >> VIRTIO_F_RING_PACKED & 1)

    # --- features and status ---

    def _set_features(self, payload: U64, fds: list[int]) -> None:
        if payload.value & ~self.offered:
            raise RequestRefused(f"features {payload.value & ~self.offered:#x} were not offered")
        if (payload.value >> VIRTIO_F_ACCESS_PLATFORM & 1
                and self.protocol & _IOMMU_PROTOCOL != _IOMMU_PROTOCOL):
            raise RequestRefused("ACCESS_PLATFORM without REPLY_ACK and BACKEND_REQ negotiated")
        self.acked = payload.value

    @property
    def iommu(self) -> bool:
        """Whether the front-end acked VIRTIO_F_ACCESS_PLATFORM: ring and buffer addresses
        are IOVAs, translated through the IOTLB (hv.md §5.1)."""
        return bool(self.acked >> VIRTIO_F_ACCESS_PLATFORM & 1)

    def _set_protocol_features(self, payload: U64, fds: list[int]) -> None:
        if payload.value & ~self.protocol_offered:
            raise RequestRefused(f"protocol features {payload.value:#x} were not offered")
        self.protocol = payload.value

    def _set_owner(self, payload: Any, fds: list[int]) -> None:
        self.owner = True

    def _keep_fd(self, name: str, fds: list[int]) -> None:
        _replace_fd(self, name, fds.pop() if fds else None)

    def _set_log_base(self, payload: LogArea, fds: list[int]) -> U64:
        if not self.protocol & ProtocolFeature.LOG_SHMFD:
            raise RequestRefused("SET_LOG_BASE without LOG_SHMFD negotiated")
        if not payload.size:
            raise RequestRefused("an empty dirty log")
        dirty_log = GuestMemory.from_shared([SharedRegion(fds.pop(), 0, payload.size, 0,
                                                          payload.offset)], owns_fds=True)
        old, self.log = self.log, dirty_log
        if old is not None:
            old.close()
        log.info("dirty log: %d bytes, for %d MiB of guest memory", payload.size,
                 payload.size * 8 * 4096 >> 20)
        return U64(0)

    def _set_status(self, payload: U64, fds: list[int]) -> None:
        self.status = payload.value & 0xFF

    # --- inflight tracking ---

    def _inflight_limits(self) -> dict[str, int]:
        if not self.protocol & ProtocolFeature.INFLIGHT_SHMFD:
            raise RequestRefused("an inflight area without INFLIGHT_SHMFD negotiated")
        return {"max_queues": len(self.vrings), "max_queue_size": self.device.max_queue_size}

    def _get_inflight_fd(self, payload: Inflight, fds: list[int]) -> _WithFds:
        # The back-end allocates the area; the front-end maps what it is given and keeps it.
        area = InflightArea.allocate(payload, self.packed, **self._inflight_limits())
        self._replace_inflight(area)
        log.info("inflight area: %d bytes for %d %s queues of %d", area.description.mmap_size,
                 payload.num_queues, "packed" if self.packed else "split", payload.queue_size)
        return _WithFds(area.description, (area.fd,))

    def _set_inflight_fd(self, payload: Inflight, fds: list[int]) -> None:
        area = InflightArea.from_fd(fds, payload, **self._inflight_limits())
        self._replace_inflight(area)
        log.info("inflight area handed back: %d bytes for %d queues of %d", payload.mmap_size,
                 payload.num_queues, payload.queue_size)

    def _replace_inflight(self, area: InflightArea | None) -> None:
        # Rings started on the old area keep recording in it (their queues hold its mapping)
        # until they stop; rings started from now on use the new one.
        if self.inflight is not None:
            self.inflight.close()
        self.inflight = area

    def _track_inflight(self, index: int, queue: DeviceQueue) -> None:
        # The ring's queue records in its region of the area, going on from what it holds.
        region = self.inflight.region(index, self.packed)
        if region is None:
            log.warning("vring %d: no region in the inflight area; in flight requests are "
                        "not recorded", index)
            return
        before = self._ring_base(queue)
        resubmit = queue.track_inflight(region)
        if resubmit:
            log.info("vring %d: %d requests in flight before the restart go first", index,
                     resubmit)
        if self._ring_base(queue) != before:
            log.info("vring %d: going on from the inflight region's position %#x, not %#x",
                     index, self._ring_base(queue), before)

    def _get_config(self, payload: DeviceConfig, fds: list[int]) -> DeviceConfig:
        size = len(payload.data)
        data = self.device.read_config(payload.offset, size)[:size]
        return DeviceConfig(payload.offset, payload.flags, data.ljust(size, b"\0"))

    def _set_config(self, payload: DeviceConfig, fds: list[int]) -> None:
        self.device.write_config(payload.offset, payload.data)

    # --- memory ---

    def _set_mem_table(self, payload: MemoryTable, fds: list[int]) -> None:
        shared = [SharedRegion(fd, r.guest_phys_addr, r.size, r.user_addr, r.mmap_offset)
                  for fd, r in zip(fds, payload.regions, strict=True)]
        fds.clear()  # from_shared owns them now, and closes them itself if it fails
        memory = GuestMemory.from_shared(shared, owns_fds=True)
        # Started rings move to the new mapping where they stood. A ring the new table does
        # not hold refuses the request, and the old table and rings go on as they were.
        try:
            moved = {index: self._new_queue(index, memory, self._ring_base(vring.queue))
                     for index, vring in enumerate(self.vrings) if vring.started}
        except BaseException:
            memory.close()
            raise
        old, self.memory = self.memory, memory
        self.iotlb.remap(memory)
        self._region_adds.clear()
        for index, queue in moved.items():
            self.vrings[index].queue = queue
        if old is not None:
            old.close()
        log.info("memory table: %s", memory)

    def _add_mem_reg(self, payload: MemoryRegion, fds: list[int]) -> None:
        if self.memory is None:
            self.memory = GuestMemory()
        gpa = payload.guest_phys_addr
        if self._already_mapped(payload, fds[0]):
            # QEMU keeps one memory table per vhost device, and a net device with several
            # queue pairs is a vhost device per pair on one connection: each adds the same
            # regions, and each removes them again. A copy is counted, not mapped twice.
            self._region_adds[gpa] = self._region_adds.get(gpa, 1) + 1
            return
        if len(self.memory.regions) >= self.max_mem_slots:
            raise RequestRefused(f"all {self.max_mem_slots} memory slots are in use")
        self.memory.add_region(SharedRegion(fds[0], payload.guest_phys_addr, payload.size,
                                            payload.user_addr, payload.mmap_offset))
        fds.clear()  # mapped: the memory owns the fd
        self.iotlb.remap(self.memory)

    def _rem_mem_reg(self, payload: MemoryRegion, fds: list[int]) -> None:
        # No fd should come; one may, and handle_request closes it.
        if self.memory is None:
            raise RequestRefused("no memory is mapped")
        gpa = payload.guest_phys_addr
        if self._region_adds.get(gpa, 1) > 1:
            self._region_adds[gpa] -= 1
            return
        self.memory.remove_region(gpa)
        self._region_adds.pop(gpa, None)
        self.iotlb.remap(self.memory)

    def _already_mapped(self, region: MemoryRegion, fd: int) -> bool:
        # The same range of the same file at the same addresses as a mapped region.
        new = os.fstat(fd)
        for mapped in self.memory.regions:
            if (mapped.guest_phys_addr, mapped.size, mapped.user_addr, mapped.mmap_offset) == (
                    region.guest_phys_addr, region.size, region.user_addr, region.mmap_offset):
                old = os.fstat(mapped.fd)
                return (old.st_dev, old.st_ino) == (new.st_dev, new.st_ino)
        return False

    # --- vrings ---

    def _vring(self, index: int) -> VringSetup:
        if not 0 <= index < len(self.vrings):
            raise RequestRefused(f"vring {index} does not exist (the device has "
                                 f"{len(self.vrings)})")
        return self.vrings[index]

    def _set_vring_num(self, payload: VringState, fds: list[int]) -> None:
        num = payload.num
        if not 1 <= num <= self.device.max_queue_size or (not self.packed and num & (num - 1)):
            raise RequestRefused(f"vring size {num} is not allowed")
        self._vring(payload.index).num = num

    def _set_vring_addr(self, payload: VringAddress, fds: list[int]) -> None:
        self._vring(payload.index).address = payload

    def _set_vring_base(self, payload: VringState, fds: list[int]) -> None:
        self._vring(payload.index).base = payload.num

    def _get_vring_base(self, payload: VringState, fds: list[int]) -> VringState:
        vring = self._vring(payload.index)
        if vring.started:
            self.device.stopping(self, payload.index)
            vring.base = self._ring_base(vring.queue)
            vring.queue = None
        vring.awaiting_translation = False
        vring.missing = None
        return VringState(payload.index, vring.base)

    def _set_vring_kick(self, payload: VringFile, fds: list[int]) -> None:
        vring = self._vring(payload.index)
        kick = _take_eventfd(fds, "kick")
        if vring.started:
            # A new kick fd for a running ring (QEMU after a vhost restart without stopping
            # it): go on from where the ring stands, not from the base it was started with.
            vring.base = self._ring_base(vring.queue)
        try:
            self._start(payload.index)
        except BaseException:
            if kick is not None:
                os.close(kick)
            raise
        vring.replace_fd("kick", kick)

    def _set_vring_fd(self, payload: VringFile, fds: list[int], name: str) -> None:
        vring = self._vring(payload.index)
        vring.replace_fd(name, _take_eventfd(fds, name))

    def _set_vring_enable(self, payload: VringState, fds: list[int]) -> None:
        self._vring(payload.index).enabled = bool(payload.num)

    def _start(self, index: int) -> None:
        vring = self.vrings[index]
        try:
            vring.queue = self._new_queue(index, self.memory, vring.base)
        except _Untranslated as e:
            # hv.md §5.3: ask for the translations; the ring starts once they have come.
            log.info("vring %d: %s; waiting for the front-end's IOTLB updates", index, e)
            vring.awaiting_translation = True
            self._ask_translation(vring, e.iova, IotlbAccess.READ_WRITE)
            return
        vring.awaiting_translation = False
        vring.missing = None
        # Without PROTOCOL_FEATURES a ring is enabled as soon as it starts.
        if not self.acked >> VHOST_USER_F_PROTOCOL_FEATURES & 1:
            vring.enabled = True

    def _new_queue(self, index: int, memory: GuestMemory | None, base: int) -> DeviceQueue:
        # Vring `index` laid over `memory`, going on from `base` (as SET_VRING_BASE gives it).
        vring = self.vrings[index]
        if memory is None or vring.address is None or not vring.num:
            raise RequestRefused(f"vring {index} started before its memory, size and addresses")
        addresses = self._ring_addresses(vring, memory)
        options = {"event_idx": bool(self.acked >> VIRTIO_RING_F_EVENT_IDX & 1),
                   "indirect": bool(self.acked >> VIRTIO_RING_F_INDIRECT_DESC & 1)}
        if self.packed:
            # Bits 0-14: the next avail slot, bit 15 its wrap counter (a new ring: 0x8000). The
            # used position starts there too unless bits 16-31 carry it.
            queue = PackedDeviceQueue(memory, vring.num, addresses, **options)
            avail = base & 0xFFFF
            used = base >> 16 or avail
            queue.avail_state = (avail & 0x7FFF, avail >> 15)
            queue.used_state = (used & 0x7FFF, used >> 15)
        else:
            queue = SplitDeviceQueue(memory, vring.num, addresses, **options)
            base &= 0xFFFF
            # §2.7.8: used.idx, the ring's own record of how far this device got.
            used = int(memory.view(addresses.device + 2, 2).view("<u2")[0])
            if used != base and self.device.uses_buffers_in_order:
                # A front-end that lost its back-end (DPDK's virtio-user after a reconnect)
                # may give base 0 for a ring already in use. A device that uses buffers in
                # the order it takes them had used every buffer before used.idx and none
                # after, so that is where to go on, as DPDK's vhost and libvhost-user do.
                log.warning("vring %d: base %d but the used ring is at %d; resuming there",
                            index, base, used)
                base = used
            queue.last_avail_idx = base
            queue.used_idx = base
        if self.inflight is not None and self.protocol & ProtocolFeature.INFLIGHT_SHMFD:
            self._track_inflight(index, queue)
        if self.iommu:
            queue.use_iotlb(self.iotlb.readable, self.iotlb.writable, self.miss_fd)
        return queue

    def _ring_addresses(self, vring: VringSetup, memory: GuestMemory) -> RingAddresses:
        # The guest-physical addresses of the ring's areas, from the front-end addresses
        # SET_VRING_ADDR gave or, with ACCESS_PLATFORM, from IOVAs (hv.md §5.1). An area is
        # translated whole, for reading and writing, as DPDK's vring_translate asks, so that
        # the core can go on indexing it unchecked; raises _Untranslated at the first IOVA the
        # IOTLB lacks.
        a = vring.address
        areas = (a.desc, a.avail, a.used)
        if self.iommu:
            sizes = ring_area_sizes(vring.num, self.packed)
            user = []
            for iova, size in zip(areas, sizes, strict=True):
                uaddr = self.iotlb.user_address(iova, size, IotlbAccess.READ_WRITE)
                if uaddr is None:
                    raise _Untranslated(self.iotlb.first_missing(iova, size,
                                                                 IotlbAccess.READ_WRITE))
                user.append(uaddr)
            vring.ring_iovas = tuple(zip(areas, sizes, strict=True))
            areas = tuple(user)
        to_guest = memory.user_to_guest
        return RingAddresses(*(to_guest(uaddr) for uaddr in areas))

    # --- the IOTLB (VIRTIO_F_ACCESS_PLATFORM; QEMU docs/interop/vhost-user.rst, "IOMMU
    # support"; hv.md §5) ---

    def _iotlb_msg(self, payload: IotlbMessage, fds: list[int]) -> None:
        if not self.iommu:
            raise RequestRefused("IOTLB_MSG without ACCESS_PLATFORM negotiated")
        if payload.type == IotlbType.UPDATE:
            self.iotlb.update(payload, self.memory)
            for index, vring in enumerate(self.vrings):
                if vring.awaiting_translation:
                    self._start(index)
        elif payload.type == IotlbType.INVALIDATE:
            self.iotlb.invalidate(payload.iova, payload.size)
            end = payload.iova + payload.size
            for index, vring in enumerate(self.vrings):
                if vring.started and any(iova < end and payload.iova < iova + size
                                         for iova, size in vring.ring_iovas):
                    # DPDK's vring_invalidate: the ring's cached addresses went with the
                    # mapping, and it is not served until they are translated again.
                    log.info("vring %d: its areas' mapping was invalidated", index)
                    vring.base = self._ring_base(vring.queue)
                    vring.queue = None
                    self._start(index)
        else:
            raise RequestRefused(f"a front-end sends no IOTLB {payload.type.name}")

    def _ask_translation(self, vring: VringSetup, iova: int, perm: int) -> None:
        # hv.md §5.3: a miss on the back-end channel, not sent again while one for its page
        # is pending; size 0, the front-end answers with the page (hv.md §8.17). A pop may
        # have recorded the miss just before the update came: that one is not asked again.
        if self.iotlb.user_address(iova, 1, perm) is not None:
            return
        vring.missing = (iova, perm)
        if self.iotlb.ask(iova, perm):
            self.send_backend_request(BackendRequest.IOTLB_MSG, IotlbMessage(
                iova, 0, 0, IotlbAccess(perm), IotlbType.MISS))

    def poll_iotlb(self) -> None:
        """Ask the front-end for the translations the rings' pops stopped at, and give up a
        ring whose miss has gone unanswered for `iotlb_miss_deadline` seconds: it is logged
        and not served again until the front-end sets it up again. The adapters call it on
        every turn, without waiting."""
        if not self.iommu:
            return
        try:
            os.eventfd_read(self.miss_fd)
        except BlockingIOError:
            pass
        for index, vring in enumerate(self.vrings):
            miss = vring.queue.take_miss() if vring.queue is not None else None
            if miss is not None:
                self._ask_translation(vring, *miss)
            if vring.missing is None:
                continue
            waited = self.iotlb.waited(*vring.missing)
            if waited is None:
                vring.missing = None
            elif waited >= self.iotlb_miss_deadline:
                self._give_up(index, vring)

    def _give_up(self, index: int, vring: VringSetup) -> None:
        iova, perm = vring.missing
        log.error("vring %d: no IOTLB update for %#x (%s) within %.1f s; the ring is not "
                  "served until it is set up again", index, iova, IotlbAccess(perm).name,
                  self.iotlb_miss_deadline)
        self.iotlb.forget_miss(iova, perm)
        with self.device.quiesced():
            if vring.queue is not None:
                vring.base = self._ring_base(vring.queue)
            vring.queue = None
            vring.awaiting_translation = False
            vring.missing = None
            self.device.rings_changed(self)

    def _ring_base(self, queue: DeviceQueue) -> int:
        # Split: the next avail index. Packed: bits 0-14 the next avail slot and bit 15 its
        # wrap counter (all DPDK reads), bits 16-30 the next used slot and bit 31 its wrap
        # counter, as QEMU reads a packed ring's state back from GET_VRING_BASE.
        if isinstance(queue, PackedDeviceQueue):
            (avail, avail_wrap), (used, used_wrap) = queue.avail_state, queue.used_state
            return avail | avail_wrap << 15 | used << 16 | used_wrap << 31
        return queue.last_avail_idx
