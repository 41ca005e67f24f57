"""Host memory that a modelled device reaches by address, and the ordering between the two.

The NVMe model's "host memory" is memory of this process: queue entries, PRP lists, SGL
segments and data buffers are named by their virtual addresses, as a real device names bus
addresses. Addresses come from the host's commands and are not trusted: a device reaches only
memory registered with it (`HostMemory` areas, its DMA map), and checks every range against
that map before compiled code touches it, as an IOMMU would refuse a stray DMA.

Host and device run on different threads; the ordering rules of the queues (an entry is
written before the doorbell that publishes it, a completion's phase tag is written last and
read first) need ordered accesses. x86-64 keeps loads in order and stores in order (TSO), so
what remains is to keep the compiler from reordering: `acquire_fence` and `release_fence`.
"""

from __future__ import annotations

import bisect
import mmap

import numpy as np
from numba import njit, types
from numba.core.extending import intrinsic

from fastpath._numba import NJIT
from fastpath.spdk_like._nvme_layout import PAGE_SIZE

# DMA map rows (uint64): [start, end) of each area a device may reach.
REGION_START = 0
REGION_END = 1
REGION_COLUMNS = 2


def _fence(ordering: str):
    @intrinsic
    def fence(typingctx):
        def codegen(context, builder, signature, arguments):
            builder.fence(ordering)
            return context.get_dummy_value()
        return types.none(), codegen
    return fence


# After reading the word that publishes data (a doorbell, a phase tag), before reading the
# data: later loads stay after it.
acquire_fence = _fence("acquire")
# After writing data, before the word that publishes it: earlier stores stay before it.
release_fence = _fence("release")


@njit(**NJIT)
def dma_inside(regions, address, length):
    """Whether [address, address + length) lies within one area of the DMA map `regions`."""
    for k in range(regions.shape[0]):
        start = regions[k, REGION_START]
        end = regions[k, REGION_END]
        if start <= address < end and length <= end - address:
            return True
    return False


class HostMemory:
    """`size` bytes of this process's memory (whole pages, page aligned) for queues, lists and
    buffers a modelled device reaches, handed out in whole pages by `alloc`."""

    def __init__(self, size: int):
        if size <= 0:
            raise ValueError(f"host memory is a positive size, not {size}")
        size = -(-size // PAGE_SIZE) * PAGE_SIZE
        self._map = mmap.mmap(-1, size)
        self.bytes = np.frombuffer(self._map, dtype=np.uint8)
        self.base = self.bytes.ctypes.data
        self.size = size
        # Free runs of pages: (first page, pages), sorted by first page.
        self._free: list[tuple[int, int]] = [(0, size // PAGE_SIZE)]

    @property
    def region(self) -> tuple[int, int]:
        """[start, end) of the memory, for a device's DMA map."""
        return self.base, self.base + self.size

    def alloc(self, nbytes: int) -> np.ndarray:
        """`nbytes` of zeroed, page-aligned memory (whole pages are taken); MemoryError when
        no run of free pages is long enough."""
        pages = max(1, -(-nbytes // PAGE_SIZE))
        for k, (first, count) in enumerate(self._free):
            if count >= pages:
                if count == pages:
                    del self._free[k]
                else:
                    self._free[k] = (first + pages, count - pages)
                start = first * PAGE_SIZE
                buffer = self.bytes[start:start + pages * PAGE_SIZE]
                buffer[:] = 0
                return buffer[:nbytes]
        raise MemoryError(f"no {pages} free pages left in {self.size} bytes of host memory")

    def free(self, buffer: np.ndarray) -> None:
        """Give back memory `alloc` returned."""
        offset = buffer.ctypes.data - self.base
        if not 0 <= offset < self.size or offset % PAGE_SIZE:
            raise ValueError("that buffer was not allocated from this host memory")
        first, pages = offset // PAGE_SIZE, max(1, -(-buffer.nbytes // PAGE_SIZE))
        bisect.insort(self._free, (first, pages))
        merged: list[tuple[int, int]] = []
        for start, count in self._free:
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1] = (merged[-1][0], merged[-1][1] + count)
            else:
                merged.append((start, count))
        self._free = merged


def dma_map(memories: list[HostMemory]) -> np.ndarray:
    """The DMA map of a device that may reach `memories`: one row per area."""
    table = np.zeros((len(memories), REGION_COLUMNS), dtype=np.uint64)
    for k, memory in enumerate(memories):
        table[k] = memory.region
    return table
