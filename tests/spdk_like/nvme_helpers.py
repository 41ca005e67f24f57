"""What the NVMe tests share: a small in-memory block executor (the backing of a controller
until bdevs serve it), a controller with its driver over it, and command builders."""

from __future__ import annotations

import errno

import numpy as np
from numba import njit

from fastpath._numba import NJIT, carray, copy_bytes, u8_pointer, u64_pointer
from fastpath.devices.blk import IO_DISCARD, IO_FLUSH, IO_READ, IO_WRITE, IO_WRITE_ZEROES
from fastpath.spdk_like._dma import HostMemory
from fastpath.spdk_like._nvme_controller import Backing, NvmeController
from fastpath.spdk_like._nvme_driver import NvmeDriver
from fastpath.spdk_like._nvme_layout import (
    CDW0_PSDT_SHIFT,
    SQE,
)

# The executor's row (uint64).
EX_DATA = 0          # address of the disk's bytes
EX_SIZE = 1
EX_DEPTH = 2         # requests it holds at most
EX_IN_FLIGHT = 3
EX_RING = 4          # address of its completion ring (capacity x 2 uint64: tag, status)
EX_MASK = 5
EX_HEAD = 6
EX_TAIL = 7
EX_REVERSE = 8       # nonzero: each reaped burst comes back in reverse order
EX_FAIL_OPERATIONS = 9   # a bit per IO_* operation to fail...
EX_FAIL_STATUS = 10      # ...with this negative errno (two's complement in 32 bits)
EX_TAKEN = 11        # requests taken, in all
EX_HOLD = 12         # nonzero: reap returns nothing (the requests stay in flight)
EX_LAST_FLAGS = 13   # the flags of the last request taken
EX_COLUMNS = 14


@njit(**NJIT)
def _carry_out(row, io):
    operation = int(io.operation)
    if (row[EX_FAIL_OPERATIONS] >> operation) & 1:
        status = np.int64(row[EX_FAIL_STATUS])
        return status - (np.int64(1) << 32) if status >= (np.int64(1) << 31) else status
    if operation == IO_FLUSH:
        return 0
    if io.offset + io.length > row[EX_SIZE]:
        return -errno.EINVAL
    disk = row[EX_DATA] + io.offset
    if operation == IO_READ or operation == IO_WRITE:
        # SAFETY: the iovecs of a request the controller made from checked PRPs or SGLs.
        iov = carray(u64_pointer(io.iov), (int(io.iovcnt), 2))
        done = 0
        for k in range(int(io.iovcnt)):
            if operation == IO_READ:
                copy_bytes(iov[k, 0], disk + done, iov[k, 1])
            else:
                copy_bytes(disk + done, iov[k, 0], iov[k, 1])
            done += iov[k, 1]
        return 0 if done == io.length else -errno.EINVAL
    if operation == IO_WRITE_ZEROES or operation == IO_DISCARD:
        # SAFETY: the disk's own bytes, within its size (checked above).
        carray(u8_pointer(disk), (int(io.length),))[:] = 0
        return 0
    return -errno.EOPNOTSUPP


@njit(**NJIT)
def memory_submit(row, ios, first, n):
    """Carry out ios[first:first + n] at once (as many as the depth allows); their
    completions wait for memory_reap."""
    # SAFETY: the executor's own ring, kept by its MemoryExecutor.
    ring = carray(u64_pointer(row[EX_RING]), (int(row[EX_MASK]) + 1, 2))
    taken = 0
    for k in range(first, first + n):
        if row[EX_IN_FLIGHT] >= row[EX_DEPTH]:
            break
        status = _carry_out(row, ios[k])
        row[EX_LAST_FLAGS] = ios[k].flags
        slot = row[EX_TAIL] & row[EX_MASK]
        ring[slot, 0] = ios[k].tag
        ring[slot, 1] = np.uint64(status & 0xFFFFFFFF)
        row[EX_TAIL] += 1
        row[EX_IN_FLIGHT] += 1
        taken += 1
    row[EX_TAKEN] += taken
    return taken


@njit(**NJIT)
def memory_reap(row, completions, max_n):
    """Up to max_n completions, oldest first (or each burst reversed)."""
    # SAFETY: as in memory_submit.
    ring = carray(u64_pointer(row[EX_RING]), (int(row[EX_MASK]) + 1, 2))
    n = 0
    if row[EX_HOLD]:
        return 0
    while n < max_n and row[EX_HEAD] != row[EX_TAIL]:
        slot = row[EX_HEAD] & row[EX_MASK]
        completions[n].tag = ring[slot, 0]
        value = np.int64(ring[slot, 1])
        completions[n].status = value - (np.int64(1) << 32) if value >= (1 << 31) else value
        row[EX_HEAD] += 1
        n += 1
    if row[EX_REVERSE]:
        for k in range(n // 2):
            tag, status = completions[k].tag, completions[k].status
            completions[k].tag = completions[n - 1 - k].tag
            completions[k].status = completions[n - 1 - k].status
            completions[n - 1 - k].tag = tag
            completions[n - 1 - k].status = status
    row[EX_IN_FLIGHT] -= n
    return n


class MemoryExecutor:
    """A disk of `size` bytes in memory behind memory_submit and memory_reap."""

    def __init__(self, size: int, block_size: int = 512, depth: int = 64):
        self.disk = np.zeros(size, dtype=np.uint8)
        self.block_size = block_size
        capacity = 1 << (depth - 1).bit_length()
        self.ring = np.zeros((capacity, 2), dtype=np.uint64)
        self.row = np.zeros(EX_COLUMNS, dtype=np.uint64)
        self.row[EX_DATA] = self.disk.ctypes.data
        self.row[EX_SIZE] = size
        self.row[EX_DEPTH] = depth
        self.row[EX_RING] = self.ring.ctypes.data
        self.row[EX_MASK] = capacity - 1

    def backing(self) -> Backing:
        return Backing(self.row, memory_submit, memory_reap, self.block_size, len(self.disk))

    def fail(self, operations: set[int], status: int = -errno.EIO) -> None:
        self.row[EX_FAIL_OPERATIONS] = sum(1 << op for op in operations)
        self.row[EX_FAIL_STATUS] = status & 0xFFFFFFFF


class Rig:
    """A controller over a MemoryExecutor, reaching `memory`, and a driver bringing it up."""

    def __init__(self, *, blocks: int = 4096, block_size: int = 512, memory_size: int = 4 << 20,
                 depth: int = 64, **controller_options):
        self.memory = HostMemory(memory_size)
        self.executor = MemoryExecutor(blocks * block_size, block_size, depth)
        self.controller = NvmeController(self.executor.backing(), [self.memory],
                                         **controller_options)
        self.driver = NvmeDriver(self.controller, self.memory)

    def run(self, pair, commands: np.ndarray, max_rounds: int = 10_000) -> np.ndarray:
        """Submit every command on `pair` and poll until each has its completion; returns the
        completions in the order they came."""
        got = []
        submitted = 0
        for _ in range(max_rounds):
            if submitted < len(commands):
                submitted += pair.submit(commands[submitted:])
            self.controller.poll()
            got.extend(pair.reap())
            if len(got) == len(commands):
                return np.array(got, dtype=got[0].dtype) if got else np.zeros(0)
        raise AssertionError(f"{len(commands) - len(got)} of {len(commands)} commands did not "
                             f"complete in {max_rounds} rounds")


def command(opcode: int, cid: int, *, nsid: int = 1, slba: int = 0, blocks: int = 1,
            prp1: int = 0, prp2: int = 0, psdt: int = 0, cdw10: int | None = None,
            cdw11: int = 0, cdw12: int | None = None) -> np.ndarray:
    """One SQE; slba and blocks fill dwords 10 to 12 unless those are given."""
    sqe = np.zeros(1, dtype=SQE)
    sqe["opcode"] = opcode
    sqe["flags"] = psdt << (CDW0_PSDT_SHIFT - 8)
    sqe["cid"] = cid
    sqe["nsid"] = nsid
    sqe["prp1"] = prp1
    sqe["prp2"] = prp2
    sqe["cdw10"] = slba & 0xFFFFFFFF if cdw10 is None else cdw10
    sqe["cdw11"] = slba >> 32 if cdw10 is None else cdw11
    sqe["cdw12"] = (blocks - 1) & 0xFFFF if cdw12 is None else cdw12
    return sqe


def status_of(completion) -> int:
    """The status field of a completion, without its phase tag."""
    return int(completion["status"]) >> 1
