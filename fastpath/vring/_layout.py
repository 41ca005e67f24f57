"""Where a ring's three areas go, and the wire layouts of descriptors (virtio 1.2 §2.7, §2.8)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastpath._core import packed as _packed
from fastpath._core import split as _split

MAX_QUEUE_SIZE = 32768

# virtio 1.2 §2.7.5: split descriptor.
SPLIT_DESC_DTYPE = np.dtype([("addr", "<u8"), ("len", "<u4"), ("flags", "<u2"), ("next", "<u2")])
# virtio 1.2 §2.8.13: packed descriptor.
PACKED_DESC_DTYPE = np.dtype([("addr", "<u8"), ("len", "<u4"), ("id", "<u2"), ("flags", "<u2")])
assert SPLIT_DESC_DTYPE.itemsize == _split.DESC_SIZE
assert PACKED_DESC_DTYPE.itemsize == _packed.DESC_SIZE

@dataclass(frozen=True)
class RingAddresses:
    """Guest-physical addresses of a ring's three areas.

    Split: descriptor table, avail ring (driver area), used ring (device area).
    Packed: descriptor ring, driver event suppression, device event suppression.
    """

    desc: int
    driver: int
    device: int


def split_area_sizes(size: int) -> tuple[int, int, int]:
    """Bytes of the descriptor table, avail ring and used ring (§2.7, with EVENT_IDX fields)."""
    return 16 * size, 6 + 2 * size, 6 + 8 * size


def packed_area_sizes(size: int) -> tuple[int, int, int]:
    """Bytes of the descriptor ring and the two event suppression structures (§2.8)."""
    return 16 * size, 4, 4


# Alignment of each area (§2.7.1 table; §2.8.10).
SPLIT_ALIGN = (16, 2, 4)
PACKED_ALIGN = (16, 4, 4)


def check_queue_size(size: int, packed: bool) -> None:
    """Raise ValueError unless size is allowed: 1..32768, a power of two for split rings."""
    if not 1 <= size <= MAX_QUEUE_SIZE or (not packed and size & (size - 1)):
        kind = "1 to 32768" if packed else "a power of two up to 32768"
        raise ValueError(f"{'packed' if packed else 'split'} queue size must be {kind}, not {size}")


def ring_layout(size: int, base: int, packed: bool) -> RingAddresses:
    """Lay a ring out contiguously from base (16-byte aligned), each area aligned as required."""
    check_queue_size(size, packed)
    sizes = packed_area_sizes(size) if packed else split_area_sizes(size)
    aligns = PACKED_ALIGN if packed else SPLIT_ALIGN
    addrs = []
    at = base
    for nbytes, align in zip(sizes, aligns, strict=True):
        at = (at + align - 1) // align * align
        addrs.append(at)
        at += nbytes
    return RingAddresses(*addrs)


def ring_bytes(size: int, packed: bool) -> int:
    """Bytes a contiguous ring_layout() occupies from a 16-byte-aligned base."""
    layout = ring_layout(size, 0, packed)
    last = (packed_area_sizes if packed else split_area_sizes)(size)[2]
    return layout.device + last


def ring_area_sizes(size: int, packed: bool) -> tuple[int, int, int]:
    """Bytes of a ring's descriptor, driver and device areas."""
    return (packed_area_sizes if packed else split_area_sizes)(size)
