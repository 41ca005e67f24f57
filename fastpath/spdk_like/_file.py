"""The file bdev: a regular file or a block device, read and written asynchronously through
io_uring, with O_DIRECT where the file system allows it."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import struct
from dataclasses import dataclass

import numpy as np
from numba import njit

from fastpath._numba import NJIT, carray, u32_pointer, u64_pointer
from fastpath.devices.blk import (
    IO_DISCARD,
    IO_FLAG_FUA,
    IO_FLAG_MAY_UNMAP,
    IO_FLUSH,
    IO_READ,
    IO_WRITE,
    IO_WRITE_ZEROES,
    STATUS_IO_ERROR,
    STATUS_UNSUPPORTED,
)
from fastpath.spdk_like._bdev import (
    CH_ARGS,
    CH_DEPTH,
    Bdev,
    BdevKind,
    parse_size,
    register_bdev_kind,
)
from fastpath.spdk_like._uring import (
    URING_DATASYNC,
    URING_PUNCH_HOLE,
    URING_ZERO_RANGE,
    Uring,
    direct_io_alignment,
    uring_queue_fallocate,
    uring_queue_fsync,
    uring_queue_readv,
    uring_queue_writev,
    uring_reap,
    uring_submit,
)

log = logging.getLogger("fastpath.spdk_like")

# <linux/fs.h>: the logical block size of a block device (int).
_BLKSSZGET = 0x1268


@dataclass(frozen=True)
class BackingFile:
    """A file opened for a bdev. `fd` does the I/O: with O_DIRECT when `direct`, and then
    offsets and lengths must be multiples of `offset_alignment` and buffer addresses multiples
    of `memory_alignment` (both 1 for buffered I/O). `buffered_fd` reaches the same file
    without O_DIRECT, for I/O that is not so aligned (`fd` itself when not `direct`).
    `reason` says why I/O is buffered when it is."""

    path: str
    fd: int
    buffered_fd: int
    size: int
    direct: bool
    reason: str
    offset_alignment: int
    memory_alignment: int

    def close(self) -> None:
        """Close the file descriptors."""
        os.close(self.fd)
        if self.buffered_fd != self.fd:
            os.close(self.buffered_fd)


def open_backing_file(path: str, *, read_only: bool = False, direct: bool = True) -> BackingFile:
    """Open `path` (a regular file or a block device) for a bdev, with O_DIRECT if `direct` and
    the file system allows it: a file system that refuses O_DIRECT (EINVAL; tmpfs before Linux
    6.6) gets buffered I/O, and `reason` says so ("O_DIRECT not supported on tmpfs: buffered
    I/O"). OSError as os.open raises it otherwise."""
    flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
    buffered_fd = os.open(path, flags)
    fd = -1
    try:
        info = os.fstat(buffered_fd)
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISBLK(info.st_mode)):
            raise OSError(errno.EINVAL, f"{path}: neither a regular file nor a block device")
        size = os.lseek(buffered_fd, 0, os.SEEK_END)
        if not direct:
            return BackingFile(path, buffered_fd, buffered_fd, size, False,
                               "O_DIRECT not asked for: buffered I/O", 1, 1)
        try:
            fd = os.open(path, flags | os.O_DIRECT)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            reason = f"O_DIRECT not supported on {_file_system(info.st_dev)}: buffered I/O"
            return BackingFile(path, buffered_fd, buffered_fd, size, False, reason, 1, 1)
        memory, offset = _direct_io_alignment(fd, info)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        os.close(buffered_fd)
        raise
    return BackingFile(path, fd, buffered_fd, size, True, "", offset, memory)


def _direct_io_alignment(fd: int, info: os.stat_result) -> tuple[int, int]:
    # (memory, offset) alignment of O_DIRECT I/O: what the kernel reports (Linux 6.1), else
    # a block device's logical block size, else the file system's block size, which is a
    # multiple of the logical block size of the device under it.
    reported = direct_io_alignment(fd)
    if reported is not None:
        return reported
    if stat.S_ISBLK(info.st_mode):
        (logical,) = struct.unpack("i", fcntl.ioctl(fd, _BLKSSZGET, b"\0" * 4))
        return logical, logical
    return info.st_blksize, info.st_blksize


def _file_system(device: int) -> str:
    # The type of the file system mounted from `device` (/proc/self/mountinfo: the third
    # field is major:minor, the type follows the " - " separator).
    wanted = f"{os.major(device)}:{os.minor(device)}"
    try:
        with open("/proc/self/mountinfo") as mounts:
            for line in mounts:
                fields, _, tail = line.partition(" - ")
                if fields.split()[2] == wanted:
                    return tail.split()[0]
    except OSError:
        pass
    return "this file system"


# --- the bdev kind ---

KIND = 3

# A channel's row: its ring and the arrays the kind keeps per channel (at raw addresses).
ARG_RING = CH_ARGS             # the channel's io_uring
ARG_FD = CH_ARGS + 1           # the descriptor for I/O (with O_DIRECT when the bdev has it)
ARG_BUFFERED_FD = CH_ARGS + 2  # the same file without O_DIRECT
ARG_MEMORY_MASK = CH_ARGS + 3  # O_DIRECT: buffer addresses are multiples of this + 1 (else 0)
ARG_LENGTH_MASK = CH_ARGS + 4  # O_DIRECT: iovec lengths are multiples of this + 1 (else 0)
ARG_SLOTS = CH_ARGS + 5        # a record (SLOT_*) per request in the ring: depth rows
ARG_FREE = CH_ARGS + 6         # a stack of the free slots' numbers: depth entries
ARG_FREE_COUNT = CH_ARGS + 7
ARG_USER_DATA = CH_ARGS + 8    # the ring's completions land here (uint64 user_data) ...
ARG_RESULTS = CH_ARGS + 9      # ... and here (int32 results, read as uint32): depth entries
ARG_STATE = CH_ARGS + 10       # STATE_*

# The file system refused FALLOC_FL_ZERO_RANGE once: later write-zeroes punch holes at once.
STATE_NO_ZERO_RANGE = 1

# A request in the ring: the slot's number is the ring's user_data.
SLOT_TAG = 0
SLOT_OPERATION = 1
SLOT_FLAGS = 2
SLOT_OFFSET = 3
SLOT_LENGTH = 4        # the bytes a READ or WRITE moves
SLOT_STEP = 5          # STEP_*: what the ring is doing for the request now
SLOT_COLUMNS = 6

STEP_TRANSFER = 0      # readv or writev
STEP_SYNC = 1          # fdatasync: a FLUSH, or a WRITE_ZEROES with FUA after its zeroing
STEP_ZERO_RANGE = 2    # fallocate ZERO_RANGE (WRITE_ZEROES)
STEP_PUNCH_HOLE = 3    # fallocate PUNCH_HOLE (DISCARD; WRITE_ZEROES that may unmap, or whose
                       # file system refused ZERO_RANGE)

_MAX_RING_ENTRIES = 32768   # io_uring's limit (IORING_MAX_ENTRIES)


@njit(**NJIT)
def _slots(channel):
    # SAFETY: the channel's slot table of CH_DEPTH rows, kept alive by the channel's state.
    return carray(u64_pointer(channel[ARG_SLOTS]), (int(channel[CH_DEPTH]), SLOT_COLUMNS))


@njit(**NJIT)
def _free(channel):
    # SAFETY: the channel's free-slot stack of CH_DEPTH entries, kept alive likewise.
    return carray(u64_pointer(channel[ARG_FREE]), (int(channel[CH_DEPTH]),))


@njit(**NJIT)
def _direct_fd(channel, io):
    # The O_DIRECT descriptor when every piece of the request suits it, else the buffered one
    # (a guest's buffers need not be aligned; the kernel keeps the two views of the file
    # coherent: a direct read writes dirty cached pages back first, a direct write drops them).
    memory_mask = channel[ARG_MEMORY_MASK]
    length_mask = channel[ARG_LENGTH_MASK]
    if memory_mask == 0 and length_mask == 0:
        return channel[ARG_FD]
    # SAFETY: the submitter's iovec array of iovcnt entries (the bdev layer checked their
    # lengths add up); only read.
    iov = carray(u64_pointer(io.iov), (int(io.iovcnt), 2))
    for k in range(int(io.iovcnt)):
        if iov[k, 0] & memory_mask or iov[k, 1] & length_mask:
            return channel[ARG_BUFFERED_FD]
    return channel[ARG_FD]


@njit(**NJIT)
def _queue_step(channel, slot, step):
    # Queue the fallocate or fsync step `step` of the request in `slot`: 0 or -EBUSY.
    slots = _slots(channel)
    slots[slot, SLOT_STEP] = step
    ring = channel[ARG_RING]
    fd = channel[ARG_FD]
    if step == STEP_SYNC:
        return uring_queue_fsync(ring, fd, URING_DATASYNC, slot)
    mode = URING_ZERO_RANGE if step == STEP_ZERO_RANGE else URING_PUNCH_HOLE
    return uring_queue_fallocate(ring, fd, mode, slots[slot, SLOT_OFFSET],
                                 slots[slot, SLOT_LENGTH], slot)


@njit(**NJIT)
def start(channel, io):
    free = _free(channel)
    count = channel[ARG_FREE_COUNT]
    if count == 0:
        return 0
    slot = free[count - 1]
    slots = _slots(channel)
    operation = int(io.operation)
    slots[slot, SLOT_TAG] = io.tag
    slots[slot, SLOT_OPERATION] = operation
    slots[slot, SLOT_FLAGS] = io.flags
    slots[slot, SLOT_OFFSET] = io.offset
    slots[slot, SLOT_LENGTH] = io.length
    ring = channel[ARG_RING]
    if operation == IO_READ or operation == IO_WRITE:
        slots[slot, SLOT_STEP] = STEP_TRANSFER
        fd = _direct_fd(channel, io)
        if operation == IO_READ:
            code = uring_queue_readv(ring, fd, io.iov, io.iovcnt, io.offset, slot)
        else:
            sync = URING_DATASYNC if io.flags & IO_FLAG_FUA else 0
            code = uring_queue_writev(ring, fd, io.iov, io.iovcnt, io.offset, sync, slot)
    elif operation == IO_FLUSH:
        code = _queue_step(channel, slot, STEP_SYNC)
    elif (operation == IO_DISCARD or io.flags & IO_FLAG_MAY_UNMAP != 0
          or channel[ARG_STATE] & STATE_NO_ZERO_RANGE != 0):
        code = _queue_step(channel, slot, STEP_PUNCH_HOLE)
    else:
        code = _queue_step(channel, slot, STEP_ZERO_RANGE)
    if code != 0:
        return 0    # the ring is full: the caller keeps the request
    channel[ARG_FREE_COUNT] = count - 1
    return 1


@njit(**NJIT)
def kick(channel):
    # A submit the kernel refuses (short of memory) leaves the requests queued; the next kick
    # or reap submits them.
    return uring_submit(channel[ARG_RING])


@njit(**NJIT)
def _status(operation, step, expected, result):
    # The request's status from the result of the step that completed (reap decides whether
    # another step follows).
    if step == STEP_TRANSFER:
        if result == np.int64(expected):
            return 0
        # A short transfer: the file ended early (it was truncated under the bdev).
        return result if result < 0 else STATUS_IO_ERROR
    if step == STEP_PUNCH_HOLE and operation == IO_DISCARD and result == STATUS_UNSUPPORTED:
        return 0    # a discard is a hint: a file system without holes keeps the data
    return result


@njit(**NJIT)
def reap(channel, completions, first, max_n):
    ring = channel[ARG_RING]
    depth = np.int64(channel[CH_DEPTH])
    want = np.int64(max_n) if max_n < depth else depth
    got = uring_reap(ring, channel[ARG_USER_DATA], channel[ARG_RESULTS], want, 0)
    # SAFETY: the channel's completion scratch arrays of CH_DEPTH entries each; got <= depth.
    user_data = carray(u64_pointer(channel[ARG_USER_DATA]), (depth,))
    results = carray(u32_pointer(channel[ARG_RESULTS]), (depth,))
    slots = _slots(channel)
    free = _free(channel)
    n = 0
    for k in range(got):
        slot = user_data[k]
        raw = np.int64(results[k])
        result = raw - (np.int64(1) << 32) if raw >= (np.int64(1) << 31) else raw
        operation = slots[slot, SLOT_OPERATION]
        step = slots[slot, SLOT_STEP]
        status = _status(operation, step, slots[slot, SLOT_LENGTH], result)
        follow = -1
        if step == STEP_ZERO_RANGE and status == STATUS_UNSUPPORTED:
            # The file system has no ZERO_RANGE (tmpfs): a hole reads back as zeros too.
            channel[ARG_STATE] |= STATE_NO_ZERO_RANGE
            follow = STEP_PUNCH_HOLE
        elif (status == 0 and operation == IO_WRITE_ZEROES and step != STEP_SYNC
              and slots[slot, SLOT_FLAGS] & IO_FLAG_FUA):
            follow = STEP_SYNC
        # The step that completed freed its place in the ring, so the next one has room.
        if follow >= 0 and _queue_step(channel, slot, follow) == 0:
            continue
        completions[first + n].tag = slots[slot, SLOT_TAG]
        completions[first + n].status = status if follow < 0 else STATUS_IO_ERROR
        free[channel[ARG_FREE_COUNT]] = slot
        channel[ARG_FREE_COUNT] += 1
        n += 1
    # What follow-up steps queued, and what an earlier submit left behind (without anything
    # queued, no system call).
    uring_submit(ring)
    return n


class FileBdev(Bdev):
    """A regular file or a block device at `path`, read and written through io_uring (a ring
    per channel), with O_DIRECT where the file system allows it and `direct` asks for it.

    The bdev's `size` is the file's, in whole blocks; with `size` given, a missing file is
    made (sparse) and a shorter one extended. The block size defaults to what O_DIRECT needs
    (512 bytes at least); a `block_size` that is no multiple of it is refused. Requests whose
    buffers do not suit O_DIRECT go through a buffered descriptor of the same file instead.
    A discard punches a hole (a file system without holes keeps the data: discard is a hint);
    a write-zeroes zeroes the range in place (FALLOC_FL_ZERO_RANGE), or punches a hole where
    it may unmap or where the file system cannot zero in place.
    """

    kind = KIND

    def __init__(self, path: str, *, name: str = "file", size: int | None = None,
                 block_size: int | None = None, read_only: bool = False, direct: bool = True):
        if size is not None:
            _make_or_extend(path, size, read_only)
        backing = open_backing_file(path, read_only=read_only, direct=direct)
        try:
            if direct and not backing.direct:
                log.info("%s: %s", name, backing.reason)
            aligned = max(backing.offset_alignment, 512)
            if block_size is None:
                block_size = aligned
            if block_size % aligned:
                raise ValueError(f"{name}: O_DIRECT on {path} needs {aligned}-byte blocks, not "
                                 f"{block_size} (or open it with direct=0)")
            if size is not None and size > backing.size:
                raise ValueError(f"{name}: {path} holds {backing.size} bytes, not {size}")
            usable = backing.size if size is None else size
            super().__init__(name, usable - usable % block_size, block_size=block_size,
                             read_only=read_only)
        except BaseException:
            backing.close()
            raise
        self.backing: BackingFile | None = backing
        self.path = path
        self.direct = backing.direct
        self.reason = backing.reason

    def _open_channel(self, channel) -> None:
        depth = channel.depth
        state = _ChannelState(
            ring=Uring(min(1 << (depth - 1).bit_length(), _MAX_RING_ENTRIES)),
            slots=np.zeros((depth, SLOT_COLUMNS), dtype=np.uint64),
            free=np.arange(depth, dtype=np.uint64),
            user_data=np.zeros(depth, dtype=np.uint64),
            results=np.zeros(depth, dtype=np.int32))
        channel.file_state = state
        row = channel.row
        row[ARG_RING] = state.ring.handle
        row[ARG_FD] = self.backing.fd
        row[ARG_BUFFERED_FD] = self.backing.buffered_fd
        if self.backing.direct:
            row[ARG_MEMORY_MASK] = self.backing.memory_alignment - 1
            row[ARG_LENGTH_MASK] = self.backing.offset_alignment - 1
        row[ARG_SLOTS] = state.slots.ctypes.data
        row[ARG_FREE] = state.free.ctypes.data
        row[ARG_FREE_COUNT] = depth
        row[ARG_USER_DATA] = state.user_data.ctypes.data
        row[ARG_RESULTS] = state.results.ctypes.data

    def _close_channel(self, channel) -> None:
        # The ring drains what is still in it before it goes.
        channel.file_state.ring.close()
        channel.file_state = None

    def close(self) -> None:
        super().close()
        if self.backing is not None:
            self.backing.close()
            self.backing = None

    def __repr__(self) -> str:
        io = "O_DIRECT" if self.direct else "buffered"
        return f"{super().__repr__()[:-1]}, {self.path}, {io}>"


@dataclass
class _ChannelState:
    # What a channel's row names: alive as long as the channel is open.
    ring: Uring
    slots: np.ndarray
    free: np.ndarray
    user_data: np.ndarray
    results: np.ndarray


def _make_or_extend(path: str, size: int, read_only: bool) -> None:
    # A file of at least `size` bytes at `path`, sparse where it grew. A block device's size
    # is its own.
    try:
        info = os.stat(path)
    except FileNotFoundError:
        info = None
    if info is not None and (stat.S_ISBLK(info.st_mode) or info.st_size >= size):
        return
    if read_only:
        raise ValueError(f"{path}: fewer than the {size} bytes asked for, and read-only")
    with open(path, "ab") as f:
        f.truncate(size)


def _flag(text: str) -> bool:
    # A spec's yes or no.
    value = text.strip().lower()
    if value in ("1", "yes", "on", "true"):
        return True
    if value in ("0", "no", "off", "false"):
        return False
    raise ValueError(f"{text!r} is neither yes (1, on, true) nor no (0, off, false)")


register_bdev_kind(BdevKind(
    code=KIND, name="file", argument="PATH",
    options={"size": parse_size, "block_size": int, "direct": _flag},
    help="a file or block device through io_uring, O_DIRECT where the file system allows it "
         "(size= makes or extends the file)",
    make=lambda argument, **options: FileBdev(argument, **options),
    start=start, kick=kick, reap=reap))
