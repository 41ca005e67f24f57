"""vhost-user inflight I/O tracking as the spec writes it: the oracle for the ring layer's.

QEMU docs/interop/vhost-user.rst, "Inflight I/O tracking", split and packed virtqueues: what a
back-end writes to a queue's region as it takes buffers from the driver and as it gives them
back used, and what a back-end started after a crash does with the region it is handed ("When
reconnecting"). `TrackedSplitDevice` and `TrackedPackedDevice` are the reference devices of
`split` and `packed` that record their pops and pushes step by step in that order, every store
to the region or the ring one step; with `crash_after=n` the back-end dies (`Crash`) just
before its store number n (from 0), leaving ring and region as a real back-end killed there
would. Their `recorded` list holds the ids of the chains whose recording was complete, in pop
order, and `stores_made` counts their stores so far.
`recover_split` and `recover_packed` carry out the reconnection steps and say what was in
flight, oldest first. Plain Python, one step at a time, for readability, over the region
layouts of fastpath.vring (`InflightRegion`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from fastpath.hv import GuestMemory
from fastpath.testing.reference._common import F_WRITE, Chain
from fastpath.testing.reference.packed import (
    DESC_SIZE,
    F_AVAIL,
    F_USED,
    FLAGS_OFFSET,
    PackedDevice,
    advance,
)
from fastpath.testing.reference.split import IDX_MASK, SplitDevice
from fastpath.vring import INFLIGHT_VERSION, InflightRegion


class Crash(Exception):
    """The reference back-end died before the store it was about to make."""


class _Stores:
    """Every store a tracked reference device makes, counted: the one numbered `crash_after`
    (from 0) raises Crash instead."""

    def __init__(self, crash_after: int | None):
        self.crash_after = crash_after
        self.made = 0

    def __call__(self, store: Callable[..., None], *args) -> None:
        if self.made == self.crash_after:
            raise Crash(f"killed before store {self.made}")
        store(*args)
        self.made += 1


def _set(array, index: int, field: str, value: int) -> None:
    array[field][index] = value


def _fresh(region: InflightRegion) -> InflightRegion:
    if region.holds_state:
        raise ValueError("a tracked reference device starts from a fresh region")
    region.desc[...] = 0
    region.header["desc_num"] = region.desc_num
    return region


class TrackedSplitDevice(SplitDevice):
    """A reference split device that records its chains in a fresh inflight `region` (version
    0, which it initialises) as the spec's split virtqueue steps say."""

    def __init__(self, memory: GuestMemory, size: int, addresses, region: InflightRegion, *,
                 crash_after: int | None = None, **features):
        super().__init__(memory, size, addresses, **features)
        self.region = _fresh(region)
        self.recorded: list[int] = []
        self._store = _Stores(crash_after)
        self._counter = 0
        region.header["used_idx"] = self._ring.used.u16(2)
        region.header["version"] = INFLIGHT_VERSION

    @property
    def stores_made(self) -> int:
        """Stores to the ring or the region so far."""
        return self._store.made

    def pop(self, max_chains: int = 32) -> list[Chain]:
        """As SplitDevice.pop, then each chain recorded: "Set desc[i].counter to the value of
        global counter; increase global counter by 1; set desc[i].inflight to 1"."""
        chains = super().pop(max_chains)
        desc = self.region.desc
        for chain in chains:
            if chain.id >= self.size:
                continue  # a head outside the ring names no descriptor to record
            self._store(_set, desc, chain.id, "counter", self._counter)
            self._counter += 1
            self._store(_set, desc, chain.id, "inflight", 1)
            self.recorded.append(chain.id)
        return chains

    def push(self, used: Iterable[tuple[Chain, int]]) -> int:
        """"When supplying used buffers": each head linked into the batch list and its used
        element written, the used ring's idx moved past the batch, then each head's inflight
        cleared, then the region's used_idx set to the ring's idx."""
        ring, region = self._ring, self.region
        header, desc = region.header, region.desc
        idx = self._used_idx
        batch = []
        for chain, written in used:
            if not self._release(chain):
                continue
            self._store(_set, desc, chain.id, "next", int(header["last_batch_head"][0]))
            self._store(_set, header, 0, "last_batch_head", chain.id)
            offset = ring.used_entry_offset(idx)
            self._store(ring.used.set_u32, offset, chain.id)
            self._store(ring.used.set_u32, offset + 4, min(written, chain.writable_len))
            idx = (idx + 1) & IDX_MASK
            batch.append(chain.id)
        self._store(ring.used.set_u16, 2, idx)
        self._used_idx = idx
        for head in batch:
            self._store(_set, desc, head, "inflight", 0)
        self._store(_set, header, 0, "used_idx", idx)
        self.pushed += len(batch)
        return len(batch)


def recover_split(region: InflightRegion, ring_used_idx: int) -> list[int]:
    """"When reconnecting" for a split ring whose used ring's idx is `ring_used_idx`: a batch
    the ring shows used is cleared from the batch list, then the heads still in flight are the
    ones to resubmit, returned in order of their counters."""
    header, desc = region.header, region.desc
    used_idx = int(header["used_idx"][0])
    if used_idx != ring_used_idx:
        head = int(header["last_batch_head"][0])
        for _ in range((ring_used_idx - used_idx) & IDX_MASK):
            desc["inflight"][head] = 0
            head = int(desc["next"][head])
        header["used_idx"] = ring_used_idx
    heads = [i for i in range(region.desc_num) if desc["inflight"][i]]
    return sorted(heads, key=lambda i: int(desc["counter"][i]))


class TrackedPackedDevice(PackedDevice):
    """A reference packed device that records its chains in a fresh inflight `region` (version
    0, which it initialises: every entry on the free list, in order) as the spec's packed
    virtqueue steps say. Its used and avail positions are set before it pops or pushes."""

    def __init__(self, memory: GuestMemory, size: int, addresses, region: InflightRegion, *,
                 crash_after: int | None = None, **features):
        super().__init__(memory, size, addresses, **features)
        self.region = _fresh(region)
        self.recorded: list[int] = []
        self._store = _Stores(crash_after)
        self._counter = 0
        self._heads: dict[int, int] = {}  # buffer id -> its chain's first entry
        region.desc["next"] = range(1, region.desc_num + 1)
        header = region.header
        header["free_head"] = header["old_free_head"] = 0
        self._note_used_state()
        header["version"] = INFLIGHT_VERSION

    @PackedDevice.used_state.setter
    def used_state(self, value: tuple[int, int]) -> None:
        PackedDevice.used_state.fset(self, value)
        self._note_used_state()

    def _note_used_state(self) -> None:
        # The region starts where the device's used position is.
        header = self.region.header
        header["used_idx"] = header["old_used_idx"] = self._next_used
        header["used_wrap_counter"] = header["old_used_wrap_counter"] = self._used_wrap

    @property
    def stores_made(self) -> int:
        """Stores to the ring or the region so far."""
        return self._store.made

    def pop(self, max_chains: int = 32) -> list[Chain]:
        """As PackedDevice.pop, then each chain's descriptors recorded one by one: a head
        starts the chain's entry (num 0, counter, inflight 1), each descriptor is copied into
        the entry at free_head, which moves on along the list, the last sets the head's `last`,
        and old_free_head catches up with free_head."""
        slot, _ = self.avail_state
        chains = super().pop(max_chains)
        header, desc = self.region.header, self.region.desc
        for chain in chains:
            head = int(header["old_free_head"][0])
            for k in range(chain.ndesc):
                addr, length, buffer_id, flags = self._ring.descriptor((slot + k) % self.size)
                free = int(header["free_head"][0])
                if k == 0:
                    self._store(_set, desc, head, "num", 0)
                    self._store(_set, desc, head, "counter", self._counter)
                    self._counter += 1
                    self._store(_set, desc, head, "inflight", 1)
                if k == chain.ndesc - 1:
                    self._store(_set, desc, head, "last", free)
                self._store(_set, desc, head, "num", int(desc["num"][head]) + 1)
                for field, value in (("addr", addr), ("len", length), ("flags", flags),
                                     ("id", buffer_id)):
                    self._store(_set, desc, free, field, value)
                self._store(_set, header, 0, "free_head", int(desc["next"][free]))
            self._store(_set, header, 0, "old_free_head", int(header["free_head"][0]))
            self._heads[chain.id] = head
            self.recorded.append(chain.id)
            slot = (slot + chain.ndesc) % self.size
        return chains

    def push(self, used: Iterable[tuple[Chain, int]]) -> int:
        """"When supplying used buffers", one chain at a time (batches of one): its entries go
        back on the free list (its last entry's next to free_head, free_head to its head), its
        used descriptor's id and len are written, used_idx and the wrap counter move past it,
        its flags are written, its head's inflight is cleared, and the old_* values catch up.

        Batches of more would write the later used descriptors before the first one's flags,
        and after a roll-back those slots would look used to the driver."""
        header, desc = self.region.header, self.region.desc
        pushed = 0
        for chain, written in used:
            if not self._release(chain):
                continue
            head = self._heads.pop(chain.id)
            self._store(_set, desc, int(desc["last"][head]), "next", int(header["free_head"][0]))
            self._store(_set, header, 0, "free_head", head)
            length = min(written, chain.writable_len)
            offset = DESC_SIZE * self._next_used
            self._store(self._ring.ring.set_u32, offset + 8, length)
            self._store(self._ring.ring.set_u16, offset + 12, chain.id)
            flags = (F_AVAIL | F_USED if self._used_wrap else 0) | (F_WRITE if length else 0)
            pos, wrap = advance(self._next_used, self._used_wrap, chain.ndesc, self.size)
            self._store(_set, header, 0, "used_idx", pos)
            self._store(_set, header, 0, "used_wrap_counter", wrap)
            self._store(self._ring.ring.set_u16, offset + FLAGS_OFFSET, flags)
            self._next_used, self._used_wrap = pos, wrap
            self._used_since_notify += chain.ndesc
            self._store(_set, desc, head, "inflight", 0)
            self._store(_set, header, 0, "old_free_head", int(header["free_head"][0]))
            self._store(_set, header, 0, "old_used_idx", pos)
            self._store(_set, header, 0, "old_used_wrap_counter", wrap)
            pushed += 1
        self.pushed += pushed
        return pushed


def recover_packed(region: InflightRegion, memory: GuestMemory, addresses, size: int
                   ) -> tuple[list[int], tuple[int, int], tuple[int, int]]:
    """"When reconnecting" for a packed ring of `size` slots at `addresses` in `memory`: a
    push under way is kept if its first used descriptor reached the ring and rolled back
    otherwise, a pop under way is rolled back, the free list's entries are cleared, and the
    heads still in flight are the ones to resubmit, in order of their counters. Returns them,
    the used position (slot, wrap counter) and the avail position: the used one moved on by the
    slots of the chains in flight."""
    header, desc = region.header, region.desc
    current = (int(header["used_idx"][0]), int(header["used_wrap_counter"][0]))
    old = (int(header["old_used_idx"][0]), int(header["old_used_wrap_counter"][0]))
    if current != old:
        flags = int.from_bytes(memory.read(addresses.desc + DESC_SIZE * old[0] + FLAGS_OFFSET,
                                           2), "little")
        available = F_AVAIL if old[1] else F_USED
        if flags & (F_AVAIL | F_USED) != available:
            header["old_free_head"] = header["free_head"]
            header["old_used_idx"], header["old_used_wrap_counter"] = current
    header["free_head"] = header["old_free_head"]
    header["used_idx"] = header["old_used_idx"]
    header["used_wrap_counter"] = header["old_used_wrap_counter"]
    entry = int(header["free_head"][0])
    while entry < region.desc_num:
        desc["inflight"][entry] = 0
        entry = int(desc["next"][entry])
    heads = sorted((i for i in range(region.desc_num) if desc["inflight"][i]),
                   key=lambda i: int(desc["counter"][i]))
    used = (int(header["used_idx"][0]), int(header["used_wrap_counter"][0]))
    avail = advance(*used, sum(int(desc["num"][h]) for h in heads), size)
    return heads, used, avail
