"""`BlkFrontend`: a virtio-blk driver on the front-end side of vhost-user, for tests, tools and
benchmarks that drive any vhost-user-blk back-end (qemu-storage-daemon, fastpath's own).

It negotiates features and protocol features, reads the config space (GET_CONFIG), lays its
rings, request control blocks, indirect tables and data buffers out in its own memfd-backed
`GuestMemory`, shares that memory and starts every request queue. Each queue has a compiled
driver (`BlkDriverQueue`: a burst of requests in, a burst of completions out) and a pool of
data buffers; `read`, `write`, `flush`, `discard`, `write_zeroes` and `get_id` are synchronous
helpers over them, a burst per call.

With INFLIGHT_SHMFD offered it survives a back-end restart as QEMU's vhost-user-blk does: it
takes an inflight area from the back-end at setup and keeps it; `reconnect` hands it to the
back-end that takes over the socket, whose rings resubmit what the old one had in flight, so
requests submitted before the restart complete after it.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import time
from dataclasses import dataclass

import numpy as np

from fastpath.devices.blk._driver import (
    DRIVER_COMPLETION,
    DRIVER_REQUEST,
    INDIRECT_TABLE_BYTES,
    Q_KICK,
    SLOT_BYTES,
    STATUS_NOT_WRITTEN,
    BlkConfig,
    BlkDriverQueue,
)
from fastpath.devices.blk._layout import (
    CONFIG_SIZE,
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
    VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
)
from fastpath.errors import BackendRefused, FastpathError
from fastpath.hv import GuestMemory
from fastpath.vhost_user import Frontend
from fastpath.vhost_user.wire import DeviceConfig, FrontendRequest, Inflight, ProtocolFeature
from fastpath.vring import (
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    PackedDriverQueue,
    SplitDriverQueue,
    ring_bytes,
    ring_layout,
)

log = logging.getLogger("fastpath.vhost_user")

PAGE = 4096
RING_BASE = 0x1000
# virtio 1.2 §2.1 device status: ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK.
STATUS_RUNNING = 0x1 | 0x2 | 0x8 | 0x4
# virtio 1.2 §2.8: a packed ring starts at slot 0 with its wrap counters set (bit 15).
PACKED_RING_START = 0x8000
# What the front-end uses of the protocol: CONFIG above all, without which there is no
# capacity to read (QEMU's vhost-user-blk refuses such a back-end too); INFLIGHT_SHMFD to
# keep requests in flight across a back-end restart.
BLK_FRONTEND_PROTOCOL_FEATURES = (ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK
                                  | ProtocolFeature.CONFIG | ProtocolFeature.STATUS
                                  | ProtocolFeature.INFLIGHT_SHMFD)
DEFAULT_MEMORY_SIZE = 16 << 20

_STATUS_ERRORS = {VIRTIO_BLK_S_IOERR: (errno.EIO, "I/O error (VIRTIO_BLK_S_IOERR)"),
                  VIRTIO_BLK_S_UNSUPP: (errno.EOPNOTSUPP, "unsupported (VIRTIO_BLK_S_UNSUPP)"),
                  STATUS_NOT_WRITTEN: (errno.EIO, "used without a status byte written")}


def blk_driver_features(*, packed: bool = False, queues: int = 1) -> int:
    """The virtio features a virtio-blk driver asks for: the ring features (VERSION_1,
    EVENT_IDX, INDIRECT_DESC, RING_PACKED as wanted), every blk feature whose field or request
    it uses, RO (a driver must know), and MQ for more than one queue."""
    return sum(1 << bit for bit in (
        VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_RO,
        VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_CONFIG_WCE,
        VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES,
    )) | (1 << VIRTIO_F_RING_PACKED if packed else 0) | (1 << VIRTIO_BLK_F_MQ if queues > 1
                                                         else 0)


@dataclass(frozen=True)
class _Layout:
    """Guest-physical places, from RING_BASE: each queue's ring (a page-aligned stretch each),
    then each queue's control blocks and indirect tables, then from the next MiB to the end
    of memory the data area, cut into a pool per queue."""

    queues: int
    queue_size: int
    packed: bool
    memory_size: int

    def ring(self, index: int) -> int:
        return RING_BASE + index * _round_up(ring_bytes(self.queue_size, self.packed), PAGE)

    def blocks(self, index: int) -> int:
        return self.ring(self.queues) + index * self._per_queue

    def tables(self, index: int) -> int:
        return self.blocks(index) + _round_up(self.queue_size * SLOT_BYTES, PAGE)

    @property
    def data(self) -> int:
        return _round_up(self.blocks(self.queues), 1 << 20)

    @property
    def pool_size(self) -> int:
        return (self.memory_size - self.data) // self.queues // PAGE * PAGE

    def pool(self, index: int) -> int:
        return self.data + index * self.pool_size

    @property
    def _per_queue(self) -> int:
        return (_round_up(self.queue_size * SLOT_BYTES, PAGE)
                + _round_up(self.queue_size * INDIRECT_TABLE_BYTES, PAGE))


class BlkFrontend:
    """A virtio-blk device on the vhost-user back-end at `socket_path`, driven from the
    driver's side; with `server`, this side listens there for a back-end that connects.

    Asks for `features` (by default `blk_driver_features(packed=packed, queues=queues)`) and
    raises BackendRefused when the back-end refuses VERSION_1, a packed ring that was asked
    for, the CONFIG protocol feature, or `queues` request queues. Every queue has a ring of
    `queue_size` entries and a pool of data buffers, the rest of `memory_size` bytes of guest
    memory. `queues[q]` is queue q's `BlkDriverQueue`; `pool(q)` its buffers. Synchronous
    helpers raise TimeoutError when the device completes nothing for `timeout` seconds.
    `reconnect` takes up a back-end restarted on the same socket.
    """

    def __init__(self, socket_path: str, *, queues: int = 1, queue_size: int = 128,
                 packed: bool = False, memory_size: int = DEFAULT_MEMORY_SIZE,
                 features: int | None = None, server: bool = False,
                 connect_timeout: float = 10.0, timeout: float = 10.0):
        if queues < 1:
            raise ValueError("a virtio-blk device has at least one request queue")
        self.timeout = timeout
        self.memory: GuestMemory | None = None
        self.queues: list[BlkDriverQueue] = []
        self._layout: _Layout | None = None
        self._calls: list[int] = []
        self._rings = []
        # The inflight area the first back-end gave (INFLIGHT_SHMFD): its description and fd.
        self._inflight: tuple[Inflight, int] | None = None
        self._connection = {"path": socket_path, "connect_timeout": connect_timeout,
                            "server": server}
        self.frontend = Frontend(socket_path, connect_timeout=connect_timeout, server=server)
        try:
            self._start(socket_path, queues, queue_size, packed, memory_size,
                        blk_driver_features(packed=packed, queues=queues) if features is None
                        else features)
        except BaseException:
            self.close()
            raise

    def _start(self, path: str, queues: int, queue_size: int, packed: bool,
               memory_size: int, wanted: int) -> None:
        acked = self.frontend.negotiate(wanted, BLK_FRONTEND_PROTOCOL_FEATURES)
        for bit, name in ((VIRTIO_F_VERSION_1, "VERSION_1"),
                          (VIRTIO_F_RING_PACKED, "RING_PACKED")):
            if wanted >> bit & 1 and not acked >> bit & 1:
                raise BackendRefused(f"the back-end at {path} does not offer {name}")
        if not self.frontend.protocol & ProtocolFeature.CONFIG:
            raise BackendRefused(f"the back-end at {path} does not offer the CONFIG protocol "
                                 "feature: a virtio-blk driver cannot read its capacity")
        raw = self.frontend.request(FrontendRequest.GET_CONFIG,
                                    DeviceConfig(0, 0, bytes(CONFIG_SIZE))).data
        self.config = BlkConfig(raw, acked)
        served = min(self.config.num_queues, self.frontend.queue_num() or 1)
        if queues > served:
            raise BackendRefused(f"the back-end at {path} serves {served} request queues, not "
                                 f"{queues}")
        self.packed = bool(acked >> VIRTIO_F_RING_PACKED & 1)
        layout = _Layout(queues, queue_size, self.packed, memory_size)
        if layout.pool_size < PAGE:
            raise ValueError(f"{memory_size} bytes of guest memory leave no data buffers for "
                             f"{queues} queues of {queue_size}: give it at least "
                             f"{layout.data + queues * PAGE}")
        self._layout = layout
        self.memory = GuestMemory([(0, memory_size)])
        if self.frontend.protocol & ProtocolFeature.INFLIGHT_SHMFD:
            # QEMU asks for the area before the memory table and keeps it for the device's
            # life (vhost_user_blk_start).
            self._inflight = self.frontend.get_inflight_fd(queues, queue_size)
        self.frontend.set_memory(self.memory)
        event_idx = bool(acked >> VIRTIO_RING_F_EVENT_IDX & 1)
        indirect = bool(acked >> VIRTIO_RING_F_INDIRECT_DESC & 1)
        ring_class = PackedDriverQueue if self.packed else SplitDriverQueue
        for index in range(queues):
            rings = ring_layout(queue_size, layout.ring(index), self.packed)
            self._rings.append(rings)
            ring = ring_class(self.memory, queue_size, rings, event_idx=event_idx,
                              indirect=indirect)
            vring = self.frontend.start_vring(index, queue_size, self.memory, rings,
                                              base=PACKED_RING_START if self.packed else 0)
            self._calls.append(vring.call)
            self.queues.append(BlkDriverQueue(
                self.memory, ring, vring.kick, self.config, blocks=layout.blocks(index),
                tables=layout.tables(index) if indirect else 0,
                data=(layout.data, memory_size)))
        self.frontend.set_status(STATUS_RUNNING)

    def reconnect(self) -> None:
        """Take up the back-end that now serves the socket after the last one died: the
        handshake again, the kept inflight area handed over, every ring started where the
        old back-end left it. Requests in flight stay so: the new back-end resubmits those
        the area records, and the rest are still on the ring for it. Raises BackendRefused
        when the new back-end negotiates other features than the old one."""
        old = self.frontend
        # The old connection is dead: nothing to stop, only fds to close.
        old.close()
        self.frontend = Frontend(self._connection["path"],
                                 connect_timeout=self._connection["connect_timeout"],
                                 server=self._connection["server"])
        acked = self.frontend.negotiate(self.features, BLK_FRONTEND_PROTOCOL_FEATURES)
        if acked != old.features or self.frontend.protocol != old.protocol:
            raise BackendRefused(f"the back-end at {self.frontend.path} after the restart "
                                 f"acks features {acked:#x} and protocol features "
                                 f"{self.frontend.protocol:#x}, not {old.features:#x} and "
                                 f"{old.protocol:#x}")
        if self._inflight is not None:
            self.frontend.set_inflight_fd(*self._inflight)
        self.frontend.set_memory(self.memory)
        for index, (driver, rings) in enumerate(zip(self.queues, self._rings, strict=True)):
            vring = self.frontend.start_vring(index, driver.queue.size, self.memory, rings,
                                              base=self._restart_base(rings))
            self._calls[index] = vring.call
            driver.state[Q_KICK] = vring.kick
            # Requests added while no back-end listened were kicked into the void.
            vring.kick_backend()
        self.frontend.set_status(STATUS_RUNNING)

    def _restart_base(self, rings) -> int:
        if self.packed:
            # What QEMU 7.2 sends after a crash: the base from the last GET_VRING_BASE, here
            # the ring's start, stale. It cannot read a packed ring's position back (its
            # restore_last_avail_idx is a no-op for packed): the back-end takes it from the
            # inflight area.
            return PACKED_RING_START
        # QEMU's virtio_queue_restore_last_avail_idx: the used index, the last the device
        # is known to have finished; the area names the requests in flight behind it.
        return int(self.memory.view(rings.device + 2, 2).view("<u2")[0])

    # --- what the device is ---

    @property
    def features(self) -> int:
        """The virtio features acked."""
        return self.config.features

    @property
    def capacity(self) -> int:
        """The disk's size in 512-byte sectors (§5.2.4)."""
        return self.config.capacity

    @property
    def size(self) -> int:
        """The disk's size in bytes."""
        return self.config.size

    @property
    def block_size(self) -> int:
        """The logical block size in bytes: every offset and length is a multiple of it."""
        return self.config.block_size

    @property
    def read_only(self) -> bool:
        """Whether the device is read-only (VIRTIO_BLK_F_RO)."""
        return self.config.read_only

    def pool(self, queue: int = 0) -> tuple[int, int]:
        """Queue `queue`'s data buffers: (guest-physical address, bytes)."""
        return self._layout.pool(queue), self._layout.pool_size

    # --- synchronous helpers: a burst per call ---

    def read(self, offset: int, length: int, *, queue: int = 0) -> bytes:
        """`length` bytes of the disk from byte `offset`."""
        out = bytearray()
        for pieces in self._data_bursts(offset, length, queue):
            self._run(queue, [(VIRTIO_BLK_T_IN, sector, buffer, n, 0)
                              for sector, buffer, n in pieces])
            out += self.memory.read(pieces[0][1], sum(n for _, _, n in pieces))
        return bytes(out)

    def write(self, offset: int, data: bytes, *, queue: int = 0) -> None:
        """Write `data` to the disk at byte `offset`."""
        data = memoryview(data).cast("B")
        done = 0
        for pieces in self._data_bursts(offset, len(data), queue):
            n = sum(n for _, _, n in pieces)
            self.memory.write(pieces[0][1], data[done:done + n])
            done += n
            self._run(queue, [(VIRTIO_BLK_T_OUT, sector, buffer, n, 0)
                              for sector, buffer, n in pieces])

    def flush(self, *, queue: int = 0) -> None:
        """Make every completed write stable (VIRTIO_BLK_T_FLUSH)."""
        self._run(queue, [(VIRTIO_BLK_T_FLUSH, 0, 0, 0, 0)])

    def discard(self, offset: int, length: int, *, queue: int = 0) -> None:
        """Tell the device that `length` bytes from `offset` are no longer used."""
        self._ranges(VIRTIO_BLK_T_DISCARD, offset, length, self.config.max_discard_sectors,
                     0, queue)

    def write_zeroes(self, offset: int, length: int, *, unmap: bool = False,
                     queue: int = 0) -> None:
        """Make `length` bytes from `offset` read back as zeros; with `unmap` the device may
        deallocate them."""
        self._ranges(VIRTIO_BLK_T_WRITE_ZEROES, offset, length,
                     self.config.max_write_zeroes_sectors,
                     VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP if unmap else 0, queue)

    def get_id(self, *, queue: int = 0) -> bytes:
        """The device ID string (VIRTIO_BLK_T_GET_ID), without its NUL padding."""
        buffer, _ = self.pool(queue)
        self._run(queue, [(VIRTIO_BLK_T_GET_ID, 0, buffer, VIRTIO_BLK_ID_BYTES, 0)])
        return self.memory.read(buffer, VIRTIO_BLK_ID_BYTES).split(b"\0", 1)[0]

    def _data_bursts(self, offset: int, length: int, queue: int):
        """[(sector, buffer, bytes), ...] for each burst of a transfer: requests as large as
        the device takes, their buffers back to back in the queue's pool."""
        sector = _sector(offset, length)
        pool, pool_size = self.pool(queue)
        block = self.block_size
        # Whole blocks, so that no request is refused for alignment the transfer has.
        largest = max(min(pool_size, self.queues[queue].max_transfer) // block * block, block)
        slots = self.queues[queue].queue.size
        at = 0
        while at < length:
            pieces = []
            used = 0
            while at < length and len(pieces) < slots and used < pool_size:
                n = min(largest, length - at, pool_size - used)
                pieces.append((sector + at // SECTOR_SIZE, pool + used, n))
                used += n
                at += n
            yield pieces

    def _ranges(self, kind: int, offset: int, length: int, limit: int, flags: int,
                queue: int) -> None:
        sector = _sector(offset, length)
        block_sectors = self.block_size // SECTOR_SIZE
        # The range record counts sectors in 32 bits (§5.2.6); whole blocks, as every request.
        step = (limit or 0xFFFFFFFF) // block_sectors * block_sectors * SECTOR_SIZE
        requests = [(kind, sector + at // SECTOR_SIZE, 0, min(step, length - at), flags)
                    for at in range(0, length, step)]
        slots = self.queues[queue].queue.size
        for first in range(0, len(requests), slots):
            self._run(queue, requests[first:first + slots])

    def _run(self, queue: int, requests: list[tuple[int, int, int, int, int]]) -> None:
        """Submit requests (type, sector, buffer, length, flags) on `queue` and wait for
        all of them; raises OSError for the first that failed."""
        driver = self.queues[queue]
        records = np.zeros(len(requests), dtype=DRIVER_REQUEST)
        for tag, (kind, sector, buffer, length, flags) in enumerate(requests):
            records[tag] = (tag, sector, buffer, length, kind, flags, 0)
        completions = np.zeros(len(requests), dtype=DRIVER_COMPLETION)
        done = np.zeros(len(requests), dtype=DRIVER_COMPLETION)
        submitted = reaped = 0
        deadline = None
        while reaped < len(requests):
            if submitted < len(requests):
                submitted += driver.submit(records[submitted:])
            n = driver.reap(completions)
            if n or deadline is None:
                # The device has `timeout` seconds from each sign of life; the first submit's
                # time (a kernel's first compilation) is not the device's.
                deadline = time.monotonic() + self.timeout
            if n:
                done[completions["tag"][:n]] = completions[:n]
                reaped += n
            elif reaped < submitted:
                self._wait(queue, deadline, len(requests) - reaped)
            else:
                # Nothing in flight and nothing taken: no request fits an empty ring.
                raise RuntimeError(f"queue {queue} takes none of {len(requests) - submitted} "
                                   "requests with its ring empty")
        failed = np.flatnonzero(done["status"] != VIRTIO_BLK_S_OK)
        if len(failed):
            tag = int(failed[0])
            code, what = _STATUS_ERRORS.get(int(done["status"][tag]),
                                            (errno.EIO, f"status {int(done['status'][tag])}"))
            kind, sector, _, length, _ = requests[tag]
            raise OSError(code, f"virtio-blk request of type {kind} at sector {sector} "
                                f"({length} bytes): {what}")

    def _wait(self, queue: int, deadline: float, outstanding: int) -> None:
        # Calls stay enabled: a completion after the reap above has signalled the eventfd
        # already, and the poll returns at once.
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"queue {queue}: the device completed none of {outstanding} "
                               f"requests in {self.timeout} s")
        poller = select.poll()
        poller.register(self._calls[queue], select.POLLIN)
        if poller.poll(min(left, 0.1) * 1000):
            try:
                os.eventfd_read(self._calls[queue])
            except BlockingIOError:
                pass

    # --- the end ---

    def close(self) -> None:
        """Stop every queue, close the connection and the memory."""
        try:
            for index in range(len(self.queues)):
                self.frontend.stop_vring(index)
        except (FastpathError, OSError) as e:
            # The back-end went away first: there is nothing left to stop.
            log.info("stopping the request queues of %s failed: %s", self.frontend.path, e)
        finally:
            self.queues = []
            self.frontend.close()
            if self._inflight is not None:
                os.close(self._inflight[1])
                self._inflight = None
            if self.memory is not None:
                self.memory.close()
                self.memory = None

    def __enter__(self) -> BlkFrontend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _sector(offset: int, length: int) -> int:
    if offset < 0 or length < 0:
        raise ValueError(f"offset {offset} and length {length} must not be negative")
    if offset % SECTOR_SIZE:
        raise ValueError(f"offset {offset} is not a multiple of {SECTOR_SIZE} bytes")
    return offset // SECTOR_SIZE


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to

