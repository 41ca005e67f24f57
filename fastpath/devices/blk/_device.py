"""The virtio-blk device (virtio 1.2 §5.2) behind a vhost-user back-end: what it offers, its
config space, and the request queues its data plane serves.

Virtqueue k is request queue k (§5.2.2): one without MQ negotiated, `num_queues` with it. A
queue is served (a `BlkQueue` in `served`) while its ring is started and enabled. Requests
are executed asynchronously, so a ring may stop with requests in flight: `on_stop` lets the
host finish them (reap the executor's completions into the queue) before GET_VRING_BASE
reports where the ring stands.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fastpath.devices.blk._layout import (
    CONFIG_DTYPE,
    SECTOR_SIZE,
    VIRTIO_BLK_F_BLK_SIZE,
    VIRTIO_BLK_F_CONFIG_WCE,
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_TOPOLOGY,
    VIRTIO_BLK_F_WRITE_ZEROES,
    WRITEBACK_OFFSET,
)
from fastpath.devices.blk._queue import BlkDisk, BlkQueue
from fastpath.errors import RequestRefused
from fastpath.vhost_user import ENGINE_PROTOCOL_FEATURES, Backend, Device, Gate
from fastpath.vhost_user.wire import ProtocolFeature
from fastpath.vring import (
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    DeviceQueue,
)

log = logging.getLogger("fastpath.vhost_user")

MAX_QUEUES = 64

BLK_FEATURES = sum(1 << bit for bit in (
    VIRTIO_F_VERSION_1, VIRTIO_F_RING_PACKED, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_CONFIG_WCE,
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES,
))
"""What every virtio-blk device offers; RO and MQ are added when they apply. Not GEOMETRY
(nothing to say that a driver needs), nor IN_ORDER (requests complete as the executor
finishes them)."""

BLK_PROTOCOL_FEATURES = ENGINE_PROTOCOL_FEATURES & ~(ProtocolFeature.LOG_SHMFD
                                                     | ProtocolFeature.MTU)
"""The engine's protocol features less dirty logging (the request path logs no writes, so
migration is not offered) and MTU (a net request). CONFIG stays: QEMU's vhost-user-blk refuses a
back-end without it, as it reads the config space from the back-end."""


def blk_config(disk: BlkDisk, num_queues: int, writeback: int) -> bytes:
    """The config space (§5.2.4) of `disk` with `num_queues` queues and that cache mode."""
    config = np.zeros(1, dtype=CONFIG_DTYPE)[0]
    config["capacity"] = disk.sectors
    config["size_max"] = disk.size_max
    config["seg_max"] = disk.seg_max
    config["blk_size"] = disk.block_size
    config["min_io_size"] = 1
    config["writeback"] = writeback
    config["num_queues"] = num_queues
    config["max_discard_sectors"] = disk.max_discard_sectors
    config["max_discard_seg"] = 1
    config["discard_sector_alignment"] = disk.block_size // SECTOR_SIZE
    config["max_write_zeroes_sectors"] = disk.max_write_zeroes_sectors
    config["max_write_zeroes_seg"] = 1
    config["write_zeroes_may_unmap"] = disk.write_zeroes_may_unmap
    return config.tobytes()


@dataclass
class VirtioBlk(Device):
    """One front-end's virtio-blk device over `disk`: hooks for its `Backend`, and the request
    queues a data plane serves (`served[k]` for virtqueue k, None when not served).

    A started ring keeps its `BlkQueue` while it is disabled: requests taken before still
    complete into it. `draining` lists the queues the data plane no longer takes from that
    still have requests in flight, for the host to complete them through: disabled rings,
    and queues let go when their ring stopped or moved, detached from it (`BlkQueue.detach`)
    and kept, iovecs and guest memory valid, until the executor has completed them.

    `on_change(device)` runs (quiesced) whenever the served queues change; `on_stop(device,
    k, queue)` when ring k is about to stop (GET_VRING_BASE, quiesced) with requests in flight
    in `queue`, for the host to complete them first, so that the ring's base covers them.
    Requests left in flight then are never used: only the driver's recovery (a reset) takes
    them back.
    """

    # Each ring slot owns an in-flight row and a request's iovecs (4 KiB at seg_max 126): as
    # QEMU (VIRTQUEUE_MAX_SIZE), no ring of more than 1024 entries.
    max_queue_size = 1024
    # Requests complete out of order: a back-end restarted under a running guest resubmits
    # what was in flight from the inflight region the front-end keeps (INFLIGHT_SHMFD).
    tracks_inflight = True

    gate: Gate
    disk: BlkDisk
    num_queues: int = 1
    max_burst: int = 32
    on_change: Callable[[VirtioBlk], None] | None = None
    on_stop: Callable[[VirtioBlk, int, BlkQueue], None] | None = None
    served: list[BlkQueue | None] = field(default_factory=list)
    # Counters of queues already let go, per virtqueue; `counters()` adds the live ones.
    retired: list[dict[str, int]] = field(default_factory=list)
    _queues: dict[int, BlkQueue] = field(default_factory=dict)   # of started rings
    _let_go: list[tuple[int, BlkQueue]] = field(default_factory=list)   # with requests in flight
    _acked: int = 0
    # False once the front-end's connection ended (`closed`).
    connected: bool = True
    _writeback: int | None = None   # the driver's choice (SET_CONFIG) since features were set

    def __post_init__(self):
        if not 1 <= self.num_queues <= MAX_QUEUES:
            raise ValueError(f"queues must be 1 to {MAX_QUEUES}")
        self.served = [None] * self.num_queues
        self.retired = [{} for _ in range(self.num_queues)]

    @property
    def features(self) -> int:
        """The virtio features the device offers."""
        return (BLK_FEATURES | (1 << VIRTIO_BLK_F_RO if self.disk.read_only else 0)
                | (1 << VIRTIO_BLK_F_MQ if self.num_queues > 1 else 0))

    @property
    def protocol_features(self) -> int:
        """The vhost-user protocol features the device offers."""
        return BLK_PROTOCOL_FEATURES

    @property
    def queues(self) -> int:
        """Virtqueues: the request queues."""
        return self.num_queues

    @property
    def writeback(self) -> int:
        """The cache mode (§5.2.5): 1 writeback, 0 writethrough. Until the driver chooses
        (CONFIG_WCE), writeback when FLUSH was negotiated: without it the driver cannot
        flush, and §5.2.6.2 wants every write stable when it completes. Before features are
        negotiated, writeback, as FLUSH is offered: QEMU reads the config space once, then,
        and its guest runs the disk in the mode read, so the device must be in that mode too
        (a device that reported writethrough there and then ran writeback would see no flush
        from a guest that believes every write already stable)."""
        if self._writeback is not None:
            return self._writeback
        if not self._acked:
            return 1
        return self._acked >> VIRTIO_BLK_F_FLUSH & 1

    def backend(self, channel) -> Backend:
        """A back-end engine for this device on a new connection."""
        return Backend(channel, self)

    # --- Device ---

    def read_config(self, offset: int, size: int) -> bytes:
        """The config space (§5.2.4)."""
        return blk_config(self.disk, self.num_queues, self.writeback)[offset:offset + size]

    def write_config(self, offset: int, data: bytes) -> None:
        """SET_CONFIG: only the writeback byte, 0 or 1, once CONFIG_WCE is negotiated."""
        if not self._acked >> VIRTIO_BLK_F_CONFIG_WCE & 1:
            raise RequestRefused("SET_CONFIG without VIRTIO_BLK_F_CONFIG_WCE negotiated")
        if offset != WRITEBACK_OFFSET or len(data) != 1 or data[0] > 1:
            raise RequestRefused(f"config write of {len(data)} bytes at {offset}: only the "
                                 f"writeback byte ({WRITEBACK_OFFSET}) takes 0 or 1")
        self._writeback = data[0]
        for queue in self._queues.values():
            queue.writethrough = not self._writeback

    def quiesced(self):
        """Hold the data plane's gate."""
        return self.gate.control()

    def rings_changed(self, backend: Backend) -> None:
        """Pick up started, stopped, enabled and disabled rings, call fds and features."""
        if backend.acked != self._acked:
            self._acked = backend.acked
            self._writeback = None
        usable = self.num_queues if self._acked >> VIRTIO_BLK_F_MQ & 1 else 1
        keepalive = backend.memory.mappings if backend.memory is not None else ()
        for index in range(self.num_queues):
            setup = backend.vrings[index]
            queue = self._blk_queue(index, setup.queue if index < usable else None,
                                    setup.call, keepalive)
            self.served[index] = queue if setup.enabled else None
        if self.on_change:
            self.on_change(self)

    def stopping(self, backend: Backend, index: int) -> None:
        """GET_VRING_BASE: the host completes the ring's requests in flight first."""
        queue = self._queues.get(index)
        if queue is None or not queue.in_flight:
            return
        if self.on_stop is not None:
            self.on_stop(self, index, queue)
        if queue.in_flight:
            log.error("vring %d stops with %d requests in flight: they are never used",
                      index, queue.in_flight)

    def closed(self, backend: Backend) -> None:
        """Let go of every queue."""
        for index in list(self._queues):
            self._retire(index)
        self.served = [None] * self.num_queues
        self.connected = False
        if self.on_change:
            self.on_change(self)

    # --- counters ---

    @property
    def draining(self) -> list[tuple[int, BlkQueue]]:
        """(virtqueue, queue) for each queue not served that has requests in flight."""
        self._drop_drained()
        return [(index, queue) for index, queue in self._queues.items()
                if queue.in_flight and self.served[index] is not queue] + self._let_go

    def counters(self) -> list[dict[str, int]]:
        """Per request queue, everything counted so far (see `BlkQueue.counters`)."""
        self._drop_drained()
        totals = [dict(retired) for retired in self.retired]
        for index, queue in list(self._queues.items()) + self._let_go:
            for name, count in queue.counters.items():
                totals[index][name] = totals[index].get(name, 0) + count
        return totals

    def _blk_queue(self, index: int, queue: DeviceQueue | None, call: int | None,
                   keepalive: tuple) -> BlkQueue | None:
        held = self._queues.get(index)
        if held is not None and held.queue is not queue:
            self._retire(index)
            held = None
        if queue is None:
            return None
        if held is None:
            held = BlkQueue(queue, self.disk, max_burst=self.max_burst, keepalive=keepalive)
            self._queues[index] = held
        # Regions come and go (ADD_MEM_REG, REM_MEM_REG) under a running ring: requests in
        # flight keep the mappings their buffers were taken from until they complete.
        held.keepalive = (tuple({*held.keepalive, *keepalive}) if held.in_flight
                          else keepalive)
        held.call_fd = -1 if call is None else call
        held.writethrough = not self.writeback
        return held

    def _retire(self, index: int) -> None:
        queue = self._queues.pop(index)
        if queue.in_flight:
            # The ring is no longer ours: their completions must not write to it, but the
            # executor holds their iovecs until it completes them.
            log.warning("vring %d let go with %d requests in flight: they will not be used",
                        index, queue.in_flight)
            queue.detach()
            self._let_go.append((index, queue))
        else:
            self._fold(index, queue)
        self._drop_drained()

    def _drop_drained(self) -> None:
        drained = [(index, queue) for index, queue in self._let_go if not queue.in_flight]
        self._let_go = [(index, queue) for index, queue in self._let_go if queue.in_flight]
        for index, queue in drained:
            self._fold(index, queue)

    def _fold(self, index: int, queue: BlkQueue) -> None:
        retired = self.retired[index]
        for name, count in queue.counters.items():
            retired[name] = retired.get(name, 0) + count
