"""What the NVMe tests share: a bdev kind for them (a disk in memory that can hold its
requests in flight and complete them out of order), a controller with its driver over it,
and command builders."""

from __future__ import annotations

import numpy as np
from numba import njit

from fastpath._numba import NJIT, carray, copy_bytes, u8_pointer, u64_pointer
from fastpath.devices.blk import IO_DISCARD, IO_READ, IO_WRITE, IO_WRITE_ZEROES
from fastpath.pmd import PollHost
from fastpath.spdk_like._bdev import CH_ARGS, Bdev, BdevKind, register_bdev_kind
from fastpath.spdk_like._dma import HostMemory
from fastpath.spdk_like._nvme_controller import NvmeController
from fastpath.spdk_like._nvme_driver import NvmeDriver
from fastpath.spdk_like._nvme_layout import CDW0_PSDT_SHIFT, SQE
from fastpath.spdk_like._nvme_poller import NvmePoller

# The test disk's kind: registered when the tests are collected, before any kernel calling
# the bdev dispatch is compiled.
TEST_DISK = 90

# Channel arguments.
ARG_DATA = CH_ARGS           # address of the disk's bytes
ARG_CONTROL = CH_ARGS + 1    # address of the disk's control words (CONTROL_*)
ARG_RING = CH_ARGS + 2       # address of the channel's completions (capacity x 2: tag, status)
ARG_MASK = CH_ARGS + 3
ARG_HEAD = CH_ARGS + 4
ARG_TAIL = CH_ARGS + 5

# Control words, shared by the disk's channels.
CONTROL_HOLD = 0             # nonzero: reap returns nothing (the requests stay in flight)
CONTROL_REVERSE = 1          # nonzero: each reaped burst comes back in reverse order
CONTROL_LAST_FLAGS = 2       # the flags of the last request started
CONTROL_WORDS = 3


@njit(**NJIT)
def _start(channel, io):
    # SAFETY: the bdev layer checked the range and the iovecs' lengths; the disk's bytes and
    # control words and the channel's ring are the TestDisk's, alive while it is.
    control = carray(u64_pointer(channel[ARG_CONTROL]), (CONTROL_WORDS,))
    control[CONTROL_LAST_FLAGS] = io.flags
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
    ring = carray(u64_pointer(channel[ARG_RING]), (int(channel[ARG_MASK]) + 1, 2))
    slot = channel[ARG_TAIL] & channel[ARG_MASK]
    ring[slot, 0] = io.tag
    ring[slot, 1] = 0
    channel[ARG_TAIL] += 1
    return 1


@njit(**NJIT)
def _reap(channel, completions, first, max_n):
    # SAFETY: as in _start.
    control = carray(u64_pointer(channel[ARG_CONTROL]), (CONTROL_WORDS,))
    if control[CONTROL_HOLD]:
        return 0
    ring = carray(u64_pointer(channel[ARG_RING]), (int(channel[ARG_MASK]) + 1, 2))
    n = 0
    while n < max_n and channel[ARG_HEAD] != channel[ARG_TAIL]:
        slot = channel[ARG_HEAD] & channel[ARG_MASK]
        completions[first + n].tag = ring[slot, 0]
        completions[first + n].status = 0
        channel[ARG_HEAD] += 1
        n += 1
    if control[CONTROL_REVERSE]:
        for k in range(n // 2):
            tag = completions[first + k].tag
            completions[first + k].tag = completions[first + n - 1 - k].tag
            completions[first + n - 1 - k].tag = tag
    return n


def _control_switch(word: int) -> property:
    # A yes/no property of a TestDisk, kept in one of its control words.
    def get(self) -> bool:
        return bool(self.control[word])

    def set(self, on: bool) -> None:
        self.control[word] = on
    return property(get, set)


class TestDisk(Bdev):
    """A disk in memory whose requests complete when reaped: all of them held back while
    `hold` is set, each burst in reverse order while `reverse` is; `last_flags` are the flags
    of the last request started."""

    kind = TEST_DISK

    def __init__(self, size: int, *, block_size: int = 512):
        super().__init__("test-disk", size, block_size=block_size)
        self.data = np.zeros(size, dtype=np.uint8)
        self.control = np.zeros(CONTROL_WORDS, dtype=np.uint64)

    def _open_channel(self, channel) -> None:
        capacity = 1 << (channel.depth - 1).bit_length()
        channel.ring = np.zeros((capacity, 2), dtype=np.uint64)
        channel.row[ARG_DATA] = self.data.ctypes.data
        channel.row[ARG_CONTROL] = self.control.ctypes.data
        channel.row[ARG_RING] = channel.ring.ctypes.data
        channel.row[ARG_MASK] = capacity - 1

    hold = _control_switch(CONTROL_HOLD)
    reverse = _control_switch(CONTROL_REVERSE)

    @property
    def last_flags(self) -> int:
        return int(self.control[CONTROL_LAST_FLAGS])

    def taken(self) -> int:
        """Requests the disk was given, in all."""
        statistics = self.statistics()
        return (statistics.read_ops + statistics.write_ops + statistics.flush_ops
                + statistics.discard_ops + statistics.write_zeroes_ops)


register_bdev_kind(BdevKind(
    code=TEST_DISK, name="test-disk", argument="SIZE", options={},
    help="the NVMe tests' disk", make=lambda argument, **options: TestDisk(int(argument)),
    start=_start, reap=_reap))


class Rig:
    """A controller over a TestDisk's channel, reaching `memory` (run by `host` if given,
    which must be running), and a driver bringing it up."""

    def __init__(self, *, blocks: int = 4096, block_size: int = 512, memory_size: int = 4 << 20,
                 depth: int = 64, host: PollHost | None = None, **controller_options):
        self.memory = HostMemory(memory_size)
        self.disk = TestDisk(blocks * block_size, block_size=block_size)
        self.channel = self.disk.open_channel(depth)
        self.controller = NvmeController(self.channel, [self.memory], **controller_options)
        if host is not None:
            # On the host before the driver brings it up: the admin commands are served there.
            host.add(NvmePoller(self.controller))
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
