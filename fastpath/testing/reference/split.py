"""A plain-Python split virtqueue (virtio 1.2 §2.7), device side and driver side.

The ring lives in guest memory exactly as §2.7 lays it out, so either side can face the compiled
queues of fastpath.vring on the same ring. Layout (little-endian):

    descriptor table  16 bytes each: u64 addr, u32 len, u16 flags, u16 next     (§2.7.5)
    avail ring        u16 flags, u16 idx, u16 ring[size], u16 used_event       (§2.7.6)
    used ring         u16 flags, u16 idx, {u32 id, u32 len}[size], u16 avail_event  (§2.7.8)
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from fastpath.errors import (
    AvailIndexJump,
    BadIndirectTable,
    ChainLoop,
    ChainTooLarge,
    HeadOutOfRange,
    NextOutOfRange,
    QueueBroken,
    RingFull,
    UnknownUsedId,
)
from fastpath.hv import GuestMemory
from fastpath.testing.reference._common import (
    DESC_SIZE,
    F_INDIRECT,
    F_NEXT,
    F_WRITE,
    Area,
    Chain,
    DeviceBase,
    DriverBase,
    Piece,
    add_piece,
    check_size,
    failed,
    inside_one_region,
    passed,
    too_large,
)

DESC = struct.Struct("<QIHH")  # addr, len, flags, next
AVAIL_F_NO_INTERRUPT = 1  # §2.7.7
USED_F_NO_NOTIFY = 1  # §2.7.10
IDX_MASK = 0xFFFF  # §2.7.6, §2.7.8: idx fields are free-running 16-bit counters


class _SplitAreas:
    """The three areas of a split ring, with named accessors for the fields both sides share."""

    def __init__(self, memory: GuestMemory, size: int, addresses):
        check_size(size, packed=False)
        self.size = size
        # §2.7 (alignment table): 16, 2 and 4 bytes.
        self.table = Area(memory, addresses.desc, DESC_SIZE * size, 16, "descriptor table")
        self.avail = Area(memory, addresses.driver, 6 + 2 * size, 2, "avail ring")
        self.used = Area(memory, addresses.device, 6 + 8 * size, 4, "used ring")

    def avail_entry_offset(self, idx: int) -> int:
        return 4 + 2 * (idx % self.size)

    def used_entry_offset(self, idx: int) -> int:
        return 4 + 8 * (idx % self.size)

    @property
    def used_event_offset(self) -> int:
        return 4 + 2 * self.size

    @property
    def avail_event_offset(self) -> int:
        return 4 + 8 * self.size


class SplitDevice(DeviceBase):
    """Device side of a split virtqueue at guest-physical `addresses` (a RingAddresses).

    The same face as fastpath.vring.SplitDeviceQueue, in plain Python: `pop` returns Chain
    objects, `push` takes (chain, bytes written) pairs. Only chains this device popped and has not
    pushed may be pushed; any other is counted as UnknownUsedId and skipped.
    """

    def __init__(self, memory: GuestMemory, size: int, addresses, *, event_idx: bool = False,
                 indirect: bool = False):
        super().__init__(memory, size, event_idx, indirect)
        self._ring = _SplitAreas(memory, size, addresses)
        self.reset()

    def _restart(self) -> None:
        self.last_avail_idx = 0
        self._used_idx = 0
        self._signalled_used = 0
        self._kicks_wanted = True

    @property
    def used_idx(self) -> int:
        """The used ring index this device publishes next; setting it also forgets notifications."""
        return self._used_idx

    @used_idx.setter
    def used_idx(self, value: int) -> None:
        self._used_idx = self._signalled_used = value & IDX_MASK

    def pop(self, max_chains: int = 32) -> list[Chain]:
        """Up to max_chains available chains, oldest first; a bad one comes back with `error`.

        Raises AvailIndexJump (and QueueBroken on every later call) if the driver's idx is more
        than the queue size ahead of what this device has taken.
        """
        ring = self._ring
        if self.broken:
            raise QueueBroken("the queue stopped after an avail index jump; reset it")
        avail_idx = ring.avail.u16(2)
        pending = (avail_idx - self.last_avail_idx) & IDX_MASK
        if pending > self.size:
            # §2.7.13.3: a driver never has more than the queue size of buffers outstanding.
            self.broken = True
            self.errors.record(AvailIndexJump)
            raise AvailIndexJump(f"avail idx {avail_idx} is {pending} past {self.last_avail_idx}")
        chains = []
        for _ in range(min(pending, max_chains)):
            head = ring.avail.u16(ring.avail_entry_offset(self.last_avail_idx))
            self.last_avail_idx = (self.last_avail_idx + 1) & IDX_MASK
            chain = self._read_chain(head)
            self._hold(chain, returnable=head < self.size)
            chains.append(chain)
        self.popped += len(chains)
        if self.event_idx and self._kicks_wanted:
            # §2.7.10: kick me once the driver writes the entry after those I have taken.
            ring.used.set_u16(ring.avail_event_offset, self.last_avail_idx)
        return chains

    def _read_chain(self, head: int) -> Chain:
        # §2.7.5: follow `next` from the head; one INDIRECT descriptor may end the direct part
        # and the walk goes on through its table (§2.7.5.3).
        if head >= self.size:
            return failed(head, 1, HeadOutOfRange)
        table, table_size = self._ring.table.bytes, self.size
        index, walked, in_indirect = head, 0, False
        pieces: list[Piece] = []
        while True:
            walked += 1
            if walked > table_size:
                # §2.7.5.2: no loops; a chain cannot be longer than its table.
                return failed(head, 1, ChainLoop)
            addr, length, flags, next_index = DESC.unpack_from(table, DESC_SIZE * index)
            if flags & F_INDIRECT:
                if in_indirect or not self._indirect_table_ok(addr, length, flags):
                    return failed(head, 1, BadIndirectTable)
                table, table_size = self.memory.read(addr, length), length // DESC_SIZE
                index, walked, in_indirect = 0, 0, True
                continue
            error = add_piece(self.memory, pieces, addr, length, bool(flags & F_WRITE))
            if error:
                return failed(head, 1, error)
            if not flags & F_NEXT:
                break
            if next_index >= table_size:
                return failed(head, 1, NextOutOfRange)
            index = next_index
        chain = Chain(head, 1, pieces)
        return failed(head, 1, ChainTooLarge) if too_large(chain) else chain

    def _indirect_table_ok(self, addr: int, length: int, flags: int) -> bool:
        # §2.7.5.3.1: only if negotiated, never with NEXT, a whole number of descriptors, and
        # (fastpath's rule for anything read in place) inside one region of guest memory.
        return bool(
            self.indirect
            and not flags & F_NEXT
            and length
            and length % DESC_SIZE == 0
            and inside_one_region(self.memory, addr, length)
        )

    def push(self, used: Iterable[tuple[Chain, int]]) -> int:
        """Return (chain, bytes written) pairs as used, in the order given; returns how many."""
        ring = self._ring
        idx = self._used_idx
        pushed = 0
        for chain, written in used:
            if not self._release(chain):
                continue
            offset = ring.used_entry_offset(idx)
            ring.used.set_u32(offset, chain.id)
            # §2.7.8.2: never report more written than the chain could take.
            ring.used.set_u32(offset + 4, min(written, chain.writable_len))
            idx = (idx + 1) & IDX_MASK
            pushed += 1
        # §2.7.8: the elements are in place before idx exposes them.
        ring.used.set_u16(2, idx)
        self._used_idx = idx
        self.pushed += pushed
        return pushed

    def should_notify(self) -> bool:
        """Whether the driver wants a used buffer notification for what was pushed since."""
        ring = self._ring
        old, new = self._signalled_used, self._used_idx
        if old == new:
            return False
        self._signalled_used = new
        if self.event_idx:
            # §2.7.7.2: notify if an entry we wrote had the index the driver put in used_event.
            return passed(ring.avail.u16(ring.used_event_offset), old, new)
        return not ring.avail.u16(0) & AVAIL_F_NO_INTERRUPT

    def enable_kicks(self) -> int:
        """Ask the driver to kick again; returns how many chains are already waiting."""
        ring = self._ring
        self._kicks_wanted = True
        if self.event_idx:
            ring.used.set_u16(ring.avail_event_offset, self.last_avail_idx)
        else:
            ring.used.set_u16(0, 0)
        return (ring.avail.u16(2) - self.last_avail_idx) & IDX_MASK

    def disable_kicks(self) -> None:
        """Tell the driver not to kick. With EVENT_IDX, flags stay 0 (§2.7.10.1) and only
        avail_event stops moving, so the driver may kick once more when it passes it."""
        self._kicks_wanted = False
        if not self.event_idx:
            self._ring.used.set_u16(0, USED_F_NO_NOTIFY)


class SplitDriver(DriverBase):
    """Driver side of a split virtqueue at guest-physical `addresses`; creating it clears the ring.

    Free descriptors are kept as a list, most recently freed first, which is also the order the
    compiled driver (and Linux) reuses them in: any order is valid, this one makes ids comparable.
    """

    def __init__(self, memory: GuestMemory, size: int, addresses, *, event_idx: bool = False,
                 indirect: bool = False):
        super().__init__(memory, size, event_idx, indirect)
        self._ring = _SplitAreas(memory, size, addresses)
        for area in (self._ring.table, self._ring.avail, self._ring.used):
            area.clear()  # §2.7.10.1: used flags start at 0; the rest starts empty too
        self._free = list(range(size))
        self._chains: dict[int, list[int]] = {}  # head -> the descriptors its chain holds
        self.avail_idx = 0
        self.last_used_idx = 0
        self._kicked_avail_idx = 0
        self._calls_wanted = True

    @property
    def num_free(self) -> int:
        """Free descriptors in the table."""
        return len(self._free)

    def start_at(self, idx: int) -> None:
        """Restart the empty ring with every index, in memory too, at idx (to test 16-bit wrap)."""
        if self._chains:
            raise ValueError("buffers are still in flight")
        ring = self._ring
        self.avail_idx = self.last_used_idx = self._kicked_avail_idx = idx & IDX_MASK
        ring.avail.set_u16(2, idx)
        ring.used.set_u16(2, idx)
        if self.event_idx and self._calls_wanted:
            ring.avail.set_u16(ring.used_event_offset, idx)

    def add(self, readable: Iterable[tuple[int, int]] = (),
            writable: Iterable[tuple[int, int]] = (), *, indirect_table: int = 0) -> int:
        """Offer one buffer of (guest address, length) pieces, readable first; returns its id.

        With indirect_table (room for 16 bytes per piece) the pieces go into that table and the
        buffer takes one descriptor. Raises RingFull, or ValueError for a buffer that can never
        be added; GuestMemoryError if the table is outside guest memory.
        """
        pieces = self._pieces(readable, writable, indirect_table)
        need = 1 if indirect_table else len(pieces)
        if need > len(self._free):
            raise RingFull(f"no room for a {len(pieces)}-piece buffer ({len(self._free)} free)")
        entries = [(p.gpa, p.length, F_WRITE if p.writable else 0) for p in pieces]
        if indirect_table:
            # §2.7.5.3: the table holds the chain, linked 0 -> 1 -> ... by `next`.
            table = _linked(entries, list(range(len(entries))))
            self.memory.write(indirect_table, b"".join(DESC.pack(*d) for d in table))
            entries = [(indirect_table, DESC_SIZE * len(entries), F_INDIRECT)]
        slots = self._free[:need]
        del self._free[:need]
        # §2.7.13.1: place the chain in the descriptor table.
        for slot, descriptor in zip(slots, _linked(entries, slots), strict=True):
            DESC.pack_into(self._ring.table.bytes, DESC_SIZE * slot, *descriptor)
        head = slots[0]
        self._chains[head] = slots
        # §2.7.13.2: the head goes into the avail ring; §2.7.13.3: then idx moves past it.
        self._ring.avail.set_u16(self._ring.avail_entry_offset(self.avail_idx), head)
        self.avail_idx = (self.avail_idx + 1) & IDX_MASK
        self._ring.avail.set_u16(2, self.avail_idx)
        return head

    def should_kick(self) -> bool:
        """Whether the device wants an available buffer notification for what was added since."""
        ring = self._ring
        old, new = self._kicked_avail_idx, self.avail_idx
        if old == new:
            return False
        self._kicked_avail_idx = new
        if self.event_idx:
            # §2.7.10: kick if an entry we wrote had the index the device put in avail_event.
            return passed(ring.used.u16(ring.avail_event_offset), old, new)
        return not ring.used.u16(0) & USED_F_NO_NOTIFY

    def collect(self, max_n: int = 256) -> list[tuple[int, int]]:
        """Used buffers as (id, bytes written), oldest first (§2.7.14)."""
        ring = self._ring
        used_idx = ring.used.u16(2)
        done = []
        while self.last_used_idx != used_idx and len(done) < max_n:
            offset = ring.used_entry_offset(self.last_used_idx)
            chain_id, length = ring.used.u32(offset), ring.used.u32(offset + 4)
            self.last_used_idx = (self.last_used_idx + 1) & IDX_MASK
            slots = self._chains.pop(chain_id, None)
            if slots is None:
                self.errors.record(UnknownUsedId)
                continue
            self._free[:0] = slots
            done.append((chain_id, length))
        if self.event_idx and self._calls_wanted:
            # §2.7.7: notify me when the device writes the next used entry.
            ring.avail.set_u16(ring.used_event_offset, self.last_used_idx)
        return done

    def enable_calls(self) -> int:
        """Ask for used buffer notifications; returns how many used buffers are waiting."""
        ring = self._ring
        self._calls_wanted = True
        if self.event_idx:
            ring.avail.set_u16(ring.used_event_offset, self.last_used_idx)
        else:
            ring.avail.set_u16(0, 0)
        return (ring.used.u16(2) - self.last_used_idx) & IDX_MASK

    def disable_calls(self) -> None:
        """Ask for no used buffer notifications (with EVENT_IDX: stop moving used_event)."""
        self._calls_wanted = False
        if not self.event_idx:
            self._ring.avail.set_u16(0, AVAIL_F_NO_INTERRUPT)


def _linked(entries: list[tuple[int, int, int]], slots: list[int]) -> list[tuple]:
    # (addr, len, flags) entries placed at `slots`, each but the last with NEXT to the following
    # one (§2.7.5): the descriptors as (addr, len, flags, next).
    last = len(entries) - 1
    return [
        (addr, length, flags | F_NEXT, slots[k + 1]) if k < last else (addr, length, flags, 0)
        for k, (addr, length, flags) in enumerate(entries)
    ]
