"""The malloc bdev: the disk in memory, in a memfd so that another process can map it too."""

from __future__ import annotations

import errno
import mmap
import os

import numpy as np
from numba import njit

from fastpath._numba import NJIT, carray, copy_bytes, u8_pointer, u64_pointer
from fastpath.devices.blk import IO_DISCARD, IO_READ, IO_WRITE, IO_WRITE_ZEROES
from fastpath.spdk_like._bdev import (
    CH_ARGS,
    Bdev,
    BdevKind,
    complete_now,
    parse_size,
    register_bdev_kind,
)

KIND = 2

ARG_DATA = CH_ARGS    # address of the disk's first byte


@njit(**NJIT)
def start(channel, io):
    # SAFETY: the request passed the bdev layer's range check, so offset + length lies within
    # the mapping of CH_SIZE bytes at ARG_DATA; iov is the submitter's array of iovcnt entries
    # whose lengths sum to length (checked there too), and its buffers are the submitter's.
    disk = channel[ARG_DATA] + io.offset
    operation = io.operation
    if operation == IO_READ or operation == IO_WRITE:
        iov = carray(u64_pointer(io.iov), (int(io.iovcnt), 2))
        for k in range(int(io.iovcnt)):
            if operation == IO_READ:
                copy_bytes(iov[k, 0], disk, iov[k, 1])
            else:
                copy_bytes(disk, iov[k, 0], iov[k, 1])
            disk += iov[k, 1]
    elif operation == IO_DISCARD or operation == IO_WRITE_ZEROES:
        carray(u8_pointer(disk), (int(io.length),))[:] = 0
    complete_now(channel, io.tag, 0)
    return 1


class MallocBdev(Bdev):
    """`size` bytes of memory (a memfd, `fd`, that another process may map), zeros at first;
    a discarded range reads back as zeros. The memory is allocated and mapped in when the bdev
    is made: OSError (ENOSPC) then if the system has not got it, never a SIGBUS on a later
    write, and no page faults in the I/O path (SPDK's malloc bdev allocates its buffer too)."""

    kind = KIND

    def __init__(self, size: int, *, name: str = "malloc", block_size: int = 512,
                 read_only: bool = False):
        super().__init__(name, size, block_size=block_size, read_only=read_only)
        available = _available_memory()
        if size > available:
            # A memfd has no size limit of its own: allocating past what the system has would
            # bring the OOM killer, not an error.
            raise OSError(errno.ENOMEM, f"{name}: {size} bytes of memory asked for, "
                                        f"{available} available")
        self.fd = os.memfd_create(f"fastpath-{name}", os.MFD_CLOEXEC)
        try:
            os.posix_fallocate(self.fd, 0, size)
            self._map = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
        except OSError:
            os.close(self.fd)
            raise
        self.data = np.frombuffer(self._map, dtype=np.uint8)

    def _open_channel(self, channel) -> None:
        channel.row[ARG_DATA] = self.data.ctypes.data

    def close(self) -> None:
        super().close()
        if self.fd >= 0:
            self.data = None
            self._map.close()
            os.close(self.fd)
            self.fd = -1


def _available_memory() -> int:
    # What the kernel estimates can be allocated without swapping (MemAvailable).
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


register_bdev_kind(BdevKind(
    code=KIND, name="malloc", argument="SIZE", options={"block_size": int},
    help="a disk in memory (a memfd), zeros at first",
    make=lambda argument, **options: MallocBdev(parse_size(argument), **options),
    start=start))
