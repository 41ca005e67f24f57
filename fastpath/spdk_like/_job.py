"""`IoJob`: a poller that keeps a bdev channel busy with one workload, as a bdevperf job does.

The job holds `queue_depth` requests in flight: each round it reaps what completed, times it,
and submits each freed slot's next request. The clock is read once per reap and once per
submit, so a latency is exact to within a round. Latencies go into an array that Python hands
to an HdrHistogram in bulk between kernel calls (`service`); nothing runs in Python per I/O.

Workloads (bdevperf's names): read, write (sequential); randread, randwrite, randrw (random
offsets, `rwmix` percent reads); verify (each slot writes a pattern unique to the offset and
the pass, reads it back and compares; a mismatch is a miscompare and a failure); flush; unmap
(sequential discards).
"""

from __future__ import annotations

import numpy as np
from hdrh.histogram import HdrHistogram
from numba import njit

from fastpath._numba import (
    NJIT,
    carray,
    i64_pointer,
    monotonic_ns,
    u8_pointer,
    u64_pointer,
    void_pointer,
)
from fastpath.devices.blk import (
    BLOCK_COMPLETION,
    BLOCK_IO,
    IO_DISCARD,
    IO_FLUSH,
    IO_READ,
    IO_WRITE,
    IOVEC,
)
from fastpath.pmd import HOST_SERVICE, POLLER_ARGS, Poller, register_poller
from fastpath.spdk_like._bdev import CH_COLUMNS, BdevChannel, bdev_poll, bdev_submit

KIND = 16

WORKLOADS = {"read": 1, "write": 2, "randread": 3, "randwrite": 4, "randrw": 5, "verify": 6,
             "flush": 7, "unmap": 8}
_READ, _WRITE, _RANDREAD, _RANDWRITE, _RANDRW, _VERIFY, _FLUSH, _UNMAP = range(1, 9)

# Row arguments.
ARG_CHANNEL = POLLER_ARGS          # address of the channel's row
ARG_IOS = POLLER_ARGS + 1          # address of the job's BLOCK_IO array, one per slot
ARG_STAGING = POLLER_ARGS + 2      # address of a BLOCK_IO array the burst is submitted from
ARG_COMPLETIONS = POLLER_ARGS + 3  # address of a BLOCK_COMPLETION array (queue_depth)
ARG_SLOTS = POLLER_ARGS + 4        # address of int64 per-slot state (SLOT_* columns)
ARG_PENDING = POLLER_ARGS + 5      # address of an int64 list of slots waiting to be submitted
ARG_LATENCIES = POLLER_ARGS + 6    # address of int64 (capacity, 2): latency, times in a row
ARG_DEPTH = POLLER_ARGS + 7
ARG_WORKLOAD = POLLER_ARGS + 8
ARG_IO_SIZE = POLLER_ARGS + 9
ARG_SPAN = POLLER_ARGS + 10        # I/Os that fit the device (offsets are multiples of io_size)
ARG_RWMIX = POLLER_ARGS + 11       # percent reads, randrw
ARG_RANDOM = POLLER_ARGS + 12      # xorshift64 state
ARG_NEXT = POLLER_ARGS + 13        # the next sequential I/O
ARG_WAITING = POLLER_ARGS + 14     # slots in the pending list
ARG_LATENCY_COUNT = POLLER_ARGS + 15
ARG_LATENCY_CAPACITY = POLLER_ARGS + 16
ARG_DRAIN = POLLER_ARGS + 17       # 1: submit nothing more
ARG_COMPLETED = POLLER_ARGS + 18
ARG_FAILED = POLLER_ARGS + 19
ARG_MISCOMPARES = POLLER_ARGS + 20
ARG_BYTES = POLLER_ARGS + 21
ARG_BUFFERS = POLLER_ARGS + 22     # address of uint8 (2, depth, io_size): data, read-back

# Per-slot state (int64 columns).
SLOT_SUBMITTED = 0     # the clock when it was submitted
SLOT_OFFSET = 1
SLOT_PASS = 2          # verify: how many times the slot wrote (the pattern's seed)
SLOT_READING = 3       # verify: 1 while the read-back is in flight
SLOT_COLUMNS = 4


@njit(**NJIT)
def _random(row):
    # xorshift64: a fast, good-enough spread of offsets.
    x = row[ARG_RANDOM]
    x ^= x << np.uint64(13)
    x ^= x >> np.uint64(7)
    x ^= x << np.uint64(17)
    row[ARG_RANDOM] = x
    return x


@njit(**NJIT)
def _pattern(buffer, offset, seed):
    # Words that name the offset and the pass, so a block read back from the wrong place or
    # an older pass is told apart.
    words = buffer.shape[0] // 8
    # SAFETY: the buffer's own bytes, as whole words (io_size is a multiple of 512).
    view = carray(u64_pointer(buffer.ctypes.data), (words,))
    for k in range(words):
        view[k] = (np.uint64(seed) << np.uint64(40)) ^ (np.uint64(offset) + np.uint64(k * 8))


@njit(**NJIT)
def _prepare(row, slot, ios, slots, buffers, verify_buffers):
    # Fill slot's request with its next I/O.
    workload = row[ARG_WORKLOAD]
    size = row[ARG_IO_SIZE]
    io = ios[slot]
    # SAFETY: the slot's own iovec, which the IoJob keeps alive.
    iovec = carray(u64_pointer(io.iov), (2,))
    if workload == _VERIFY and slots[slot, SLOT_READING] == 1:
        iovec[0] = verify_buffers[slot].ctypes.data
        io.operation = IO_READ
        return
    iovec[0] = buffers[slot].ctypes.data
    if workload == _READ or workload == _WRITE or workload == _VERIFY or workload == _UNMAP:
        index = row[ARG_NEXT]
        row[ARG_NEXT] = (index + np.uint64(1)) % row[ARG_SPAN]
    elif workload == _FLUSH:
        index = np.uint64(0)
    else:
        index = _random(row) % row[ARG_SPAN]
    offset = index * size
    io.offset = offset
    slots[slot, SLOT_OFFSET] = offset
    if workload == _READ or workload == _RANDREAD:
        io.operation = IO_READ
    elif workload == _WRITE or workload == _RANDWRITE:
        io.operation = IO_WRITE
    elif workload == _RANDRW:
        io.operation = IO_READ if _random(row) % np.uint64(100) < row[ARG_RWMIX] else IO_WRITE
    elif workload == _FLUSH:
        io.operation = IO_FLUSH
    elif workload == _UNMAP:
        io.operation = IO_DISCARD
    else:
        slots[slot, SLOT_PASS] += 1
        _pattern(buffers[slot], offset, slots[slot, SLOT_PASS])
        io.operation = IO_WRITE


@njit(**NJIT)
def run_job(row, buffers, verify_buffers):
    """One round: reap, time and account for what completed, then submit every free slot's
    next request (unless draining). Returns the requests completed."""
    depth = np.int64(row[ARG_DEPTH])
    # SAFETY: every address is of an array the IoJob allocated with these shapes and keeps
    # alive while it is on a host.
    channel = carray(u64_pointer(row[ARG_CHANNEL]), (CH_COLUMNS,))
    ios = carray(void_pointer(row[ARG_IOS]), (depth,), BLOCK_IO)
    staging = carray(void_pointer(row[ARG_STAGING]), (depth,), BLOCK_IO)
    completions = carray(void_pointer(row[ARG_COMPLETIONS]), (depth,), BLOCK_COMPLETION)
    slots = carray(i64_pointer(row[ARG_SLOTS]), (depth, SLOT_COLUMNS))
    pending = carray(i64_pointer(row[ARG_PENDING]), (depth,))
    capacity = np.int64(row[ARG_LATENCY_CAPACITY])
    latencies = carray(i64_pointer(row[ARG_LATENCIES]), (capacity, 2))
    workload = row[ARG_WORKLOAD]
    size = row[ARG_IO_SIZE]

    reaped = bdev_poll(channel, completions, depth)
    if reaped:
        now = monotonic_ns()
        waiting = np.int64(row[ARG_WAITING])
        for k in range(reaped):
            slot = np.int64(completions[k].tag)
            # Requests submitted together and reaped together took the same time: one
            # entry with a count, so that Python has little to hand to the histogram.
            latency = now - slots[slot, SLOT_SUBMITTED]
            count = np.int64(row[ARG_LATENCY_COUNT])
            if count > 0 and latencies[count - 1, 0] == latency:
                latencies[count - 1, 1] += 1
            elif count < capacity:
                latencies[count, 0] = latency
                latencies[count, 1] = 1
                row[ARG_LATENCY_COUNT] = count + 1
            row[ARG_COMPLETED] += 1
            if completions[k].status != 0:
                row[ARG_FAILED] += 1
                slots[slot, SLOT_READING] = 0
            else:
                if ios[slot].operation != IO_FLUSH:
                    row[ARG_BYTES] += size
                if workload == _VERIFY:
                    if slots[slot, SLOT_READING] == 0:
                        slots[slot, SLOT_READING] = 1
                    else:
                        slots[slot, SLOT_READING] = 0
                        written = buffers[slot]
                        read = verify_buffers[slot]
                        _pattern(written, slots[slot, SLOT_OFFSET], slots[slot, SLOT_PASS])
                        for b in range(written.shape[0]):
                            if written[b] != read[b]:
                                row[ARG_MISCOMPARES] += 1
                                row[ARG_FAILED] += 1
                                break
            pending[waiting] = slot
            waiting += 1
        row[ARG_WAITING] = waiting
    if row[ARG_DRAIN] == 0 and row[ARG_WAITING] > 0:
        waiting = np.int64(row[ARG_WAITING])
        for k in range(waiting):
            slot = pending[k]
            _prepare(row, slot, ios, slots, buffers, verify_buffers)
            staging[k] = ios[slot]
        now = monotonic_ns()
        taken = bdev_submit(channel, staging, 0, waiting)
        for k in range(taken):
            slots[pending[k], SLOT_SUBMITTED] = now
        # What was not taken waits, in order, for the next round.
        for k in range(taken, waiting):
            pending[k - taken] = pending[k]
        row[ARG_WAITING] = waiting - taken
    return reaped


@njit(**NJIT)
def poll(row, host):
    """The poller: a round of the job; asks the host for service once the latency array is
    half full."""
    depth = np.int64(row[ARG_DEPTH])
    # SAFETY: the job's buffers, (2, depth, io_size) uint8, kept alive by the IoJob.
    buffers = carray(u8_pointer(row[ARG_BUFFERS]), (2, depth, np.int64(row[ARG_IO_SIZE])))
    done = run_job(row, buffers[0], buffers[1])
    if row[ARG_LATENCY_COUNT] * 2 >= row[ARG_LATENCY_CAPACITY]:
        host[HOST_SERVICE] = 1
    return done


register_poller(KIND, "io-job", poll)


# Distinct latencies kept between two services; the kernel asks for service at half.
LATENCY_CAPACITY = 1 << 16
# The longest latency the histogram holds: a minute, in nanoseconds.
_LONGEST_NS = 60_000_000_000


class IoJob(Poller):
    """Keeps `queue_depth` requests of `workload` (a WORKLOADS name) of `io_size` bytes in
    flight on `channel`; `rwmix` is randrw's percentage of reads.

    Counters and the latency histogram (`histogram`, nanoseconds) are read between kernel
    calls or once the job is drained (`drain()`, then poll until `in_flight` is 0).
    """

    kind = KIND

    def __init__(self, channel: BdevChannel, workload: str, *, queue_depth: int = 32,
                 io_size: int = 4096, rwmix: int = 50, seed: int = 1):
        if workload not in WORKLOADS:
            raise ValueError(f"workload {workload!r} is none of {', '.join(WORKLOADS)}")
        bdev = channel.bdev
        if io_size <= 0 or io_size % bdev.block_size or io_size > bdev.size:
            raise ValueError(f"an I/O of {io_size} bytes is not a whole number of "
                             f"{bdev.name}'s {bdev.block_size}-byte blocks within its "
                             f"{bdev.size} bytes")
        if not 1 <= queue_depth <= channel.depth:
            raise ValueError(f"queue depth {queue_depth} is not 1 to the channel's "
                             f"{channel.depth}")
        if not 0 <= rwmix <= 100:
            raise ValueError(f"rwmix is a percentage of reads, not {rwmix}")
        super().__init__()
        self.channel = channel
        self.workload = workload
        self.queue_depth = queue_depth
        self.io_size = io_size
        self.rwmix = rwmix
        # Aligned (O_DIRECT) and where the bdev can reach them without a copy.
        self.buffers = bdev.dma_buffer(channel, 2 * queue_depth * io_size).reshape(
            2, queue_depth, io_size)
        self.iovecs = np.zeros(queue_depth, dtype=IOVEC)
        self.ios = np.zeros(queue_depth, dtype=BLOCK_IO)
        self.staging = np.zeros(queue_depth, dtype=BLOCK_IO)
        self.completions = np.zeros(queue_depth, dtype=BLOCK_COMPLETION)
        self.slots = np.zeros((queue_depth, SLOT_COLUMNS), dtype=np.int64)
        self.pending = np.arange(queue_depth, dtype=np.int64)
        self.latencies = np.zeros((LATENCY_CAPACITY, 2), dtype=np.int64)
        for slot in range(queue_depth):
            self.iovecs[slot] = (self.buffers[0, slot].ctypes.data, io_size)
            self.ios[slot] = (slot, 0, io_size, self.iovecs[slot:].ctypes.data, 1, IO_READ,
                              0, 0)
        self.histogram = HdrHistogram(1, _LONGEST_NS, 3)
        row = self.row
        row[ARG_CHANNEL] = channel.row.ctypes.data
        row[ARG_IOS] = self.ios.ctypes.data
        row[ARG_STAGING] = self.staging.ctypes.data
        row[ARG_COMPLETIONS] = self.completions.ctypes.data
        row[ARG_SLOTS] = self.slots.ctypes.data
        row[ARG_PENDING] = self.pending.ctypes.data
        row[ARG_LATENCIES] = self.latencies.ctypes.data
        row[ARG_LATENCY_CAPACITY] = LATENCY_CAPACITY
        row[ARG_DEPTH] = queue_depth
        row[ARG_WORKLOAD] = WORKLOADS[workload]
        row[ARG_IO_SIZE] = io_size
        row[ARG_SPAN] = bdev.size // io_size
        row[ARG_RWMIX] = rwmix
        row[ARG_RANDOM] = seed or 1
        row[ARG_WAITING] = queue_depth
        row[ARG_BUFFERS] = self.buffers.ctypes.data

    def service(self) -> None:
        """Hand the latencies recorded since the last call to the histogram: one record per
        distinct value (the clock is read once per round, so there are few)."""
        count = int(self.row[ARG_LATENCY_COUNT])
        if count:
            values, where = np.unique(self.latencies[:count, 0], return_inverse=True)
            counts = np.bincount(where, weights=self.latencies[:count, 1]).astype(np.int64)
            for value, times in zip(values.tolist(), counts.tolist(), strict=True):
                self.histogram.record_value(max(value, 1), times)
            self.row[ARG_LATENCY_COUNT] = 0

    def drain(self) -> None:
        """Submit nothing more; what is in flight still completes."""
        self.row[ARG_DRAIN] = 1

    @property
    def in_flight(self) -> int:
        """Requests submitted and not yet completed."""
        return self.channel.in_flight

    @property
    def completed(self) -> int:
        """Requests completed, failed ones included."""
        return int(self.row[ARG_COMPLETED])

    @property
    def failed(self) -> int:
        """Requests that completed with an error, and verify's miscompares."""
        return int(self.row[ARG_FAILED])

    @property
    def miscompares(self) -> int:
        """verify: blocks read back unlike what was written."""
        return int(self.row[ARG_MISCOMPARES])

    @property
    def bytes(self) -> int:
        """Bytes of the requests that succeeded (flushes move none)."""
        return int(self.row[ARG_BYTES])
