"""A virtio-blk driver's side of one request queue, for the blk tests: requests laid out in
memfd guest memory piece by piece, through the project's guest driver (a real driver queue),
as a well-behaved driver lays them out or as a hostile one might."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from fastpath.devices.blk import (
    BLOCK_IO,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    BlkDisk,
    BlkQueue,
)
from fastpath.testing import GuestDriver
from fastpath.testing.reference.blk import ReferenceExecutor

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

    def add(self, readable=(), writable=(), *, indirect: bool = False) -> Sent:
        """Offer one chain: `readable` pieces of bytes, then `writable` pieces of so many
        bytes (each PATTERN until the device writes), in that order."""
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
        sent.id = self.queue.add(sent.readable, sent.writable, indirect_table=table)
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
