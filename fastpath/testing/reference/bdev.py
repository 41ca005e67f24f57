"""What a bdev does with a request, in plain Python: the oracle for `fastpath.spdk_like`'s
bdevs (the checks of the bdev layer, then a disk held in a bytearray)."""

from __future__ import annotations

import errno

from fastpath.devices.blk import (
    IO_DISCARD,
    IO_FLUSH,
    IO_OPERATIONS,
    IO_READ,
    IO_WRITE,
    IO_WRITE_ZEROES,
)

_WRITES = {IO_WRITE, IO_DISCARD, IO_WRITE_ZEROES}


class ReferenceBdev:
    """A disk of `size` bytes in `block_size` blocks; `keeps_data=False` for a null bdev."""

    def __init__(self, size: int, block_size: int = 512, *, read_only: bool = False,
                 keeps_data: bool = True, operations=frozenset(IO_OPERATIONS)):
        self.size = size
        self.block_size = block_size
        self.read_only = read_only
        self.keeps_data = keeps_data
        self.operations = operations
        self.disk = bytearray(size)

    def status(self, operation: int, offset: int, length: int,
               iov_lengths: list[int]) -> int:
        """0 if the bdev carries the request out, else the negative errno it completes with."""
        if operation not in self.operations:
            return -errno.EOPNOTSUPP
        if self.read_only and operation in _WRITES:
            return -errno.EROFS
        if operation != IO_FLUSH:
            if length == 0 or offset % self.block_size or length % self.block_size:
                return -errno.EINVAL
            if offset > self.size or length > self.size - offset:
                return -errno.EINVAL
        if operation in (IO_READ, IO_WRITE) and (not iov_lengths
                                                 or sum(iov_lengths) != length):
            return -errno.EINVAL
        return 0

    def execute(self, operation: int, offset: int, length: int,
                buffers: list[bytearray]) -> int:
        """Carry the request out on `buffers` (its iovecs' bytes: read into, written from);
        returns its status."""
        status = self.status(operation, offset, length, [len(b) for b in buffers])
        if status or not self.keeps_data:
            return status
        if operation == IO_READ:
            for buffer in buffers:
                buffer[:] = self.disk[offset:offset + len(buffer)]
                offset += len(buffer)
        elif operation == IO_WRITE:
            for buffer in buffers:
                self.disk[offset:offset + len(buffer)] = buffer
                offset += len(buffer)
        elif operation in (IO_DISCARD, IO_WRITE_ZEROES):
            self.disk[offset:offset + length] = bytes(length)
        return 0
