"""The malloc bdev: the disk in memory, in a memfd so that another process can map it too."""

from __future__ import annotations

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
    a discarded range reads back as zeros."""

    kind = KIND

    def __init__(self, size: int, *, name: str = "malloc", block_size: int = 512,
                 read_only: bool = False):
        super().__init__(name, size, block_size=block_size, read_only=read_only)
        self.fd = os.memfd_create(f"fastpath-{name}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            self._map = mmap.mmap(self.fd, size)
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


register_bdev_kind(BdevKind(
    code=KIND, name="malloc", argument="SIZE", options={"block_size": int},
    help="a disk in memory (a memfd), zeros at first",
    make=lambda argument, **options: MallocBdev(parse_size(argument), **options),
    start=start))
