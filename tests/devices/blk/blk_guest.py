"""A virtio-blk driver's side of one request queue, for the blk tests: requests laid out in
memfd guest memory piece by piece, through the project's guest driver (a real driver queue),
as a well-behaved driver lays them out or as a hostile one might."""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field

import numpy as np

from fastpath.devices.blk import (
    BLOCK_IO,
    IOVEC,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    BlkDisk,
    BlkQueue,
)
from fastpath.errors import RingFull
from fastpath.testing import GuestDriver
from fastpath.testing.reference import PackedDevice, SplitDevice
from fastpath.testing.reference.blk import ReferenceExecutor, ReferenceIO, ReferenceQueue
from fastpath.vring import (
    DriverQueue,
    PackedDriverQueue,
    RingAddresses,
    SplitDriverQueue,
    ring_bytes,
    ring_layout,
)

PATTERN = 0xA5     # what every byte of the pool holds before a test: a device write shows
GAP = 64           # bytes left untouched between pieces
POOL_BYTES = 1 << 20
RING_TYPES = ("split", "packed")


def header(kind: int, sector: int = 0, ioprio: int = 0) -> bytes:
    """struct virtio_blk_req up to its data (§5.2.6), packed by hand from the spec."""
    return struct.pack("<IIQ", kind, ioprio, sector)


def blk_range(sector: int, sectors: int, flags: int = 0) -> bytes:
    """struct virtio_blk_discard_write_zeroes (§5.2.6)."""
    return struct.pack("<QII", sector, sectors, flags)


def data(n: int, seed: int = 1) -> bytes:
    """n bytes that no two seeds share at any offset."""
    return bytes((seed * 131 + i * 7) & 0xFF for i in range(n))


@dataclass
class Sent:
    """A chain the guest offered: its id and its pieces as (gpa, length), by direction."""

    id: int
    readable: list[tuple[int, int]] = field(default_factory=list)
    writable: list[tuple[int, int]] = field(default_factory=list)

    @property
    def status_gpa(self) -> int | None:
        """The last device-writable byte, where the status goes (None: the chain has none)."""
        pieces = [p for p in self.writable if p[1]]
        return pieces[-1][0] + pieces[-1][1] - 1 if pieces else None


class BlkGuest:
    """One request queue's driver over its own guest memory (a GuestDriver's), with a pool of
    PATTERN bytes that requests are carved from, GAP bytes apart."""

    def __init__(self, packed: bool = False, *, size: int = 64, event_idx: bool = False,
                 indirect: bool = False):
        self.guest = GuestDriver(packed=packed, size=size, event_idx=event_idx,
                                 indirect=indirect, buffer_size=4096,
                                 buffers=POOL_BYTES // 4096)
        self.memory = self.guest.memory
        self.queue = self.guest.queue
        self.pool = self.guest.pool_base
        self.memory.view(self.pool, POOL_BYTES)[:] = PATTERN
        self._next = 0

    def place(self, n: int) -> int:
        """Room for n bytes in the pool, wrapping round when it runs out."""
        if self._next + n + GAP > POOL_BYTES:
            self._next = 0
        gpa = self.pool + self._next
        self._next += -(-(n + GAP) // 64) * 64
        return gpa

    def another_queue(self, ring_gpa: int) -> tuple[DriverQueue, RingAddresses]:
        """A second request queue's driver, its ring at `ring_gpa` (between the first ring's
        indirect tables and the pool), as a multiqueue driver has."""
        addresses = ring_layout(self.guest.size, ring_gpa, self.guest.packed)
        assert ring_gpa + ring_bytes(self.guest.size, self.guest.packed) <= self.pool
        queue_class = PackedDriverQueue if self.guest.packed else SplitDriverQueue
        return queue_class(self.memory, self.guest.size, addresses), addresses

    def add(self, readable=(), writable=(), *, indirect: bool = False,
            queue: DriverQueue | None = None) -> Sent:
        """Offer one chain (on `queue`, by default the first): `readable` pieces of bytes,
        then `writable` pieces of so many bytes (each PATTERN until the device writes)."""
        sent = Sent(-1)
        for chunk in readable:
            gpa = self.place(len(chunk))
            self.memory.write(gpa, chunk)
            sent.readable.append((gpa, len(chunk)))
        for n in writable:
            gpa = self.place(n)
            self.memory.view(gpa, n)[:] = PATTERN
            sent.writable.append((gpa, n))
        table = self.place(16 * (len(sent.readable) + len(sent.writable))) if indirect else 0
        sent.id = (queue or self.queue).add(sent.readable, sent.writable, indirect_table=table)
        return sent

    # Requests as a driver lays them out; `joined` puts the header and a write's data in one
    # descriptor, or a read's data and its status byte.

    def read(self, sector: int, n: int, *, pieces: int = 1, joined: bool = False,
             indirect: bool = False) -> Sent:
        """VIRTIO_BLK_T_IN of n bytes at `sector`, the data over `pieces` descriptors."""
        sizes = _split(n, pieces)
        writable = sizes[:-1] + [sizes[-1] + 1] if joined else sizes + [1]
        return self.add([header(VIRTIO_BLK_T_IN, sector)], [s for s in writable if s],
                        indirect=indirect)

    def write(self, sector: int, payload: bytes, *, pieces: int = 1, joined: bool = False,
              indirect: bool = False) -> Sent:
        """VIRTIO_BLK_T_OUT of `payload` at `sector`."""
        chunks, at = [], 0
        for size in _split(len(payload), pieces):
            chunks.append(payload[at:at + size])
            at += size
        readable = ([header(VIRTIO_BLK_T_OUT, sector) + chunks[0]] + chunks[1:] if joined
                    else [header(VIRTIO_BLK_T_OUT, sector)] + chunks)
        return self.add([c for c in readable if c], [1], indirect=indirect)

    def flush(self) -> Sent:
        """VIRTIO_BLK_T_FLUSH."""
        return self.add([header(VIRTIO_BLK_T_FLUSH)], [1])

    def get_id(self, n: int = 20) -> Sent:
        """VIRTIO_BLK_T_GET_ID into n bytes."""
        return self.add([header(VIRTIO_BLK_T_GET_ID)], [n, 1] if n else [1])

    def discard(self, sector: int, sectors: int, flags: int = 0) -> Sent:
        """VIRTIO_BLK_T_DISCARD of one range."""
        return self.add([header(VIRTIO_BLK_T_DISCARD), blk_range(sector, sectors, flags)], [1])

    def write_zeroes(self, sector: int, sectors: int, flags: int = 0) -> Sent:
        """VIRTIO_BLK_T_WRITE_ZEROES of one range."""
        return self.add([header(VIRTIO_BLK_T_WRITE_ZEROES), blk_range(sector, sectors, flags)],
                        [1])

    # What the device did.

    def collect(self) -> dict[int, int]:
        """Used chains: {id: length reported}."""
        return dict(self.queue.collect())

    def status(self, sent: Sent) -> int:
        """The chain's status byte as it stands."""
        return self.memory.read(sent.status_gpa, 1)[0]

    def written(self, sent: Sent) -> bytes:
        """The chain's device-writable bytes before its status byte."""
        whole = b"".join(self.memory.read(gpa, n) for gpa, n in sent.writable)
        return whole[:-1]

    def snapshot(self) -> np.ndarray:
        """A copy of the pool."""
        return self.memory.view(self.pool, POOL_BYTES).copy()

    def changed(self, before: np.ndarray) -> set[int]:
        """Guest addresses in the pool whose bytes differ from `before`."""
        now = self.memory.view(self.pool, POOL_BYTES)
        return {self.pool + int(k) for k in np.flatnonzero(now != before)}


def _split(n: int, pieces: int) -> list[int]:
    # n bytes over `pieces` descriptors, the last taking what is left.
    step = -(-n // pieces) if n else 0
    sizes = [min(step, n - k * step) for k in range(pieces)]
    return [max(s, 0) for s in sizes]


def span(gpa: int, n: int) -> set[int]:
    """The addresses of [gpa, gpa + n)."""
    return set(range(gpa, gpa + n))


class Served:
    """A BlkQueue over the guest's ring and an executor holding a disk in memory."""

    def __init__(self, guest: BlkGuest, disk: BlkDisk, *, call_fd: int = -1,
                 writethrough: bool = False, max_burst: int = 32, **device):
        self.guest = guest
        self.disk = disk
        self.queue = BlkQueue(guest.guest.device(**device), disk, call_fd=call_fd,
                              writethrough=writethrough, max_burst=max_burst,
                              keepalive=guest.memory.mappings)
        self.executor = ReferenceExecutor(disk)
        self.ios = np.zeros(256, dtype=BLOCK_IO)

    def take(self, max_n: int = 256) -> np.ndarray:
        """The requests handed out, as BLOCK_IO records."""
        n = self.queue.take(self.ios, max_n)
        return self.ios[:n].copy()

    def finish(self, ios: np.ndarray, results: list[int] | None = None) -> int:
        """Carry ios out on the executor (or fail them with `results`) and complete them."""
        completions = self.executor.execute_records(ios, len(ios), results)
        return self.queue.complete(completions)

    def run(self) -> np.ndarray:
        """Take every request waiting and carry each out; returns their records."""
        ios = self.take()
        self.finish(ios)
        return ios


class Twins:
    """The same requests on two guests alike to the byte: one served by the compiled path
    (`BlkQueue`), the other by the reference (`ReferenceQueue` on a reference ring), each
    with its own executor. `check()` holds them to each other."""

    def __init__(self, packed: bool, disk: BlkDisk, *, size: int = 64, max_burst: int = 16,
                 event_idx: bool = False, indirect: bool = True, writethrough: bool = False):
        self.compiled = BlkGuest(packed, size=size, event_idx=event_idx, indirect=indirect)
        self.reference = BlkGuest(packed, size=size, event_idx=event_idx, indirect=indirect)
        self.served = Served(self.compiled, disk, max_burst=max_burst,
                             writethrough=writethrough)
        device = (PackedDevice if packed else SplitDevice)(
            self.reference.memory, size, self.reference.guest.addresses, event_idx=event_idx,
            indirect=indirect)
        self.model = ReferenceQueue(device, self.reference.memory, disk, max_burst=max_burst,
                                    writethrough=writethrough)
        self.model_executor = ReferenceExecutor(disk)
        self.pending: list[tuple[np.ndarray, ReferenceIO]] = []

    def add(self, readable=(), writable=(), *, indirect: bool = False) -> None:
        """Offer the same chain on both guests (or on neither: a full ring, no pieces)."""
        outcomes = []
        for guest in (self.compiled, self.reference):
            try:
                outcomes.append(guest.add(readable, writable, indirect=indirect))
            except (RingFull, ValueError) as e:
                outcomes.append(type(e))
        assert outcomes[0] == outcomes[1]

    def add_raw(self, readable=(), writable=()) -> None:
        """Offer the same chain of raw (gpa, length) pieces on both (a hostile driver's)."""
        assert self.compiled.queue.add(readable, writable) == self.reference.queue.add(
            readable, writable)

    def take(self, max_n: int) -> int:
        """Both take up to max_n requests; they must hand out the same ones."""
        ios = self.served.take(max_n)
        model = self.model.take(max_n)
        assert [_record(self.compiled, io) for io in ios] == [
            (m.tag, m.operation, m.offset, m.length, m.flags, m.data) for m in model]
        self.pending += list(zip(ios, model, strict=True))
        return len(ios)

    def complete(self, picks: list[int], results: list[int]) -> None:
        """Carry out and complete the pending requests at `picks` (indices, in that order,
        each taken from what is still pending), with executor `results` (0: as the disk
        says)."""
        chosen = []
        for pick in picks:
            if self.pending:
                chosen.append(self.pending.pop(pick % len(self.pending)))
        if not chosen:
            return
        results = [results[k % len(results)] if results else 0 for k in range(len(chosen))]
        ios = np.array([io for io, _ in chosen], dtype=BLOCK_IO)
        done = self.served.executor.execute_records(ios, len(ios), results)
        a = self.served.queue.complete(done)
        b = self.model.complete(self.model.execute(self.model_executor, [m for _, m in chosen],
                                                   results))
        assert a == b

    def check(self) -> None:
        """Same chains used with the same lengths, same guest memory to the byte (rings and
        all), same disks, same counts."""
        assert self.compiled.queue.collect() == self.reference.queue.collect()
        a, b = (g.memory.view(0, g.memory.regions[0].size) for g in (self.compiled,
                                                                       self.reference))
        different = np.flatnonzero(a != b)
        assert not len(different), [hex(int(k)) for k in different[:8]]
        assert self.served.executor.data == self.model_executor.data
        counts = {name: n for name, n in self.served.queue.counters.items()
                  if n and name not in ("notified", "broken")}
        assert counts == {name: n for name, n in self.model.counters.items() if n}
        assert self.served.queue.in_flight == self.model.in_flight


def iovecs(io) -> list[tuple[int, int]]:
    """A BLOCK_IO record's iovecs as (host address, length)."""
    count = int(io["iovcnt"])
    if not count:
        return []
    table = np.frombuffer((ctypes.c_uint8 * (count * IOVEC.itemsize)).from_address(
        int(io["iov"])), dtype=IOVEC)
    return [(int(v["base"]), int(v["length"])) for v in table]


def _record(guest: BlkGuest, io) -> tuple:
    # A BLOCK_IO record with its iovecs as (gpa, length), as the reference hands them out.
    return (int(io["tag"]), int(io["operation"]), int(io["offset"]), int(io["length"]),
            int(io["flags"]), [(guest_address(guest, a), n) for a, n in iovecs(io)])


def guest_address(guest: BlkGuest, address: int) -> int:
    """The guest-physical address of a host address inside the guest's memory."""
    for region in guest.memory.regions:
        start = guest.memory.translate(region.guest_phys_addr)
        if start <= address < start + region.size:
            return region.guest_phys_addr + address - start
    raise AssertionError(f"{address:#x} is outside guest memory")
