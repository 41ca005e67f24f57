"""vhost-user inflight I/O tracking on the device side: the queue regions, and what a queue
finds in one when it starts.

QEMU docs/interop/vhost-user.rst, "Inflight I/O tracking": a back-end that completes requests
out of order records what it pops in an area the front-end keeps (GET/SET_INFLIGHT_FD), one
region per queue, so that a back-end started after a crash can pop again what was in flight.
The layouts are defined once, as packed structs in fastpath/_core/split.pxd and packed.pxd;
the dtypes here mirror them and are held to the compiler's offsets at import. The core records
pops and pushes as it makes them; starting from a region that holds state (recovery) is done
here, once per ring start, with every value the front-end could have written checked first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastpath._core import packed as _packed
from fastpath._core import split as _split
from fastpath.errors import FastpathError
from fastpath.vring._layout import MAX_QUEUE_SIZE, PACKED_DESC_DTYPE

INFLIGHT_ALIGN = 64
"""Each queue's region starts on a multiple of this, as QEMU's libvhost-user and DPDK lay the
area out (INFLIGHT_ALIGNMENT in both)."""
INFLIGHT_VERSION = 1
"""The region format a ring writes; version 0 is a region nobody has initialised."""

# "Inflight I/O tracking", QueueRegionSplit and DescStateSplit (fastpath/_core/split.pxd).
SPLIT_INFLIGHT_REGION_DTYPE = np.dtype([
    ("features", "<u8"), ("version", "<u2"), ("desc_num", "<u2"), ("last_batch_head", "<u2"),
    ("used_idx", "<u2"),
])
SPLIT_INFLIGHT_DESC_DTYPE = np.dtype({
    "names": ["inflight", "next", "counter"],
    "formats": ["u1", "<u2", "<u8"],
    "offsets": [0, 6, 8],
    "itemsize": 16,
})
# QueueRegionPacked and DescStatePacked (fastpath/_core/packed.pxd). The header is 29 bytes
# of fields; C starts desc[] (u64 members) at 32.
PACKED_INFLIGHT_REGION_DTYPE = np.dtype({
    "names": ["features", "version", "desc_num", "free_head", "old_free_head", "used_idx",
              "old_used_idx", "used_wrap_counter", "old_used_wrap_counter"],
    "formats": ["<u8", "<u2", "<u2", "<u2", "<u2", "<u2", "<u2", "u1", "u1"],
    "offsets": [0, 8, 10, 12, 14, 16, 18, 20, 21],
    "itemsize": 32,
})
PACKED_INFLIGHT_DESC_DTYPE = np.dtype({
    "names": ["inflight", "next", "last", "num", "counter", "id", "flags", "len", "addr"],
    "formats": ["u1", "<u2", "<u2", "<u2", "<u8", "<u2", "<u2", "<u4", "<u8"],
    "offsets": [0, 2, 4, 6, 8, 16, 18, 20, 24],
    "itemsize": 32,
})


def _check_layout(dtype: np.dtype, size: int, offsets: dict[str, int]) -> None:
    assert dtype.itemsize == size, (dtype, size)
    assert {name: dtype.fields[name][1] for name in dtype.names} == offsets, dtype


_check_layout(SPLIT_INFLIGHT_REGION_DTYPE, _split.INFLIGHT_HEADER_SIZE,
              _split.inflight_offsets()["region"])
_check_layout(SPLIT_INFLIGHT_DESC_DTYPE, _split.INFLIGHT_DESC_SIZE,
              _split.inflight_offsets()["desc"])
_check_layout(PACKED_INFLIGHT_REGION_DTYPE, _packed.INFLIGHT_HEADER_SIZE,
              _packed.inflight_offsets()["region"])
_check_layout(PACKED_INFLIGHT_DESC_DTYPE, _packed.INFLIGHT_DESC_SIZE,
              _packed.inflight_offsets()["desc"])

# Descriptor flags a packed recovery looks at (virtio 1.2 §2.8.1).
_F_AVAIL = 1 << 7
_F_USED = 1 << 15


class BadInflightRegion(FastpathError):
    """An inflight queue region a ring cannot start from: an unknown version or features, a
    size other than the front-end gave, or records that cannot be (heads outside the ring,
    chains that leave the region or overlap, more in flight than the ring holds)."""


def inflight_region_size(queue_size: int, packed: bool) -> int:
    """Bytes of one queue's region for rings of up to `queue_size` descriptors: the header and
    one entry per descriptor, rounded up to INFLIGHT_ALIGN. The area GET_INFLIGHT_FD answers
    with is `num_queues` of these back to back, as libvhost-user and DPDK size it (QEMU only
    maps what the back-end gives and hands it back)."""
    if not 1 <= queue_size <= MAX_QUEUE_SIZE:
        raise ValueError(f"a queue region tracks 1 to {MAX_QUEUE_SIZE} descriptors, "
                         f"not {queue_size}")
    region, desc = ((PACKED_INFLIGHT_REGION_DTYPE, PACKED_INFLIGHT_DESC_DTYPE) if packed
                    else (SPLIT_INFLIGHT_REGION_DTYPE, SPLIT_INFLIGHT_DESC_DTYPE))
    size = region.itemsize + desc.itemsize * queue_size
    return -(-size // INFLIGHT_ALIGN) * INFLIGHT_ALIGN


class InflightRegion:
    """One queue's region of a vhost-user inflight area, for a device queue to record in
    (`DeviceQueue.track_inflight`).

    `buffer` is writable memory shared with the front-end (a uint8 array of at least
    `inflight_region_size(desc_num, packed)` bytes, 8-byte aligned); whoever made it keeps it
    mapped while this object lives. `desc_num` is the inflight description's queue size: the
    entries of the region, at least the ring's size. `header` and `desc` are views of the
    region through the layout's dtypes.
    """

    def __init__(self, buffer: np.ndarray, desc_num: int, packed: bool):
        need = inflight_region_size(desc_num, packed)
        if buffer.dtype != np.uint8 or buffer.ndim != 1 or not buffer.flags.c_contiguous:
            raise ValueError("an inflight region is a contiguous uint8 array")
        if not buffer.flags.writeable or len(buffer) < need:
            raise ValueError(f"an inflight region of {desc_num} entries needs {need} writable "
                             f"bytes, not {len(buffer)}")
        if buffer.ctypes.data % 8:
            raise ValueError("an inflight region must be 8-byte aligned")
        region, desc = ((PACKED_INFLIGHT_REGION_DTYPE, PACKED_INFLIGHT_DESC_DTYPE) if packed
                        else (SPLIT_INFLIGHT_REGION_DTYPE, SPLIT_INFLIGHT_DESC_DTYPE))
        self.buffer = buffer
        self.desc_num = desc_num
        self.packed = packed
        self.header = buffer[:region.itemsize].view(region)
        self.desc = buffer[region.itemsize:region.itemsize + desc.itemsize * desc_num].view(desc)

    @property
    def address(self) -> int:
        """The region's address in this process, for the core."""
        return self.buffer.ctypes.data

    @property
    def holds_state(self) -> bool:
        """Whether a ring has initialised the region (version not 0): it records what that
        ring had in flight."""
        return int(self.header["version"][0]) != 0

    def check(self, ring_size: int) -> None:
        """Raise BadInflightRegion unless a ring of `ring_size` descriptors can record here, and,
        if the region holds state, unless that state is of a format this side knows."""
        if ring_size > self.desc_num:
            raise BadInflightRegion(f"a region of {self.desc_num} entries cannot track a ring "
                                    f"of {ring_size}")
        if not self.holds_state:
            return
        header = self.header[0]
        if int(header["version"]) != INFLIGHT_VERSION or int(header["features"]):
            raise BadInflightRegion(f"region version {int(header['version'])}, features "
                                    f"{int(header['features']):#x}: only version 1 without "
                                    "features is known")
        if int(header["desc_num"]) != self.desc_num:
            raise BadInflightRegion(f"the region was laid out for {int(header['desc_num'])} "
                                    f"entries, not the {self.desc_num} the front-end says")
        if np.any(self.desc["inflight"] > 1):
            raise BadInflightRegion("an entry's inflight field is neither 0 nor 1")

    def next_counter(self) -> int:
        """A counter value past every entry's, so that what is popped from now on sorts after
        what was in flight before."""
        return (int(self.desc["counter"].max()) + 1) % (1 << 64) if self.desc_num else 0


def oldest_first(region: InflightRegion, heads: np.ndarray) -> np.ndarray:
    """`heads` in the order their chains were popped: by counter, ties by index."""
    order = np.lexsort((heads, region.desc["counter"][heads]))
    return heads[order].astype(np.uint16)


# --- split rings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitRecord:
    """What a split ring goes on from: the heads to pop again (oldest first), the counter and
    the last batch's head."""

    resubmit: np.ndarray
    counter: int
    last_batch_head: int


def start_split(region: InflightRegion, used_idx: int) -> SplitRecord:
    """Initialise an uninitialised region for a ring whose used ring's idx is `used_idx`."""
    region.desc[...] = 0
    header = region.header
    header["features"] = 0
    header["desc_num"] = region.desc_num
    header["last_batch_head"] = 0
    header["used_idx"] = used_idx
    # The version last: a region is in use once it has one.
    header["version"] = INFLIGHT_VERSION
    return SplitRecord(np.zeros(0, np.uint16), 0, 0)


def recover_split(region: InflightRegion, ring_size: int, used_idx: int) -> SplitRecord:
    """Go on from a region a ring left ("When reconnecting"), `used_idx` being the used ring's
    idx: a batch the ring published but did not finish recording is no longer in flight, and
    the heads still marked are returned oldest first."""
    header, desc = region.header, region.desc
    recorded = int(header["used_idx"][0])
    if recorded != used_idx:
        batch = (used_idx - recorded) & 0xFFFF
        if batch > ring_size:
            raise BadInflightRegion(f"the used ring is {batch} entries past the region's "
                                    f"used_idx, more than a ring of {ring_size} holds")
        head = int(header["last_batch_head"][0])
        for _ in range(batch):
            if head >= region.desc_num:
                raise BadInflightRegion(f"the last batch's list leaves the region at {head}")
            desc["inflight"][head] = 0
            head = int(desc["next"][head])
        header["used_idx"] = used_idx
    heads = np.flatnonzero(desc["inflight"])
    if len(heads) and int(heads[-1]) >= ring_size:
        raise BadInflightRegion(f"head {int(heads[-1])} is in flight in a ring of {ring_size}")
    return SplitRecord(oldest_first(region, heads), region.next_counter(),
                       int(header["last_batch_head"][0]))


# --- packed rings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackedRecord:
    """What a packed ring goes on from: its used and avail positions (slot, wrap counter), the
    counter, the free list, the chains' links and shapes (this side's own copies), a copy of
    every entry's descriptor, and the chains to pop again (heads, oldest first)."""

    used: tuple[int, int]
    avail: tuple[int, int]
    counter: int
    free_head: int
    free_count: int
    next: np.ndarray
    last: np.ndarray
    num: np.ndarray
    saved: np.ndarray
    resubmit: np.ndarray


def start_packed(region: InflightRegion, used: tuple[int, int]) -> PackedRecord:
    """Initialise an uninitialised region for a ring whose device goes on from `used` (slot,
    wrap counter): every entry free, linked in order (the last to desc_num, past the end)."""
    n = region.desc_num
    region.desc[...] = 0
    region.desc["next"] = np.arange(1, n + 1)
    header = region.header
    header["features"] = 0
    header["desc_num"] = n
    header["free_head"] = header["old_free_head"] = 0
    header["used_idx"] = header["old_used_idx"] = used[0]
    header["used_wrap_counter"] = header["old_used_wrap_counter"] = used[1]
    header["version"] = INFLIGHT_VERSION
    return _packed_record(region, used, used, 0, 0, n, np.zeros(0, np.uint16))


def recover_packed(region: InflightRegion, ring_size: int, slot_flags) -> PackedRecord:
    """Go on from a region a ring left ("When reconnecting"); `slot_flags(slot)` reads the
    flags of a descriptor ring slot.

    A push under way (a ring records one used descriptor per step) either reached the driver
    (the descriptor's flags are written: it is committed) or did not (rolled back), and so is a
    pop (rolled back: its entries are free again). Entries on the free list are not in flight;
    every other entry marked in flight heads a chain, which is checked (its length, its links,
    no entry in two places) and returned, oldest first. The avail position is the used one
    moved on by the chains' slots: every slot popped is either used or held by a chain in
    flight.
    """
    header, desc, n = region.header, region.desc, region.desc_num
    used = (int(header["used_idx"][0]), int(header["used_wrap_counter"][0]))
    old_used = (int(header["old_used_idx"][0]), int(header["old_used_wrap_counter"][0]))
    for slot, wrap in (used, old_used):
        if slot >= ring_size or wrap > 1:
            raise BadInflightRegion(f"used position {slot} (wrap {wrap}) in a ring of "
                                    f"{ring_size}")
    # The spec compares the indices alone; a push of exactly a ring's worth of slots would
    # leave the index where it was, and only the wrap counter tells.
    if used != old_used:
        slot, wrap = old_used
        still_available = _F_AVAIL if wrap else _F_USED
        if slot_flags(slot) & (_F_AVAIL | _F_USED) != still_available:
            header["old_free_head"] = header["free_head"]
            header["old_used_idx"], header["old_used_wrap_counter"] = used
            old_used = used
    header["free_head"] = header["old_free_head"]
    header["used_idx"], header["used_wrap_counter"] = old_used

    free = _free_list(region)
    desc["inflight"][free] = 0
    is_free = np.zeros(n, dtype=bool)
    is_free[free] = True
    heads = np.flatnonzero(desc["inflight"])
    taken = is_free.copy()
    slots = 0
    for head in heads:
        count = int(desc["num"][head])
        if not 1 <= count <= ring_size:
            raise BadInflightRegion(f"chain {head} has {count} descriptors")
        entry = int(head)
        for k in range(count):
            if k:
                entry = int(desc["next"][entry])
            if entry >= n or taken[entry]:
                raise BadInflightRegion(f"chain {head} leaves the region or runs into another "
                                        f"chain or the free list at {entry}")
            taken[entry] = True
        if int(desc["last"][head]) != entry:
            raise BadInflightRegion(f"chain {head} ends at {entry}, not at its last entry")
        slots += count
    if slots > ring_size:
        raise BadInflightRegion(f"chains in flight hold {slots} slots of a ring of {ring_size}")
    # Entries neither free nor in a chain (only a front-end writing the region leaves any)
    # go back on the free list, so that they are not lost to the ring for good.
    free_head, free_count = int(header["free_head"][0]), len(free)
    for entry in np.flatnonzero(~taken):
        desc["next"][entry] = free_head
        free_head = int(entry)
        free_count += 1
    header["free_head"] = header["old_free_head"] = free_head
    return _packed_record(region, old_used, _advance(old_used, slots, ring_size),
                          region.next_counter(), free_head, free_count,
                          oldest_first(region, heads))


def _free_list(region: InflightRegion) -> np.ndarray:
    # The entries from free_head on, to the first link past the region.
    desc, n = region.desc, region.desc_num
    entries, seen = [], np.zeros(n, dtype=bool)
    entry = int(region.header["free_head"][0])
    while entry < n:
        if seen[entry]:
            raise BadInflightRegion(f"the free list comes back to entry {entry}")
        seen[entry] = True
        entries.append(entry)
        entry = int(desc["next"][entry])
    return np.array(entries, dtype=np.intp)


def _advance(position: tuple[int, int], slots: int, ring_size: int) -> tuple[int, int]:
    # §2.8.1: passing the ring's last slot flips the wrap counter.
    slot, wrap = position[0] + slots, position[1]
    if slot >= ring_size:
        slot, wrap = slot - ring_size, wrap ^ 1
    return slot, wrap


def _packed_record(region: InflightRegion, used: tuple[int, int], avail: tuple[int, int],
                   counter: int, free_head: int, free_count: int,
                   resubmit: np.ndarray) -> PackedRecord:
    desc = region.desc
    saved = np.zeros(region.desc_num, dtype=PACKED_DESC_DTYPE)
    for name in ("addr", "len", "id", "flags"):
        saved[name] = desc[name]
    return PackedRecord(used, avail, counter, free_head, free_count, desc["next"].copy(),
                        desc["last"].copy(), desc["num"].copy(), saved, resubmit)
