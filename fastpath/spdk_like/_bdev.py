"""Bdevs: every block device behind one asynchronous API, after SPDK's bdev layer.

A `Bdev` is a block device of some kind (null, malloc, file, nvme, ...). I/O goes through a
`BdevChannel`, one per thread that submits (SPDK's I/O channel): requests are the block
device's executor records (`fastpath.devices.blk.BLOCK_IO`), submitted a burst at a time with
`bdev_submit(channel, ios, first, n) -> accepted`, and they complete, each exactly once, into a
`BLOCK_COMPLETION` array reaped by polling with `bdev_poll(channel, completions, max_n) -> n`.
Both are compiled and take the channel's row, so a poller calls them with no Python per I/O;
the Python methods of `BdevChannel` call the same kernels, one call per burst.

A channel's compiled face is one row of uint64 (`CH_*`). The checks every kind needs (range,
alignment, read-only, the channel's depth, injected errors) are made here, once, before a kind
sees a request; a request refused there completes with its status like any other. A kind
registers (`register_bdev_kind`) three compiled functions, called through a dispatch on the
row's kind:
- `start(channel, io) -> 1 | 0`: take one checked request (0: the kind is full for now; the
  caller keeps it). A kind that finishes it at once calls `complete_now`;
- `kick(channel)`: after a burst of starts, hand what was queued to the device (io_uring's
  submit, a doorbell);
- `reap(channel, completions, first, max_n) -> n`: completions the device produced since.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from fastpath._numba import NJIT, KindDispatch, carray, u64_pointer
from fastpath.devices.blk import (
    BLOCK_COMPLETION,
    BLOCK_IO,
    IO_DISCARD,
    IO_FLUSH,
    IO_OPERATIONS,
    IO_READ,
    IO_WRITE,
    IO_WRITE_ZEROES,
    IOVEC,
    STATUS_INVALID,
    STATUS_READ_ONLY,
    STATUS_UNSUPPORTED,
)

# Channel row columns (uint64).
CH_KIND = 0
CH_BLOCK_SIZE = 1
CH_SIZE = 2           # bytes
CH_FLAGS = 3          # CH_FLAG_*
CH_DEPTH = 4          # requests in flight at most
CH_IN_FLIGHT = 5
CH_DONE = 6           # address of the channel's BLOCK_COMPLETION ring (completed at once)
CH_DONE_MASK = 7      # its capacity (a power of two, at least the depth) - 1
CH_DONE_HEAD = 8      # next to reap
CH_DONE_TAIL = 9      # next to fill
CH_STATS = 10         # address of the channel's uint64 statistics (STAT_*)
CH_INJECT = 11        # address of an error-injection table (INJECT_*), or 0
CH_OPERATIONS = 12    # bit per IO_* operation the kind carries out
CH_ARGS = 16          # the kind's own arguments start here
CH_COLUMNS = 32

CH_FLAG_READ_ONLY = 1

# Statistics, per operation (row IO_*) and column: requests and bytes taken; row 0 (no
# operation) counts, in STAT_ERRORS, completions of any operation with an error.
STAT_OPS = 0
STAT_BYTES = 1
STAT_ERRORS = 2
STAT_COLUMNS = 3
STAT_ROWS = max(IO_OPERATIONS) + 1

# Error injection (`Bdev.inject_errors`): the operations it applies to (a bit per IO_*), the
# status they complete with, and how many more to fail.
INJECT_OPERATIONS = 0
INJECT_STATUS = 1
INJECT_REMAINING = 2
INJECT_COLUMNS = 3

_ALL_OPERATIONS = sum(1 << op for op in IO_OPERATIONS)
_WRITES = (1 << IO_WRITE) | (1 << IO_DISCARD) | (1 << IO_WRITE_ZEROES)


@njit(**NJIT)
def _as_word(status):
    # A negative errno kept in a uint64 word: its 32-bit two's complement.
    return np.uint64(status & 0xFFFFFFFF)


@njit(**NJIT)
def _as_status(word):
    value = np.int64(word & 0xFFFFFFFF)
    return value - (np.int64(1) << 32) if value >= (np.int64(1) << 31) else value


@njit(**NJIT)
def complete_now(channel, tag, status):
    """Queue the completion of a request the kind finished during `start` (the ring holds at
    least the channel's depth, so it has room)."""
    mask = channel[CH_DONE_MASK]
    tail = channel[CH_DONE_TAIL]
    # SAFETY: CH_DONE is the address of the channel's own ring of mask + 1 entries (two
    # uint64 words each), which the BdevChannel keeps alive.
    done = carray(u64_pointer(channel[CH_DONE]), (int(mask) + 1, 2))
    slot = tail & mask
    done[slot, 0] = tag
    done[slot, 1] = _as_word(status)
    channel[CH_DONE_TAIL] = tail + 1


@njit(**NJIT)
def _check(channel, io):
    # The status a request gets before any kind sees it, or 0 if it may go on.
    operation = int(io.operation)
    if operation >= 64 or not (channel[CH_OPERATIONS] >> operation) & 1:
        return STATUS_UNSUPPORTED
    if channel[CH_FLAGS] & CH_FLAG_READ_ONLY and (_WRITES >> operation) & 1:
        return STATUS_READ_ONLY
    if operation != IO_FLUSH:
        block = channel[CH_BLOCK_SIZE]
        size = channel[CH_SIZE]
        if io.length == 0 or io.offset % block != 0 or io.length % block != 0:
            return STATUS_INVALID
        if io.offset > size or io.length > size - io.offset:
            return STATUS_INVALID
    if operation == IO_READ or operation == IO_WRITE:
        if io.iovcnt == 0:
            return STATUS_INVALID
        # SAFETY: the submitter's iovec array of iovcnt entries (the contract); only read.
        iov = carray(u64_pointer(io.iov), (int(io.iovcnt), 2))
        total = 0
        for k in range(int(io.iovcnt)):
            total += iov[k, 1]
        if total != io.length:
            return STATUS_INVALID
    inject = channel[CH_INJECT]
    if inject != 0:
        # SAFETY: the injection table of the channel's bdev, alive while the bdev is.
        table = carray(u64_pointer(inject), (INJECT_COLUMNS,))
        if (table[INJECT_OPERATIONS] >> operation) & 1 and table[INJECT_REMAINING] > 0:
            table[INJECT_REMAINING] -= 1
            return _as_status(table[INJECT_STATUS])
    return 0


@njit(**NJIT)
def _takes_none(channel, io):
    # A row of no registered kind takes nothing.
    return 0


@njit(**NJIT)
def _nothing_queued(channel):
    return 0


@njit(**NJIT)
def _nothing_to_reap(channel, completions, first, max_n):
    return 0


_start = KindDispatch("bdev_start_kind", 2, _takes_none)
_kick = KindDispatch("bdev_kick_kind", 1, _nothing_queued)
_reap = KindDispatch("bdev_reap_kind", 4, _nothing_to_reap)
start_by_kind = _start.function
kick_by_kind = _kick.function
reap_by_kind = _reap.function


@njit(**NJIT)
def _stats(channel):
    # SAFETY: the channel's own statistics array, kept alive by its BdevChannel.
    return carray(u64_pointer(channel[CH_STATS]), (STAT_ROWS, STAT_COLUMNS))


@njit(**NJIT)
def bdev_submit(channel, ios, first, n):
    """Offer ios[first:first + n]; returns how many were taken (in order): the rest are the
    caller's still. Each request taken completes once, through `bdev_poll`."""
    stats = _stats(channel)
    taken = 0
    for k in range(first, first + n):
        if channel[CH_IN_FLIGHT] >= channel[CH_DEPTH]:
            break
        io = ios[k]
        status = _check(channel, io)
        if status != 0:
            complete_now(channel, io.tag, status)
        elif start_by_kind(channel, io) == 0:
            break
        else:
            operation = int(io.operation)
            stats[operation, STAT_OPS] += 1
            stats[operation, STAT_BYTES] += io.length
        channel[CH_IN_FLIGHT] += 1
        taken += 1
    if taken:
        kick_by_kind(channel)
    return taken


@njit(**NJIT)
def bdev_poll(channel, completions, max_n):
    """Reap up to `max_n` completions into completions[:n]; returns n."""
    mask = channel[CH_DONE_MASK]
    # SAFETY: as in complete_now.
    done = carray(u64_pointer(channel[CH_DONE]), (int(mask) + 1, 2))
    n = 0
    while n < max_n and channel[CH_DONE_HEAD] != channel[CH_DONE_TAIL]:
        slot = channel[CH_DONE_HEAD] & mask
        completions[n].tag = done[slot, 0]
        completions[n].status = _as_status(done[slot, 1])
        channel[CH_DONE_HEAD] += 1
        n += 1
    if n < max_n:
        n += reap_by_kind(channel, completions, n, max_n - n)
    stats = _stats(channel)
    for k in range(n):
        if completions[k].status != 0:
            stats[0, STAT_ERRORS] += 1
    channel[CH_IN_FLIGHT] -= n
    return n


@dataclass(frozen=True, kw_only=True)
class BdevKind:
    """One kind of bdev: its code, how a spec names it (`NAME:ARGUMENT` with `,key=value`
    options) and makes it, and its compiled functions (see the module's doc)."""

    code: int
    name: str
    argument: str                             # what follows the colon, for --help
    options: dict[str, Callable[[str], Any]]  # key=value options, each with its parser
    help: str
    make: Callable[..., Bdev]                 # (argument, **options) -> Bdev
    start: Callable[..., int]
    kick: Callable[..., Any] | None = None
    reap: Callable[..., int] | None = None


# The kinds by name, in the order of their codes.
BDEV_KINDS: dict[str, BdevKind] = {}


def register_bdev_kind(kind: BdevKind) -> BdevKind:
    """Register `kind` (before a kernel calling the dispatch is compiled); returns it.
    ValueError if its code or name is another kind's."""
    for other in BDEV_KINDS.values():
        if kind.code == other.code or kind.name == other.name:
            raise ValueError(f"bdev kind {kind.name!r} (code {kind.code}): {other.name!r} "
                             f"(code {other.code}) is registered already")
    _start.register(kind.code, kind.name, kind.start)
    if kind.kick is not None:
        _kick.register(kind.code, kind.name, kind.kick)
    if kind.reap is not None:
        _reap.register(kind.code, kind.name, kind.reap)
    kinds = sorted([*BDEV_KINDS.values(), kind], key=lambda k: k.code)
    BDEV_KINDS.clear()
    BDEV_KINDS.update((k.name, k) for k in kinds)
    return kind


@dataclass
class BdevStatistics:
    """What a bdev took, per operation (requests and bytes), and the completions with an
    error, of any operation."""

    read_ops: int = 0
    read_bytes: int = 0
    write_ops: int = 0
    write_bytes: int = 0
    flush_ops: int = 0
    discard_ops: int = 0
    discard_bytes: int = 0
    write_zeroes_ops: int = 0
    write_zeroes_bytes: int = 0
    errors: int = 0

    @classmethod
    def from_stats(cls, stats: np.ndarray) -> BdevStatistics:
        """From a channel's statistics array (or the sum of several)."""
        counts = {"errors": int(stats[0, STAT_ERRORS])}
        for operation, name in IO_OPERATIONS.items():
            counts[f"{name}_ops"] = int(stats[operation, STAT_OPS])
            if operation != IO_FLUSH:
                counts[f"{name}_bytes"] = int(stats[operation, STAT_BYTES])
        return cls(**counts)


class Bdev:
    """A block device of `size` bytes in blocks of `block_size` (512 or 4096).

    Subclasses set `kind` (the code their module registers) and `operations` (IO_* they carry
    out), and prepare each channel's kind arguments in `_open_channel` (releasing what that
    took in `_close_channel`).
    """

    kind = 0
    operations = frozenset(IO_OPERATIONS)

    def __init__(self, name: str, size: int, *, block_size: int = 512,
                 read_only: bool = False):
        if block_size not in (512, 4096):
            raise ValueError(f"a block is 512 or 4096 bytes, not {block_size}")
        if size <= 0 or size % block_size:
            raise ValueError(f"{name}: a size of {size} bytes is not a positive whole number "
                             f"of {block_size}-byte blocks")
        self.name = name
        self.size = size
        self.block_size = block_size
        self.read_only = read_only
        self.injection = np.zeros(INJECT_COLUMNS, dtype=np.uint64)
        self.channels: list[BdevChannel] = []
        self._closed_stats = np.zeros((STAT_ROWS, STAT_COLUMNS), dtype=np.uint64)

    @property
    def num_blocks(self) -> int:
        """Blocks of `block_size` bytes."""
        return self.size // self.block_size

    def open_channel(self, depth: int = 128) -> BdevChannel:
        """A channel for one submitting thread, taking up to `depth` requests in flight."""
        if not 1 <= depth <= 65536:
            raise ValueError(f"a channel's depth is 1 to 65536, not {depth}")
        channel = BdevChannel(self, depth)
        self._open_channel(channel)
        self.channels.append(channel)
        return channel

    def dma_buffer(self, channel: BdevChannel, size: int) -> np.ndarray:
        """`size` bytes, aligned to 4 KiB, that requests on `channel` may name as data
        without a copy (for most kinds any memory of this process; for a disk behind a
        front-end, memory it shares with its back-end)."""
        raw = np.zeros(size + 4096, dtype=np.uint8)
        start = -raw.ctypes.data % 4096
        return raw[start:start + size]

    def _open_channel(self, channel: BdevChannel) -> None:
        """Fill channel.row's kind arguments (from CH_ARGS); keep on the channel what they
        name."""

    def _close_channel(self, channel: BdevChannel) -> None:
        """Release what `_open_channel` took (nothing is in flight)."""

    def inject_errors(self, operations: set[int] | frozenset[int] = frozenset(IO_OPERATIONS),
                      status: int = -errno.EIO, count: int = 1) -> None:
        """Complete the next `count` requests of `operations` (IO_* values), on any channel,
        with `status` (a negative errno) instead of carrying them out; count 0 stops it."""
        if status >= 0:
            raise ValueError(f"an injected status is a negative errno, not {status}")
        self.injection[INJECT_OPERATIONS] = sum(1 << op for op in operations)
        self.injection[INJECT_STATUS] = status & 0xFFFFFFFF
        self.injection[INJECT_REMAINING] = count

    def statistics(self) -> BdevStatistics:
        """What the bdev completed on all its channels, open and closed."""
        total = self._closed_stats.copy()
        for channel in self.channels:
            total += channel.stats
        return BdevStatistics.from_stats(total)

    def close(self) -> None:
        """Close every channel and release the device."""
        for channel in list(self.channels):
            channel.close()

    def __enter__(self) -> Bdev:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = ", read-only" if self.read_only else ""
        return (f"<{type(self).__name__} {self.name}: {self.size} bytes, "
                f"{self.block_size}-byte blocks{mode}>")


class BdevChannel:
    """One thread's way into a bdev: `row` for compiled callers of `bdev_submit` and
    `bdev_poll`, and the same as methods, a call per burst."""

    def __init__(self, bdev: Bdev, depth: int):
        self.bdev = bdev
        self.depth = depth
        capacity = 1 << (depth - 1).bit_length()
        self.done = np.zeros((capacity, 2), dtype=np.uint64)
        self.stats = np.zeros((STAT_ROWS, STAT_COLUMNS), dtype=np.uint64)
        self.row = np.zeros(CH_COLUMNS, dtype=np.uint64)
        row = self.row
        row[CH_KIND] = bdev.kind
        row[CH_BLOCK_SIZE] = bdev.block_size
        row[CH_SIZE] = bdev.size
        row[CH_FLAGS] = CH_FLAG_READ_ONLY if bdev.read_only else 0
        row[CH_DEPTH] = depth
        row[CH_DONE] = self.done.ctypes.data
        row[CH_DONE_MASK] = capacity - 1
        row[CH_STATS] = self.stats.ctypes.data
        row[CH_INJECT] = bdev.injection.ctypes.data
        row[CH_OPERATIONS] = sum(1 << op for op in bdev.operations)
        self.closed = False
        self._buffer: np.ndarray | None = None

    @property
    def in_flight(self) -> int:
        """Requests taken and not yet reaped."""
        return int(self.row[CH_IN_FLIGHT])

    def submit(self, ios: np.ndarray, first: int = 0, n: int | None = None) -> int:
        """Offer ios[first:first + n] (all from `first` by default); returns how many were
        taken."""
        self._check_open()
        if ios.dtype != BLOCK_IO:
            raise TypeError(f"requests are a BLOCK_IO array, not {ios.dtype}")
        if n is None:
            n = len(ios) - first
        if first < 0 or n < 0 or first + n > len(ios):
            raise ValueError(f"requests {first}..{first + n} are not within {len(ios)}")
        return int(bdev_submit(self.row, ios, first, n))

    def poll(self, completions: np.ndarray, max_n: int | None = None) -> int:
        """Reap up to `max_n` (all that fit by default) completions; returns how many."""
        self._check_open()
        if completions.dtype != BLOCK_COMPLETION:
            raise TypeError(f"completions are a BLOCK_COMPLETION array, not "
                            f"{completions.dtype}")
        if max_n is None or max_n > len(completions):
            max_n = len(completions)
        return int(bdev_poll(self.row, completions, max_n))

    def run(self, ios: np.ndarray, timeout: float = 10.0) -> np.ndarray:
        """Submit every request and wait for all of them; returns their completions in the
        order they came. For control paths and tests: a call per burst, not per request."""
        import time

        completions = np.zeros(len(ios), dtype=BLOCK_COMPLETION)
        submitted = reaped = 0
        deadline = time.monotonic() + timeout
        while reaped < len(ios):
            if submitted < len(ios):
                submitted += self.submit(ios, submitted)
            got = self.poll(completions[reaped:])
            reaped += got
            if not got and time.monotonic() > deadline:
                raise TimeoutError(f"{self.bdev.name}: {len(ios) - reaped} of {len(ios)} "
                                   f"requests still in flight after {timeout} s")
        return completions

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (OSError with the request's errno on failure)."""
        data = self._scratch(length)
        self._one(IO_READ, offset, length, data)
        return data.tobytes()

    def write(self, offset: int, data: bytes) -> None:
        """Write `data` at `offset`."""
        buffer = self._scratch(len(data))
        buffer[:] = np.frombuffer(data, dtype=np.uint8)
        self._one(IO_WRITE, offset, len(buffer), buffer)

    def flush(self) -> None:
        """Make what was written durable."""
        self._one(IO_FLUSH, 0, 0, None)

    def discard(self, offset: int, length: int) -> None:
        """Let go of `length` bytes from `offset` (their contents are undefined after)."""
        self._one(IO_DISCARD, offset, length, None)

    def write_zeroes(self, offset: int, length: int) -> None:
        """Make `length` bytes from `offset` read back as zeros."""
        self._one(IO_WRITE_ZEROES, offset, length, None)

    def _scratch(self, length: int) -> np.ndarray:
        # The helpers' data goes through memory the bdev reaches without a copy, kept for the
        # next call and grown by doubling.
        if self._buffer is None or len(self._buffer) < length:
            self._buffer = self.bdev.dma_buffer(self, 1 << max(12, (length - 1).bit_length()))
        return self._buffer[:length]

    def _one(self, operation: int, offset: int, length: int, data: np.ndarray | None) -> None:
        ios = np.zeros(1, dtype=BLOCK_IO)
        iov = np.zeros(1, dtype=IOVEC)
        ios[0] = (0, offset, length, 0, 0, operation, 0, 0)
        if data is not None:
            iov[0] = (data.ctypes.data, len(data))
            ios[0]["iov"] = iov.ctypes.data
            ios[0]["iovcnt"] = 1
        status = int(self.run(ios)[0]["status"])
        if status:
            raise OSError(-status, f"{self.bdev.name}: {IO_OPERATIONS[operation]} of "
                                   f"{length} bytes at {offset}: {errno.errorcode[-status]}")

    def close(self) -> None:
        """Release the channel (wait for what is in flight first)."""
        if self.closed:
            return
        self.closed = True
        self.bdev._close_channel(self)
        self.bdev._closed_stats += self.stats
        self.bdev.channels.remove(self)

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"{self.bdev.name}: the channel is closed")


# --- specs: how commands name a bdev ---

_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(i?b)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from `4096`, `64M`, `1GiB`, `512k` (powers of 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size (bytes, or a number with K, M, G or T)")
    return int(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " ")


def open_bdev(spec: str, name: str | None = None, **overrides: Any) -> Bdev:
    """The bdev a spec names: `KIND:ARGUMENT[,key=value...]` (`null:1G`, `malloc:64M`,
    `file:/path/disk.img,block_size=4096`). `overrides` are options set by the caller (a
    command's --readonly, say); ValueError for a spec that names no kind or a bad option."""
    kind_name, _, rest = spec.partition(":")
    kind = BDEV_KINDS.get(kind_name)
    if kind is None:
        known = ", ".join(f"{k.name}:{k.argument}" for k in BDEV_KINDS.values())
        raise ValueError(f"{spec!r}: no bdev kind {kind_name!r} (kinds: {known})")
    argument, *pairs = rest.split(",") if rest else ("",)
    if not argument:
        raise ValueError(f"{spec!r}: {kind.name} needs {kind.argument} after the colon")
    options: dict[str, Any] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or key not in kind.options:
            raise ValueError(f"{spec!r}: {pair!r} is not an option of {kind.name} "
                             f"(options: {', '.join(kind.options) or 'none'})")
        options[key] = kind.options[key](value)
    options.update(overrides)
    return kind.make(argument, name=name or kind.name, **options)
