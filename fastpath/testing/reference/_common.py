"""What the split and packed reference models share.

Chains as a device sees them, byte access to guest memory, and the two "has the index gone past
the event?" tests of virtio 1.2 §2.7.7/§2.7.10 (16-bit indices) and §2.8.10 (slot + wrap counter).
Everything here is plain Python over `GuestMemory`: no compiled ring code is used.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from fastpath.errors import (
    DescriptorOutsideMemory,
    GuestMemoryError,
    UnknownUsedId,
    WriteOrderViolation,
)
from fastpath.hv import GuestMemory

# Descriptor flags shared by both layouts (§2.7.5, §2.8.3, §2.8.6, §2.8.7).
F_NEXT = 1
F_WRITE = 2
F_INDIRECT = 4

DESC_SIZE = 16
# §2.7.5.2: a chain carries fewer than 2**32 bytes; we apply it to each direction, as the core does.
MAX_CHAIN_BYTES = 2**32 - 1
MAX_QUEUE_SIZE = 32768

U16 = struct.Struct("<H")
U32 = struct.Struct("<I")


class Piece(NamedTuple):
    """One descriptor's buffer as the driver described it: guest address, length, direction."""

    gpa: int
    length: int
    writable: bool


@dataclass
class Chain:
    """A buffer a reference device popped.

    `id` is the split head index or the packed buffer id; `ndesc` the ring slots it took (split: 1,
    its avail ring entry; packed: the descriptors it spans, which is how far its used descriptor
    moves the device on). `pieces` are in chain order, readable ones first, one per descriptor
    (zero-length ones included). A chain that failed validation has `error` set to the name of
    the fastpath.errors class and no pieces.
    """

    id: int
    ndesc: int
    pieces: list[Piece] = field(default_factory=list)
    error: str | None = None

    @property
    def readable_len(self) -> int:
        """Bytes the device may read: the sum of the chain's readable pieces."""
        return sum(p.length for p in self.pieces if not p.writable)

    @property
    def writable_len(self) -> int:
        """Bytes the device may write: the sum of the chain's writable pieces."""
        return sum(p.length for p in self.pieces if p.writable)


def failed(chain_id: int, ndesc: int, error: type[Exception]) -> Chain:
    """A chain that failed validation with `error`."""
    return Chain(chain_id, ndesc, [], error.__name__)


def check_size(size: int, packed: bool) -> None:
    """Raise ValueError unless size is a legal queue size (§2.7: a power of two; §2.8: 1..2**15)."""
    if not 1 <= size <= MAX_QUEUE_SIZE or (not packed and size & (size - 1)):
        raise ValueError(f"{'packed' if packed else 'split'} queue size {size} is not allowed")


class Area:
    """A ring area read and written in place: its fields are le16/le32/le64 (§2.7, §2.8)."""

    def __init__(self, memory: GuestMemory, gpa: int, nbytes: int, align: int, name: str):
        if gpa % align:
            raise GuestMemoryError(f"{name} at {gpa:#x} is not {align}-byte aligned")
        self.bytes = memory.view(gpa, nbytes)

    def clear(self) -> None:
        self.bytes[:] = 0

    def u16(self, offset: int) -> int:
        return U16.unpack_from(self.bytes, offset)[0]

    def set_u16(self, offset: int, value: int) -> None:
        U16.pack_into(self.bytes, offset, value & 0xFFFF)

    def u32(self, offset: int) -> int:
        return U32.unpack_from(self.bytes, offset)[0]

    def set_u32(self, offset: int, value: int) -> None:
        U32.pack_into(self.bytes, offset, value)


def inside_memory(memory: GuestMemory, gpa: int, length: int) -> bool:
    """Whether every byte of [gpa, gpa + length) is guest RAM (regions may be adjacent)."""
    end = gpa + length
    for region in memory.regions:  # sorted by guest-physical address
        start, stop = region.guest_phys_addr, region.guest_phys_addr + region.size
        if start <= gpa < stop:
            gpa = stop
        if gpa >= end:
            return True
    return length == 0


def inside_one_region(memory: GuestMemory, gpa: int, length: int) -> bool:
    """Whether [gpa, gpa + length) lies in one region: fastpath reads tables in place (DESIGN)."""
    return any(
        r.guest_phys_addr <= gpa and gpa + length <= r.guest_phys_addr + r.size
        for r in memory.regions
    )


def _spans(memory: GuestMemory, gpa: int, length: int):
    # (gpa, length) runs of a range that inside_memory() accepted, one per region touched.
    for region in memory.regions:
        stop = region.guest_phys_addr + region.size
        if length and region.guest_phys_addr <= gpa < stop:
            n = min(length, stop - gpa)
            yield gpa, n
            gpa, length = gpa + n, length - n


def read_guest(memory: GuestMemory, gpa: int, length: int) -> bytes:
    """The bytes at [gpa, gpa + length), which may span adjacent regions."""
    return b"".join(memory.read(a, n) for a, n in _spans(memory, gpa, length))


def write_guest(memory: GuestMemory, gpa: int, data: bytes) -> None:
    """Copy data to gpa, which may span adjacent regions."""
    done = 0
    for a, n in _spans(memory, gpa, len(data)):
        memory.write(a, data[done : done + n])
        done += n


def gather(memory: GuestMemory, chain: Chain) -> bytes:
    """A copy of a chain's device-readable bytes."""
    return b"".join(read_guest(memory, p.gpa, p.length) for p in chain.pieces if not p.writable)


def scatter(memory: GuestMemory, chain: Chain, data: bytes) -> int:
    """Copy data into a chain's device-writable pieces, in order; returns the bytes copied."""
    done = 0
    for p in chain.pieces:
        if p.writable and done < len(data):
            n = min(p.length, len(data) - done)
            write_guest(memory, p.gpa, data[done : done + n])
            done += n
    return done


def passed(event: int, old: int, new: int) -> bool:
    """§2.7.7, §2.7.10: whether a 16-bit index moving from old to new wrote entry `event`.

    The entries written are old, old + 1, ..., new - 1 (mod 2**16).
    """
    return (event - old) % 0x10000 < (new - old) % 0x10000


def passed_slot(event_slot: int, event_wrap: int, pos: int, wrap: int, moved: int,
                size: int) -> bool:
    """§2.8.10: whether the last `moved` slots before (pos, wrap) include the event slot.

    off_wrap's wrap counter says which lap its slot is in: the lap we are in if it matches our
    counter, else the lap before. Once a whole ring's worth has moved, a 1-bit counter can no
    longer say which lap was meant, and the slot has been passed in one of them: notify, since
    a spurious notification is harmless (§2.7.7.1) and a lost one is not.
    """
    if moved >= size:
        return True
    event = event_slot if event_wrap == wrap else event_slot - size
    return 0 < pos - event <= moved


class ErrorCounts(Counter):
    """Counts of every error a reference queue has seen, by fastpath.errors class name."""

    def record(self, error: type[Exception] | str) -> None:
        self[error if isinstance(error, str) else error.__name__] += 1


def add_piece(memory: GuestMemory, pieces: list[Piece], gpa: int, length: int,
              writable: bool) -> type[Exception] | None:
    """Append one descriptor's buffer to pieces, or return why the chain is bad.

    §2.7.4.2, §2.8.17: device-writable elements come after every device-readable one; and a
    buffer has to be guest memory for the device to touch it.
    """
    if pieces and pieces[-1].writable and not writable:
        return WriteOrderViolation
    if not inside_memory(memory, gpa, length):
        return DescriptorOutsideMemory
    pieces.append(Piece(gpa, length, writable))
    return None


def too_large(chain: Chain) -> bool:
    """§2.7.5.2: a chain carries fewer than 2**32 bytes (checked for each direction)."""
    return max(chain.readable_len, chain.writable_len) > MAX_CHAIN_BYTES


class DeviceBase:
    """What both reference devices do alike: copy to and from chains, track what they hold."""

    def __init__(self, memory: GuestMemory, size: int, event_idx: bool, indirect: bool):
        self.memory = memory
        self.size = size
        self.event_idx = event_idx
        self.indirect = indirect
        self.errors = ErrorCounts()
        self._held: Counter[int] = Counter()

    def reset(self) -> None:
        """Forget all progress, errors and a broken state: the device was reset (§2.1)."""
        self.broken = False
        self.popped = 0
        self.pushed = 0
        self.errors.clear()
        self._held.clear()
        self._restart()

    def _restart(self) -> None:
        raise NotImplementedError

    def readable(self, chain: Chain) -> bytes:
        """A copy of chain's device-readable bytes."""
        return gather(self.memory, chain)

    def write(self, chain: Chain, data: bytes) -> int:
        """Copy data into chain's device-writable pieces; returns the bytes copied."""
        return scatter(self.memory, chain, data)

    def _hold(self, chain: Chain, returnable: bool = True) -> None:
        # Count a popped chain's error; remember it as ours to push unless it names no buffer.
        if chain.error:
            self.errors.record(chain.error)
        if returnable:
            self._held[chain.id] += 1

    def _release(self, chain: Chain) -> bool:
        # A used element may only name a buffer this device took and still holds (§2.7.8, §2.8.6).
        if not self._held[chain.id]:
            self.errors.record(UnknownUsedId)
            return False
        self._held[chain.id] -= 1
        return True


class DriverBase:
    """What both reference drivers check before they offer a buffer."""

    def __init__(self, memory: GuestMemory, size: int, event_idx: bool, indirect: bool):
        self.memory = memory
        self.size = size
        self.event_idx = event_idx
        self.indirect = indirect
        self.errors = ErrorCounts()

    def _pieces(self, readable, writable, indirect_table: int) -> list[Piece]:
        pieces = [Piece(a, n, False) for a, n in readable]
        pieces += [Piece(a, n, True) for a, n in writable]
        if not pieces:
            raise ValueError("a buffer needs at least one piece")
        if indirect_table and not self.indirect:
            # §2.7.5.3.1, §2.8.19: no INDIRECT unless VIRTIO_F_INDIRECT_DESC was negotiated.
            raise ValueError("indirect descriptors were not negotiated")
        if not indirect_table and len(pieces) > self.size:
            # §2.7.5.3.1, §2.8.17: no chain longer than the queue size.
            raise ValueError(f"a {len(pieces)}-piece chain is longer than the queue")
        return pieces
