"""One virtio-blk request queue as a data plane serves it (virtio 1.2 §5.2.6), and the disk
its requests are held to."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastpath.devices.blk._io import BLOCK_COMPLETION, BLOCK_IO, IOVEC
from fastpath.devices.blk._layout import SECTOR_SIZE, VIRTIO_BLK_ID_BYTES
from fastpath.devices.blk.kernels import (
    COUNTERS,
    INFLIGHT_DTYPE,
    NO_SLOT,
    REQUEST_HEAD_DTYPE,
    ST_BLOCK_SECTORS,
    ST_CALL_FD,
    ST_CAPACITY,
    ST_DETACHED,
    ST_FREE,
    ST_IN_FLIGHT,
    ST_IOVEC_ROOM,
    ST_MAX_DISCARD,
    ST_MAX_WRITE_ZEROES,
    ST_PACKED,
    ST_QUEUE,
    ST_READ_ONLY,
    ST_SERIAL,
    ST_STATUS_BYTES,
    ST_WRITETHROUGH,
    STATE_COLUMNS,
    complete_requests,
    take_requests,
)
from fastpath.errors import raise_for_code
from fastpath.vring import DeviceQueue

MAX_SECTORS_FIELD = 0xFFFFFFFF   # the config's *_sectors fields are le32


@dataclass(frozen=True)
class BlkDisk:
    """The disk a virtio-blk device presents, and the limits its requests are held to.

    `capacity` is in bytes, a multiple of `block_size` (the logical block size, 512 or 4096:
    requests must be aligned to it). `seg_max` and `size_max` bound a request's data pieces
    and each piece's bytes as the driver is told (§5.2.4); the device itself refuses only a
    request of more than `iovecs_per_request` pieces, and takes pieces of any size.
    Discards and write-zeroes take one range each of up to `max_discard_sectors` /
    `max_write_zeroes_sectors` 512-byte sectors. `serial` is GET_ID's device ID string
    (ASCII, up to 20 bytes).
    """

    capacity: int
    block_size: int = 512
    read_only: bool = False
    seg_max: int = 126
    size_max: int = 1 << 17
    max_discard_sectors: int = 1 << 22
    max_write_zeroes_sectors: int = 1 << 22
    write_zeroes_may_unmap: bool = True
    serial: bytes = b""

    def __post_init__(self):
        if self.block_size not in (512, 4096):
            raise ValueError(f"block size {self.block_size}: 512 or 4096")
        if self.capacity < 0 or self.capacity % self.block_size:
            raise ValueError(f"capacity {self.capacity} is not whole {self.block_size}-byte "
                             "blocks")
        if not 1 <= self.seg_max <= 1024:
            raise ValueError("seg_max: 1 to 1024 (a chain has at most 1024 pieces)")
        if not self.block_size <= self.size_max <= MAX_SECTORS_FIELD:
            raise ValueError("size_max: at least a block, at most 32 bits")
        for name in ("max_discard_sectors", "max_write_zeroes_sectors"):
            sectors = getattr(self, name)
            if not self.block_size // SECTOR_SIZE <= sectors <= MAX_SECTORS_FIELD:
                raise ValueError(f"{name}: at least a block, at most 32 bits")
        if len(self.serial) > VIRTIO_BLK_ID_BYTES or not self.serial.isascii():
            raise ValueError(f"the serial is ASCII of {VIRTIO_BLK_ID_BYTES} bytes at most")

    @property
    def sectors(self) -> int:
        """The capacity in 512-byte sectors, as the config space gives it."""
        return self.capacity // SECTOR_SIZE

    @property
    def iovecs_per_request(self) -> int:
        """The data pieces a request may have: seg_max descriptors, each of which may cross
        one guest memory region boundary (the ring layer splits it there)."""
        return 2 * self.seg_max


class BlkQueue:
    """A request queue over a started device queue: requests out as BLOCK_IO records for an
    executor, completions back (the functions of `fastpath.devices.blk.kernels`, on `arrays`).

    `call_fd` is the driver's call eventfd (-1: none); `writethrough` puts IO_FLAG_FUA on
    writes. A pop takes at most `max_burst` chains. `keepalive` holds what keeps guest memory
    mapped (`GuestMemory.mappings`) while requests are in flight: the executor reaches their
    buffers by host address. `arrays` is what the kernels take as `queue`.
    """

    def __init__(self, queue: DeviceQueue, disk: BlkDisk, *, call_fd: int = -1,
                 writethrough: bool = False, max_burst: int = 32, keepalive: tuple = ()):
        self.queue = queue
        self.disk = disk
        self.keepalive = keepalive
        burst = queue.new_burst(max_burst)
        slots = queue.size
        room = disk.iovecs_per_request
        state = np.zeros(STATE_COLUMNS, dtype=np.uint64)
        state[ST_QUEUE] = queue.handle
        state[ST_PACKED] = queue.packed
        state[ST_CAPACITY] = disk.sectors
        state[ST_BLOCK_SECTORS] = disk.block_size // SECTOR_SIZE
        state[ST_READ_ONLY] = disk.read_only
        state[ST_MAX_DISCARD] = disk.max_discard_sectors
        state[ST_MAX_WRITE_ZEROES] = disk.max_write_zeroes_sectors
        state[ST_IOVEC_ROOM] = room
        state[ST_FREE] = 0
        serial = disk.serial.ljust(3 * 8, b"\0")
        state[ST_SERIAL:ST_SERIAL + 3] = np.frombuffer(serial, dtype="<u8")
        state[ST_STATUS_BYTES] = int.from_bytes(bytes([0, 1, 2]), "little")
        inflight = np.zeros(slots, dtype=INFLIGHT_DTYPE)
        inflight["next_free"] = np.arange(1, slots + 1, dtype=np.uint32)
        inflight["next_free"][-1] = NO_SLOT
        self.state = state
        self.arrays = (state, burst.chains, burst.segments,
                       np.zeros(max_burst, dtype=REQUEST_HEAD_DTYPE), inflight,
                       np.zeros(slots * room, dtype=IOVEC))
        self.call_fd = call_fd
        self.writethrough = writethrough

    @property
    def call_fd(self) -> int:
        """The call eventfd, or -1."""
        return int(self.state[ST_CALL_FD].astype(np.int64))

    @call_fd.setter
    def call_fd(self, fd: int) -> None:
        self.state[ST_CALL_FD] = np.int64(fd).astype(np.uint64)

    @property
    def writethrough(self) -> bool:
        """Whether writes must be stable before they complete (IO_FLAG_FUA)."""
        return bool(self.state[ST_WRITETHROUGH])

    @writethrough.setter
    def writethrough(self, on: bool) -> None:
        self.state[ST_WRITETHROUGH] = on

    @property
    def detached(self) -> bool:
        """Whether the queue was detached from its ring."""
        return bool(self.state[ST_DETACHED])

    def detach(self) -> None:
        """The ring is no longer this queue's to touch (it stopped, or the front-end moved it)
        while requests are in flight: from now on the queue takes nothing, and a completion
        only frees its request's slot, writing nothing to the guest or its ring. The iovecs
        stay valid until the executor has completed every request."""
        self.state[ST_DETACHED] = 1

    @property
    def in_flight(self) -> int:
        """Requests handed to the executor and not completed yet."""
        return int(self.state[ST_IN_FLIGHT])

    @property
    def counters(self) -> dict[str, int]:
        """Requests by type, failures by reason, status bytes, executor traffic (see
        `kernels.COUNTERS`), since the queue was made."""
        return {name: int(self.state[column]) for name, column in COUNTERS.items()}

    def take(self, ios: np.ndarray, max_n: int | None = None) -> int:
        """Requests for the executor, up to max_n (all of ios) BLOCK_IO records in ios[:n];
        returns n. Raises the ring's VringError once it is broken."""
        if ios.dtype != BLOCK_IO:
            raise TypeError("ios holds BLOCK_IO records")
        n = take_requests(self.arrays, ios, len(ios) if max_n is None else min(max_n, len(ios)))
        if n < 0:
            raise_for_code(n)
        return n

    def complete(self, completions: np.ndarray, n: int | None = None) -> int:
        """Complete requests from the first n (all) BLOCK_COMPLETION records; returns the
        requests used."""
        if completions.dtype != BLOCK_COMPLETION:
            raise TypeError("completions holds BLOCK_COMPLETION records")
        if n is not None and not 0 <= n <= len(completions):
            raise ValueError(f"{n} completions of {len(completions)}")
        return complete_requests(self.arrays, completions,
                                 len(completions) if n is None else n)
