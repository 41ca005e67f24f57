"""Host physical memory: the flat buffer, indexed by HPA, that paging structures live in."""

from __future__ import annotations

import mmap
import os
import struct

import numpy as np

TABLE_SIZE = 4096
_U64 = struct.Struct("<Q")


class FrameAllocator:
    """Hands out zeroed, 4 KiB-aligned frames from [start, end) for paging structures.

    Addresses are in whatever space the tables live in (HPA for EPT tables, GPA for guest
    tables); `zero(address)` clears a frame before it is handed out. Freed frames are reused
    first, most recently freed first.
    """

    def __init__(self, start: int, end: int, zero):
        if start % TABLE_SIZE or end % TABLE_SIZE or not 0 <= start <= end:
            raise ValueError(f"frames [{start:#x}, {end:#x}) must be 4 KiB-aligned")
        self._next = start
        self._end = end
        self._free: list[int] = []
        self._zero = zero

    def alloc(self) -> int:
        """A zeroed frame's address; MemoryError when none is left."""
        if self._free:
            frame = self._free.pop()
        elif self._next < self._end:
            frame, self._next = self._next, self._next + TABLE_SIZE
        else:
            raise MemoryError("no page frames left for paging structures")
        self._zero(frame)
        return frame

    def free(self, frame: int) -> None:
        """Give a frame back."""
        self._free.append(frame)


class HostMemory:
    """Host physical memory as one writable uint8 buffer indexed by HPA.

    `shared=True` backs it with a memfd (its `fd`), so that another process can map the same
    tables. `frames` allocates table pages from the top quarter of memory unless told otherwise
    (`table_area=(start, end)`). The walkers of fastpath.hv.ept and fastpath.hv.paging accept it
    as they accept a bytearray or a numpy uint8 array.
    """

    def __init__(self, size: int, *, shared: bool = False,
                 table_area: tuple[int, int] | None = None):
        if size <= 0 or size % TABLE_SIZE:
            raise ValueError("host memory size must be a positive multiple of 4 KiB")
        self.fd = -1
        self._mmap = None
        if shared:
            self.fd = os.memfd_create("fastpath-host-memory", os.MFD_CLOEXEC)
            os.ftruncate(self.fd, size)
            self._mmap = mmap.mmap(self.fd, size)
            self.array = np.frombuffer(self._mmap, dtype=np.uint8)
        else:
            self.array = np.zeros(size, dtype=np.uint8)
        start, end = table_area or (size - size // 4 // TABLE_SIZE * TABLE_SIZE, size)
        if end > size:
            raise ValueError("the table area lies outside host memory")
        self.frames = FrameAllocator(start, end, self.zero_frame)

    @property
    def size(self) -> int:
        """Bytes of host memory."""
        return self.array.size

    def __len__(self) -> int:
        return self.array.size

    def read64(self, hpa: int) -> int:
        """The little-endian u64 at hpa."""
        self._check(hpa, 8)
        return _U64.unpack_from(self.array, hpa)[0]

    def write64(self, hpa: int, value: int) -> None:
        """Store a little-endian u64 at hpa."""
        self._check(hpa, 8)
        _U64.pack_into(self.array, hpa, value)

    def zero_frame(self, hpa: int) -> None:
        """Clear the 4 KiB at hpa."""
        self._check(hpa, TABLE_SIZE)
        self.array[hpa : hpa + TABLE_SIZE] = 0

    def _check(self, hpa: int, length: int) -> None:
        if not 0 <= hpa <= self.array.size - length:
            raise IndexError(f"HPA {hpa:#x} (+{length}) is outside host memory")

    def close(self) -> None:
        """Close the memfd and let go of the mapping: it is unmapped now, or, while arrays
        still view it (a builder's, a caller's), when the last of them goes."""
        self.array = np.zeros(0, dtype=np.uint8)
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass  # views remain; the mmap object unmaps when they and it are collected
            self._mmap = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def host_buffer(mem) -> np.ndarray:
    """`mem` as a writable, contiguous uint8 numpy array over the same bytes.

    Accepts HostMemory, a bytearray, a numpy uint8 array or anything else with a writable
    byte buffer; the walkers read tables through it and set A/D flags in it.
    """
    if isinstance(mem, HostMemory):
        array = mem.array
    elif isinstance(mem, np.ndarray):
        array = mem
    else:
        array = np.frombuffer(mem, dtype=np.uint8)
    if array.dtype != np.uint8 or array.ndim != 1 or not array.flags.c_contiguous:
        raise TypeError("host memory must be a flat, contiguous uint8 buffer")
    if not array.flags.writeable:
        raise TypeError("host memory must be writable")
    return array
