"""A guest's side of one virtqueue, for tests, benchmarks and fuzzers.

`GuestDriver` lays a ring, a pool of buffers and room for indirect tables out in guest memory,
offers buffers through a real DriverQueue, and also gives raw access to the ring so that a test
can write what no well-behaved driver would.
"""

from __future__ import annotations

import numpy as np

from fastpath.hv import GuestMemory
from fastpath.vring import (
    PACKED_DESC_DTYPE,
    SPLIT_DESC_DTYPE,
    DeviceQueue,
    PackedDeviceQueue,
    PackedDriverQueue,
    SplitDeviceQueue,
    SplitDriverQueue,
    ring_bytes,
    ring_layout,
)

RING_BASE = 0x1000
TABLE_ENTRIES = 64


class GuestDriver:
    """One queue's driver over its own guest memory.

    Memory: the ring at RING_BASE, then a pool of `buffer_size`-byte buffers (one slot per
    piece), then one indirect table per ring slot. With `hole`, the pool starts in a second
    region after an unmapped gap, so every buffer address crosses a hole from the ring.
    """

    def __init__(self, *, packed: bool = False, size: int = 256, event_idx: bool = False,
                 indirect: bool = False, buffer_size: int = 2048, buffers: int | None = None,
                 hole: bool = False):
        self.packed = packed
        self.size = size
        self.buffer_size = buffer_size
        nbuffers = buffers or 2 * size
        ring_end = RING_BASE + ring_bytes(size, packed)
        tables = 16 * TABLE_ENTRIES * size
        front = _round_up(ring_end + tables, 1 << 20)
        pool = _round_up(nbuffers * buffer_size, 1 << 20)
        if hole:
            self.pool_base = front + (1 << 20)
            layout = [(0, front), (self.pool_base, pool)]
        else:
            self.pool_base = front
            layout = [(0, front + pool)]
        self.memory = GuestMemory(layout)
        self.addresses = ring_layout(size, RING_BASE, packed)
        self.tables_base = _round_up(ring_end, 16)
        queue_class = PackedDriverQueue if packed else SplitDriverQueue
        self.event_idx = event_idx
        self.indirect = indirect
        self.queue = queue_class(self.memory, size, self.addresses, event_idx=event_idx,
                                 indirect=indirect)
        self._free_slots = list(range(nbuffers - 1, -1, -1))
        self._free_tables = list(range(size - 1, -1, -1))
        # buffer id -> (readable slots, writable slots, indirect table or None)
        self._in_flight: dict[int, tuple[list[int], list[int], int | None]] = {}
        desc_dtype = PACKED_DESC_DTYPE if packed else SPLIT_DESC_DTYPE
        self.desc = self.memory.view(self.addresses.desc, 16 * size).view(desc_dtype)

    def device(self, **overrides) -> DeviceQueue:
        """A device-side queue on the same ring, with the same features unless overridden."""
        kwargs = {"event_idx": self.event_idx, "indirect": self.indirect} | overrides
        cls = PackedDeviceQueue if self.packed else SplitDeviceQueue
        return cls(self.memory, self.size, self.addresses, **kwargs)

    def buffer_address(self, slot: int) -> int:
        """Guest-physical address of buffer slot `slot`."""
        return self.pool_base + slot * self.buffer_size

    def table_address(self, slot: int) -> int:
        """Guest-physical address of indirect table number `slot` (TABLE_ENTRIES descriptors)."""
        return self.tables_base + slot * 16 * TABLE_ENTRIES

    def send(self, data: bytes, *, pieces: int = 1, writable: int = 0,
             indirect: bool = False) -> int:
        """Offer data (split over `pieces` buffers) plus `writable` empty buffers; returns id."""
        if len(data) > pieces * self.buffer_size:
            raise ValueError("data does not fit the pieces asked for")
        taken = self._take_slots(pieces + writable)
        out_slots, in_slots = taken[:pieces], taken[pieces:]
        readable = []
        step = -(-len(data) // pieces) if data else 0
        for k, slot in enumerate(out_slots):
            chunk = data[k * step : (k + 1) * step]
            self.memory.write(self.buffer_address(slot), chunk)
            readable.append((self.buffer_address(slot), len(chunk)))
        return self._add(out_slots, in_slots, readable, indirect)

    def offer(self, pieces: int = 1, *, indirect: bool = False) -> int:
        """Offer `pieces` empty device-writable buffers as one chain; returns its id."""
        return self._add([], self._take_slots(pieces), [], indirect)

    def _take_slots(self, n: int) -> list[int]:
        if n > len(self._free_slots):
            raise ValueError(f"the buffer pool has {len(self._free_slots)} free, not {n}")
        return [self._free_slots.pop() for _ in range(n)]

    def _add(self, out_slots, in_slots, readable, indirect) -> int:
        if indirect and len(out_slots) + len(in_slots) > TABLE_ENTRIES:
            self._free_slots.extend(out_slots + in_slots)
            raise ValueError(f"an indirect table here holds {TABLE_ENTRIES} pieces at most")
        writable = [(self.buffer_address(s), self.buffer_size) for s in in_slots]
        # Each buffer in flight keeps its own indirect table until it is collected.
        table = self._free_tables.pop() if indirect and self._free_tables else None
        try:
            if indirect and table is None:
                raise ValueError("every indirect table is in flight")
            buffer_id = self.queue.add(
                readable, writable, indirect_table=self.table_address(table) if indirect else 0
            )
        except Exception:
            self._free_slots.extend(out_slots + in_slots)
            if table is not None:
                self._free_tables.append(table)
            raise
        self._in_flight[buffer_id] = (out_slots, in_slots, table)
        return buffer_id

    def collect(self) -> list[tuple[int, bytes]]:
        """Used buffers as (id, bytes the device wrote into the writable pieces)."""
        done = []
        for buffer_id, written in self.queue.collect():
            out_slots, in_slots, table = self._in_flight.pop(buffer_id)
            reply = bytearray()
            for s in in_slots:
                if len(reply) >= written:
                    break
                take = min(self.buffer_size, written - len(reply))
                reply += self.memory.read(self.buffer_address(s), take)
            self._free_slots.extend(out_slots + in_slots)
            if table is not None:
                self._free_tables.append(table)
            done.append((buffer_id, bytes(reply)))
        return done

    # Raw access, for writing what a correct driver never would.

    def avail_ring(self) -> np.ndarray:
        """Split only: the avail ring as u16 [flags, idx, ring..., used_event]."""
        return self.memory.view(self.addresses.driver, 6 + 2 * self.size).view(np.uint16)

    def used_ring(self) -> np.ndarray:
        """Split only: the used ring as u32 pairs after [flags, idx] (view from byte 4)."""
        return self.memory.view(self.addresses.device + 4, 8 * self.size).view(np.uint32)

    def publish_heads(self, heads: list[int]) -> None:
        """Split only: put raw head indices on the avail ring and publish them."""
        avail = self.avail_ring()
        idx = int(avail[1])
        for h in heads:
            avail[2 + (idx % self.size)] = h
            idx = (idx + 1) & 0xFFFF
        avail[1] = idx


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to
