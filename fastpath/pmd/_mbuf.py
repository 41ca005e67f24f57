"""`MbufPool`: fixed-size frame buffers for poll-mode drivers, handed out and taken back in
bursts by compiled code.

A pool is one data block and metadata arrays beside it: each mbuf's frame length, and a stack
of the free mbufs' numbers. An mbuf is its row number (a uint32); a burst is a caller-owned
uint32 array of them. Kernels take the pool as the tuple `pool.arrays` and call `alloc_burst` /
`free_burst` once per burst.

Each mbuf's frame room (`room` bytes, where every frame starts) has MBUF_HEADROOM bytes before
it, as DPDK's mbufs have RTE_PKTMBUF_HEADROOM: a port may put a header there, so that header
and frame are one buffer (the virtio-user port's virtio-net header). The pool's `data` (and
POOL_DATA) is the rooms alone, a (count, room) view whose rows are `stride` bytes apart: a
kernel that addresses frames by pointer steps by `data.strides[0]`, and fills at most
`data.shape[1]` bytes.

A shared pool's data block is a memfd region of guest memory (at SHARED_POOL_GPA) that a port
can share with its peer, so that the peer reads and writes the mbufs themselves: mbuf m's frame
is at guest-physical `frame_gpa(m)`, its headroom just before.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastpath._numba import NJIT, carray, u8_pointer
from fastpath.hv import GuestMemory

# Where a shared pool's data block sits in guest-physical space: far above the memory a port
# lays out for its rings and buffers (megabytes from 0), so that both fit one memory table.
SHARED_POOL_GPA = 1 << 40

# Bytes before every frame, free for a port's header (DPDK's RTE_PKTMBUF_HEADROOM).
MBUF_HEADROOM = 128
# Rows start on cache lines, so that every frame does.
ROW_ALIGN = 64

# The pool tuple's members, as kernels index it.
POOL_DATA = 0      # uint8 (count, room), rows `stride` apart: frame bytes, from the row's first
POOL_LENGTH = 1    # uint32 (count,): each mbuf's frame length
POOL_FREE = 2      # uint32 (count,): the free mbufs, a stack
POOL_TOP = 3       # int64 (1,): how many of POOL_FREE are free
POOL_STAMP = 4     # uint64 (count,): which template the frame is, as its writer named it; 0: none


@njit(**NJIT)
def alloc_stamped_burst(pool, mbufs, n):
    """Take up to n free mbufs into mbufs[:got], their frames and stamps as they were left;
    returns got (fewer when the pool runs low). For a generator that rewrites a frame only
    when its stamp is not the template's."""
    free = pool[POOL_FREE]
    top = pool[POOL_TOP][0]
    got = n if n < top else top
    for k in range(got):
        mbufs[k] = free[top - 1 - k]
    pool[POOL_TOP][0] = top - got
    return got


@njit(**NJIT)
def alloc_burst(pool, mbufs, n):
    """Take up to n free mbufs into mbufs[:got]; returns got (fewer when the pool runs low).
    Their stamps are cleared: whoever takes them writes the frames."""
    got = alloc_stamped_burst(pool, mbufs, n)
    stamp = pool[POOL_STAMP]
    for k in range(got):
        stamp[mbufs[k]] = 0
    return got


@njit(**NJIT)
def free_burst(pool, mbufs, start, end):
    """Give mbufs[start:end] back to the pool."""
    free = pool[POOL_FREE]
    top = pool[POOL_TOP][0]
    for k in range(start, end):
        free[top] = mbufs[k]
        top += 1
    pool[POOL_TOP][0] = top


@njit(**NJIT)
def mbuf_stride(room):
    """Bytes from one mbuf's row to the next, for frames of up to `room` bytes."""
    return (MBUF_HEADROOM + room + ROW_ALIGN - 1) // ROW_ALIGN * ROW_ALIGN


@njit(**NJIT)
def pool_rooms(rows_at, count, room):
    """The (count, room) frame view of a pool whose rows start at address `rows_at` (the
    first row's headroom), as POOL_DATA is."""
    # SAFETY: the caller names a pool's data block: count rows of mbuf_stride(room) bytes.
    rows = carray(u8_pointer(rows_at), (count, mbuf_stride(room)))
    return rows[:, MBUF_HEADROOM:MBUF_HEADROOM + room]


class MbufPool:
    """`count` mbufs of `room` bytes each (and MBUF_HEADROOM before each), all free at
    first.

    A pool belongs to one thread at a time: the kernels that take and return mbufs do not lock.
    Returning an mbuf twice corrupts the pool (as with DPDK's mempools); `in_use` shows leaks.
    With `shared`, the data block is guest memory (`memory`, one region at SHARED_POOL_GPA)
    that ports may share with their peers; `close` releases it once those ports are closed.
    """

    def __init__(self, count: int = 8192, room: int = 2048, *, shared: bool = False):
        if not 1 <= count <= 1 << 24:
            raise ValueError(f"an mbuf pool holds 1 to {1 << 24} mbufs, not {count}")
        if not 64 <= room <= 65536:
            raise ValueError(f"an mbuf's room is 64 to 65536 bytes, not {room}")
        self.count = count
        self.room = room
        # Row m is mbuf m's headroom, then its room, and padding up to the next cache line.
        self.stride = int(mbuf_stride(room))
        self.memory: GuestMemory | None = None
        nbytes = count * self.stride
        if shared:
            size = -(-nbytes // (2 << 20)) * (2 << 20)
            self.memory = GuestMemory([(SHARED_POOL_GPA, size)], name="fastpath-mbufs")
            block = self.memory.view(SHARED_POOL_GPA, nbytes)
        else:
            block = np.zeros(nbytes, dtype=np.uint8)
        self.data = block.reshape(count, self.stride)[:, MBUF_HEADROOM:MBUF_HEADROOM + room]
        self.length = np.zeros(count, dtype=np.uint32)
        # Numbered so that the first allocations take mbufs 0, 1, 2, ...
        self.free = np.arange(count - 1, -1, -1, dtype=np.uint32)
        self.top = np.array([count], dtype=np.int64)
        self.stamp = np.zeros(count, dtype=np.uint64)

    @property
    def shared(self) -> bool:
        """Whether the data block is guest memory a port can share with its peer."""
        return self.memory is not None

    def close(self) -> None:
        """Close a shared pool's memory fd (mappings stay while the data block is referenced)."""
        if self.memory is not None:
            self.memory.close()

    def frame_gpa(self, mbuf: int) -> int:
        """Guest-physical address of a shared pool's mbuf `mbuf`'s frame."""
        return SHARED_POOL_GPA + mbuf * self.stride + MBUF_HEADROOM

    @property
    def rows_at(self) -> int:
        """Address of the data block (mbuf 0's headroom), for `pool_rooms`."""
        return self.data.ctypes.data - MBUF_HEADROOM

    @property
    def arrays(self) -> tuple:
        """(data, length, free, top, stamp): the pool as kernels take it."""
        return self.data, self.length, self.free, self.top, self.stamp

    @property
    def available(self) -> int:
        """Mbufs free now."""
        return int(self.top[0])

    @property
    def in_use(self) -> int:
        """Mbufs handed out and not given back."""
        return self.count - self.available

    def burst(self, size: int) -> np.ndarray:
        """A caller-owned array for bursts of up to `size` mbufs."""
        return np.zeros(size, dtype=np.uint32)

    def alloc(self, mbufs: np.ndarray, n: int) -> int:
        """Take up to n mbufs into mbufs[:n]; returns how many."""
        return alloc_burst(self.arrays, mbufs, min(n, len(mbufs)))

    def release(self, mbufs: np.ndarray, n: int) -> None:
        """Give mbufs[:n] back."""
        free_burst(self.arrays, mbufs, 0, n)

    def put(self, mbuf: int, frame: bytes) -> None:
        """Write `frame` into mbuf `mbuf` and set its length (for tests and tools)."""
        if len(frame) > self.room:
            raise ValueError(f"a {len(frame)}-byte frame does not fit a {self.room}-byte mbuf")
        self.data[mbuf, :len(frame)] = np.frombuffer(frame, dtype=np.uint8)
        self.length[mbuf] = len(frame)
        self.stamp[mbuf] = 0

    def frame(self, mbuf: int) -> bytes:
        """The frame mbuf `mbuf` holds."""
        return self.data[mbuf, :self.length[mbuf]].tobytes()
