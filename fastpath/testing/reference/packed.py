"""A plain-Python packed virtqueue (virtio 1.2 §2.8), device side and driver side.

The ring lives in guest memory exactly as §2.8 lays it out, so either side can face the compiled
queues of fastpath.vring on the same ring. Layout (little-endian):

    descriptor ring           16 bytes each: u64 addr, u32 len, u16 id, u16 flags  (§2.8.13)
    driver event suppression  u16 off_wrap, u16 flags   (written by the driver)    (§2.8.14)
    device event suppression  u16 off_wrap, u16 flags   (written by the device)

Both sides keep a wrap counter that starts at 1 and flips each time they pass the ring's last
slot (§2.8.1). A slot is available when its AVAIL bit equals the driver's counter and its USED
bit does not; used when both equal the device's counter.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from fastpath.errors import (
    BadIndirectTable,
    ChainLoop,
    ChainTooLarge,
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
    passed_slot,
    too_large,
)

DESC = struct.Struct("<QIHH")  # addr, len, id, flags
DESC_BODY = struct.Struct("<QIH")  # addr, len, id: all but the flags
F_AVAIL = 1 << 7
F_USED = 1 << 15
FLAGS_OFFSET = 14  # of a descriptor's flags
# §2.8.14: desc_event_flags.
EVENT_ENABLE = 0
EVENT_DISABLE = 1
EVENT_DESC = 2
WRAP_BIT = 1 << 15  # of off_wrap


def is_available(flags: int, wrap: int) -> bool:
    """§2.8.1: AVAIL matches the wrap counter and USED does not."""
    return bool(flags & F_AVAIL) == bool(wrap) != bool(flags & F_USED)


def is_used(flags: int, wrap: int) -> bool:
    """§2.8.1: AVAIL and USED both match the wrap counter."""
    return bool(flags & F_AVAIL) == bool(wrap) == bool(flags & F_USED)


def advance(pos: int, wrap: int, by: int, size: int) -> tuple[int, int]:
    """(pos, wrap) moved on `by` slots; passing the last slot flips the wrap counter (§2.8.1)."""
    pos += by
    while pos >= size:
        pos -= size
        wrap ^= 1
    return pos, wrap


class _PackedAreas:
    """The descriptor ring and the two event suppression structures of a packed ring."""

    def __init__(self, memory: GuestMemory, size: int, addresses):
        check_size(size, packed=True)
        self.size = size
        # §2.8.10.1: alignment 16, 4 and 4 bytes.
        self.ring = Area(memory, addresses.desc, DESC_SIZE * size, 16, "descriptor ring")
        self.driver_event = Area(memory, addresses.driver, 4, 4, "driver event suppression")
        self.device_event = Area(memory, addresses.device, 4, 4, "device event suppression")

    def descriptor(self, slot: int) -> tuple[int, int, int, int]:
        return DESC.unpack_from(self.ring.bytes, DESC_SIZE * slot)

    def flags(self, slot: int) -> int:
        return self.ring.u16(DESC_SIZE * slot + FLAGS_OFFSET)


def event_wanted(event: Area, pos: int, wrap: int, moved: int, size: int,
                 event_idx: bool) -> bool:
    """§2.8.10: does the other side want to hear that the `moved` slots before (pos, wrap) moved?

    ENABLE: yes; DISABLE: no; DESC (only with EVENT_IDX): if the slot and wrap counter in
    off_wrap are among them. The spec leaves DESC without EVENT_IDX and the reserved value 3
    undefined; like the compiled core, this model sends nothing for them.
    """
    flags = event.u16(2) & 0x3
    if flags == EVENT_ENABLE:
        return True
    if flags == EVENT_DESC and event_idx:
        off_wrap = event.u16(0)
        return passed_slot(off_wrap & ~WRAP_BIT, off_wrap >> 15, pos, wrap, moved, size)
    return False


class PackedDevice(DeviceBase):
    """Device side of a packed virtqueue at guest-physical `addresses` (a RingAddresses).

    The same face as fastpath.vring.PackedDeviceQueue, in plain Python: `pop` returns Chain
    objects, `push` takes (chain, bytes written) pairs. Only chains this device popped and has not
    pushed may be pushed; any other is counted as UnknownUsedId and skipped. Kicks are switched
    with ENABLE and DISABLE only; this device never asks for one at a given descriptor.
    """

    def __init__(self, memory: GuestMemory, size: int, addresses, *, event_idx: bool = False,
                 indirect: bool = False):
        super().__init__(memory, size, event_idx, indirect)
        self._ring = _PackedAreas(memory, size, addresses)
        self.reset()

    def _restart(self) -> None:
        # §2.8.1: both wrap counters start at 1.
        self._next_avail, self._avail_wrap = 0, 1
        self._next_used, self._used_wrap = 0, 1
        self._used_since_notify = 0

    @property
    def avail_state(self) -> tuple[int, int]:
        """(next slot to pop, its wrap counter)."""
        return self._next_avail, self._avail_wrap

    @avail_state.setter
    def avail_state(self, value: tuple[int, int]) -> None:
        self._next_avail, self._avail_wrap = value[0], int(bool(value[1]))

    @property
    def used_state(self) -> tuple[int, int]:
        """(next slot for a used descriptor, its wrap counter); setting it forgets notifications."""
        return self._next_used, self._used_wrap

    @used_state.setter
    def used_state(self, value: tuple[int, int]) -> None:
        self._next_used, self._used_wrap = value[0], int(bool(value[1]))
        self._used_since_notify = 0

    def pop(self, max_chains: int = 32) -> list[Chain]:
        """Up to max_chains available chains, in ring order; a bad one comes back with `error`.

        A list that never ends (more descriptors than the ring holds) cannot be stepped over: the
        queue stops, raising ChainLoop if nothing came before it, and QueueBroken from then on.
        """
        if self.broken:
            raise QueueBroken("the queue stopped on a descriptor list with no end; reset it")
        chains: list[Chain] = []
        while len(chains) < max_chains:
            if not is_available(self._ring.flags(self._next_avail), self._avail_wrap):
                break
            descriptors = self._take_list()
            if descriptors is None:
                self.broken = True
                self.errors.record(ChainLoop)
                if not chains:
                    raise ChainLoop("a descriptor list is longer than the ring")
                break
            chain = self._read_chain(descriptors)
            self._hold(chain)
            chains.append(chain)
        self.popped += len(chains)
        return chains

    def _take_list(self) -> list[tuple[int, int, int, int]] | None:
        # §2.8.6: a list runs on through NEXT; §2.8.17: it is never longer than the ring.
        pos, wrap = self._next_avail, self._avail_wrap
        descriptors = []
        while True:
            if len(descriptors) == self.size:
                return None
            descriptors.append(self._ring.descriptor(pos))
            pos, wrap = advance(pos, wrap, 1, self.size)
            if not descriptors[-1][3] & F_NEXT:
                break
        self._next_avail, self._avail_wrap = pos, wrap
        return descriptors

    def _read_chain(self, descriptors: list[tuple[int, int, int, int]]) -> Chain:
        buffer_id = descriptors[-1][2]  # §2.8.6: the buffer id is in the list's last descriptor
        ndesc = len(descriptors)
        pieces: list[Piece] = []
        for k, (addr, length, _, flags) in enumerate(descriptors):
            if flags & F_INDIRECT:
                # §2.8.19: an indirect descriptor stands alone (never in a NEXT list).
                if k or flags & F_NEXT or not self._indirect_table_ok(addr, length):
                    return failed(buffer_id, ndesc, BadIndirectTable)
                table = self.memory.read(addr, length)
                entries = [DESC.unpack_from(table, o) for o in range(0, length, DESC_SIZE)]
            else:
                entries = [(addr, length, 0, flags)]
            for e_addr, e_length, _, e_flags in entries:
                if e_flags & F_INDIRECT:
                    # §2.8.19: only WRITE is valid in a table; a nested table is refused.
                    return failed(buffer_id, ndesc, BadIndirectTable)
                error = add_piece(self.memory, pieces, e_addr, e_length, bool(e_flags & F_WRITE))
                if error:
                    return failed(buffer_id, ndesc, error)
        chain = Chain(buffer_id, ndesc, pieces)
        return failed(buffer_id, ndesc, ChainTooLarge) if too_large(chain) else chain

    def _indirect_table_ok(self, addr: int, length: int) -> bool:
        # §2.8.7, §2.8.19: only if negotiated, a whole number of descriptors, and (fastpath's
        # rule for anything read in place) inside one region of guest memory.
        return bool(
            self.indirect
            and length
            and length % DESC_SIZE == 0
            and inside_one_region(self.memory, addr, length)
        )

    def push(self, used: Iterable[tuple[Chain, int]]) -> int:
        """Return (chain, bytes written) pairs as used, in the order given; returns how many."""
        pushed = 0
        for chain, written in used:
            if not self._release(chain):
                continue
            length = min(written, chain.writable_len)
            offset = DESC_SIZE * self._next_used
            # §2.8.4: len is what was written; §2.8.3: WRITE says whether anything was.
            self._ring.ring.set_u32(offset + 8, length)
            self._ring.ring.set_u16(offset + 12, chain.id)
            flags = (F_AVAIL | F_USED if self._used_wrap else 0) | (F_WRITE if length else 0)
            self._ring.ring.set_u16(offset + FLAGS_OFFSET, flags)  # last: hands the slot back
            # §2.8.6: one used descriptor stands for the whole list; skip the rest of its slots.
            self._next_used, self._used_wrap = advance(self._next_used, self._used_wrap,
                                                       chain.ndesc, self.size)
            self._used_since_notify += chain.ndesc
            pushed += 1
        self.pushed += pushed
        return pushed

    def should_notify(self) -> bool:
        """Whether the driver wants a used buffer notification for what was pushed since."""
        moved, self._used_since_notify = self._used_since_notify, 0
        return bool(moved) and event_wanted(self._ring.driver_event, self._next_used,
                                            self._used_wrap, moved, self.size, self.event_idx)

    def enable_kicks(self) -> int:
        """Ask the driver to kick again; returns 1 if a chain is already waiting, else 0."""
        self._ring.device_event.set_u16(2, EVENT_ENABLE)
        return int(is_available(self._ring.flags(self._next_avail), self._avail_wrap))

    def disable_kicks(self) -> None:
        """Tell the driver not to kick."""
        self._ring.device_event.set_u16(2, EVENT_DISABLE)


class PackedDriver(DriverBase):
    """Driver side of a packed virtqueue at guest-physical `addresses`; creating it clears the ring.

    Free buffer ids are reused most recently freed first, as the compiled driver does: any order
    is valid, this one makes ids comparable. While used buffer notifications are on with
    EVENT_IDX, every collect moves the event on to the next used slot.
    """

    def __init__(self, memory: GuestMemory, size: int, addresses, *, event_idx: bool = False,
                 indirect: bool = False):
        super().__init__(memory, size, event_idx, indirect)
        self._ring = _PackedAreas(memory, size, addresses)
        for area in (self._ring.ring, self._ring.driver_event, self._ring.device_event):
            area.clear()  # §2.8.13: the descriptor ring starts zeroed
        self._next_avail, self._avail_wrap = 0, 1
        self._last_used, self._used_wrap = 0, 1
        self._free_ids = list(range(size - 1, -1, -1))  # a stack: the next id is at the end
        self._ndesc: dict[int, int] = {}  # buffer id -> ring slots its list took
        self._num_free = size
        self._added_since_kick = 0
        self._calls_wanted = True

    @property
    def num_free(self) -> int:
        """Free ring slots."""
        return self._num_free

    @property
    def avail_state(self) -> tuple[int, int]:
        """(next slot to make available, the driver's wrap counter)."""
        return self._next_avail, self._avail_wrap

    @property
    def used_state(self) -> tuple[int, int]:
        """(next slot to look at for a used descriptor, its wrap counter)."""
        return self._last_used, self._used_wrap

    def add(self, readable: Iterable[tuple[int, int]] = (),
            writable: Iterable[tuple[int, int]] = (), *, indirect_table: int = 0) -> int:
        """Offer one buffer of (guest address, length) pieces, readable first; returns its id.

        With indirect_table (room for 16 bytes per piece) the pieces go into that table and the
        buffer takes one ring slot. Raises RingFull, or ValueError for a buffer that can never be
        added; GuestMemoryError if the table is outside guest memory.
        """
        pieces = self._pieces(readable, writable, indirect_table)
        need = 1 if indirect_table else len(pieces)
        if need > self._num_free:
            raise RingFull(f"no room for a {len(pieces)}-piece buffer ({self._num_free} free)")
        entries = [(p.gpa, p.length, F_WRITE if p.writable else 0) for p in pieces]
        if indirect_table:
            # §2.8.7: the table's entries in order; only WRITE is set, ids are reserved.
            table = b"".join(DESC.pack(addr, n, 0, flags) for addr, n, flags in entries)
            self.memory.write(indirect_table, table)
            entries = [(indirect_table, len(table), F_INDIRECT)]
        buffer_id = self._free_ids.pop()
        head, head_flags = self._next_avail, 0
        # §2.8.21.1: fill the slots in order; the head's flags go last, exposing the whole list.
        for k, (addr, length, flags) in enumerate(entries):
            flags |= (F_NEXT if k + 1 < len(entries) else 0) | (
                F_AVAIL if self._avail_wrap else F_USED)
            offset = DESC_SIZE * self._next_avail
            DESC_BODY.pack_into(self._ring.ring.bytes, offset, addr, length, buffer_id)
            if k == 0:
                head_flags = flags
            else:
                self._ring.ring.set_u16(offset + FLAGS_OFFSET, flags)
            self._next_avail, self._avail_wrap = advance(self._next_avail, self._avail_wrap, 1,
                                                         self.size)
        self._ring.ring.set_u16(DESC_SIZE * head + FLAGS_OFFSET, head_flags)
        self._ndesc[buffer_id] = need
        self._num_free -= need
        self._added_since_kick += need
        return buffer_id

    def should_kick(self) -> bool:
        """Whether the device wants an available buffer notification for what was added since."""
        moved, self._added_since_kick = self._added_since_kick, 0
        return bool(moved) and event_wanted(self._ring.device_event, self._next_avail,
                                            self._avail_wrap, moved, self.size, self.event_idx)

    def collect(self, max_n: int = 256) -> list[tuple[int, int]]:
        """Used buffers as (id, bytes written), in the order the device used them (§2.8.22)."""
        done = []
        while len(done) < max_n:
            _, length, buffer_id, flags = self._ring.descriptor(self._last_used)
            if not is_used(flags, self._used_wrap):
                break
            ndesc = self._ndesc.pop(buffer_id, None)
            if ndesc is None:
                # Nothing says how far to skip: take the next slot as the next used one.
                self.errors.record(UnknownUsedId)
                ndesc = 1
            else:
                self._num_free += ndesc
                self._free_ids.append(buffer_id)
                # §2.8.4: len is reserved, and ignored, unless WRITE is set.
                done.append((buffer_id, length if flags & F_WRITE else 0))
            # §2.8.6: skip the rest of the list's slots to where the next used one is.
            self._last_used, self._used_wrap = advance(self._last_used, self._used_wrap, ndesc,
                                                       self.size)
        if self.event_idx and self._calls_wanted:
            # §2.8.10: keep asking for a notification at the next used slot.
            self._ring.driver_event.set_u16(0, self._off_wrap())
        return done

    def _off_wrap(self) -> int:
        return self._last_used | (WRAP_BIT if self._used_wrap else 0)

    def enable_calls(self) -> int:
        """Ask for used buffer notifications; returns 1 if a used buffer is waiting, else 0."""
        self._calls_wanted = True
        if self.event_idx:
            self._ring.driver_event.set_u16(0, self._off_wrap())
            self._ring.driver_event.set_u16(2, EVENT_DESC)
        else:
            self._ring.driver_event.set_u16(2, EVENT_ENABLE)
        return int(is_used(self._ring.flags(self._last_used), self._used_wrap))

    def disable_calls(self) -> None:
        """Ask for no used buffer notifications."""
        self._calls_wanted = False
        self._ring.driver_event.set_u16(2, EVENT_DISABLE)
