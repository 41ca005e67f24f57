"""The compiled request path of one virtio-blk request queue (virtio 1.2 §5.2.6), for pollers.

A poller serves a queue with two calls, a burst each, no Python per request:

    n = take_requests(queue, ios, max_n)        # BLOCK_IO records in ios[:n]; < 0: ring broken
    used = complete_requests(queue, completions, n)   # BLOCK_COMPLETION records back

`queue` is a `BlkQueue`'s `arrays`, a tuple of its six arrays (a poller that keeps them by
address rebuilds them with these dtypes and shapes):

    state     uint64 (STATE_COLUMNS,)             the ST_* columns, then the counters
    chains    CHAIN_DTYPE (max_burst,)            a pop's chains; the used ones gather here
    segments  SEGMENT_DTYPE (any,)                a pop's segments
    heads     REQUEST_HEAD_DTYPE (max_burst,)     each popped request's first 32 bytes
    inflight  INFLIGHT_DTYPE (queue size,)        the requests the executor holds, by slot
    iovecs    IOVEC (queue size * ST_IOVEC_ROOM,) each slot's iovecs, a BLOCK_IO's `iov`

`take_requests` pops up to max_n chains and turns each into one BLOCK_IO record for the
executor (IN, OUT, FLUSH, DISCARD, WRITE_ZEROES) or completes it at once itself (GET_ID, an
empty read or write, and every bad request, with the status §5.2.6 asks for). An executor's
completions come back through `complete_requests`, which writes each request's status byte and
uses its chain. Either call pushes what it completed in one burst and notifies the driver as
the ring's suppression rules say (§2.7.10, §2.8.10).

One thread serves a queue, both calls: they share the queue's scratch arrays. The executor's
writes into a read's buffers are visible to that thread before it calls `complete_requests`
(the executor's completion queue orders them), and the push's release store that hands the
used element over (the split ring's index, §2.7.8; the packed descriptor's flags, §2.8.2)
publishes them with the status byte.
"""

import errno

import numpy as np
from numba import njit

from fastpath._numba import NJIT, copy_bytes
from fastpath.devices.blk._io import (
    IO_DISCARD,
    IO_FLAG_FUA,
    IO_FLAG_MAY_UNMAP,
    IO_FLUSH,
    IO_READ,
    IO_WRITE,
    IO_WRITE_ZEROES,
    IOVEC,
)
from fastpath.devices.blk._layout import (
    DISCARD_WRITE_ZEROES_DTYPE,
    DISCARD_WRITE_ZEROES_SIZE,
    OUTHDR_DTYPE,
    OUTHDR_SIZE,
    SECTOR_SIZE,
    VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
)
from fastpath.vring.kernels import (
    device_should_notify,
    eventfd_signal,
    gather_burst,
    pop_burst,
    push_burst,
)

# --- state: one uint64 array per queue ---
ST_QUEUE = 0             # the DeviceQueue's handle
ST_PACKED = 1            # 1 for a packed ring
ST_CALL_FD = 2           # the driver's call eventfd as an int64 bit pattern (-1: none)
ST_CAPACITY = 3          # the disk, in 512-byte sectors
ST_BLOCK_SECTORS = 4     # the logical block size, in sectors (1 or 8)
ST_READ_ONLY = 5         # 1: every write, discard and write-zeroes fails (§5.2.6.2)
ST_WRITETHROUGH = 6      # 1: writes carry IO_FLAG_FUA (§5.2.6.2, stable writes)
ST_MAX_DISCARD = 7       # max_discard_sectors
ST_MAX_WRITE_ZEROES = 8  # max_write_zeroes_sectors
ST_IOVEC_ROOM = 9        # iovecs each in-flight slot owns
ST_FREE = 10             # the first free in-flight slot, NO_SLOT when none
ST_IN_FLIGHT = 11        # requests handed to the executor and not completed
ST_SERIAL = 12           # 3 columns: the device ID string, NUL-padded (GET_ID's data)
ST_STATUS_BYTES = 15     # bytes 0, 1, 2 in order: where status bytes are copied from
ST_DETACHED = 16         # 1: the ring is no longer the queue's to touch (see BlkQueue.detach)
COUNTERS_AT = 17

# Counters (uint64 columns of the state), from the queue's creation.
# Requests by type, counted once the header is read:
N_IN = COUNTERS_AT + 0
N_OUT = COUNTERS_AT + 1
N_FLUSH = COUNTERS_AT + 2
N_GET_ID = COUNTERS_AT + 3
N_DISCARD = COUNTERS_AT + 4
N_WRITE_ZEROES = COUNTERS_AT + 5
N_UNKNOWN = COUNTERS_AT + 6
# Requests failed by the device, by reason:
E_BAD_CHAIN = COUNTERS_AT + 7      # the ring layer refused the chain: used, nothing written
E_NO_STATUS = COUNTERS_AT + 8      # no device-writable byte for the status: used, len 0
E_BAD_HEADER = COUNTERS_AT + 9     # fewer than 16 device-readable bytes: IOERR
E_DIRECTION = COUNTERS_AT + 10     # data where the type has none (readable for IN, ...): IOERR
E_LENGTH = COUNTERS_AT + 11        # data not whole sectors, or not one whole range: IOERR
E_ALIGNMENT = COUNTERS_AT + 12     # not aligned to the logical block size: IOERR
E_RANGE = COUNTERS_AT + 13         # past the capacity, or over a discard/zeroes limit: IOERR
E_SEGMENTS = COUNTERS_AT + 14      # more data pieces than a slot's iovecs: IOERR
E_READ_ONLY = COUNTERS_AT + 15     # a write, discard or write-zeroes on a read-only disk: IOERR
E_UNSUPPORTED = COUNTERS_AT + 16   # unknown type, flags or unmap on discard, ranges > 1: UNSUPP
# Status bytes written, whoever completed the request:
N_STATUS_OK = COUNTERS_AT + 17
N_STATUS_IOERR = COUNTERS_AT + 18
N_STATUS_UNSUPP = COUNTERS_AT + 19
# The executor's side:
N_SUBMITTED = COUNTERS_AT + 20     # BLOCK_IO records handed out
N_STALE = COUNTERS_AT + 21         # completions naming no request in flight: ignored
N_BYTES_READ = COUNTERS_AT + 22    # of reads completed OK
N_BYTES_WRITTEN = COUNTERS_AT + 23  # of writes completed OK
N_NOTIFIED = COUNTERS_AT + 24      # calls signalled
N_BROKEN = COUNTERS_AT + 25        # pops that found the ring broken
N_ABANDONED = COUNTERS_AT + 26     # completions after the queue was detached: nothing written
STATE_COLUMNS = COUNTERS_AT + 27

COUNTERS = {
    "in": N_IN, "out": N_OUT, "flush": N_FLUSH, "get_id": N_GET_ID, "discard": N_DISCARD,
    "write_zeroes": N_WRITE_ZEROES, "unknown": N_UNKNOWN,
    "bad_chain": E_BAD_CHAIN, "no_status": E_NO_STATUS, "bad_header": E_BAD_HEADER,
    "direction": E_DIRECTION, "length": E_LENGTH, "alignment": E_ALIGNMENT, "range": E_RANGE,
    "segments": E_SEGMENTS, "read_only": E_READ_ONLY, "unsupported": E_UNSUPPORTED,
    "status_ok": N_STATUS_OK, "status_ioerr": N_STATUS_IOERR, "status_unsupp": N_STATUS_UNSUPP,
    "submitted": N_SUBMITTED, "stale": N_STALE, "bytes_read": N_BYTES_READ,
    "bytes_written": N_BYTES_WRITTEN, "notified": N_NOTIFIED, "broken": N_BROKEN,
    "abandoned": N_ABANDONED,
}
"""Counter name -> its column of the state."""

REASONS = ("bad_chain", "no_status", "bad_header", "direction", "length", "alignment", "range",
           "segments", "read_only", "unsupported")
"""The counters of requests the device failed itself, one per reason."""

NO_SLOT = 0xFFFFFFFF

# What the device remembers of a request the executor holds (a row per slot; the slot is the
# low 32 bits of its BLOCK_IO tag, the slot's generation the high 32).
INFLIGHT_DTYPE = np.dtype([
    ("status", "<u8"),        # host address of the status byte
    ("id", "<u4"),            # the chain's buffer id (split: its head)
    ("writable_len", "<u4"),  # the chain's device-writable bytes (the push clips to them)
    ("used_len", "<u4"),      # bytes to report used on success: read data and status byte
    ("length", "<u4"),        # data bytes, for the byte counters
    ("generation", "<u4"),    # bumped at every use of the slot: a stale tag does not match
    ("next_free", "<u4"),     # the free list's link
    ("ndesc", "<u2"),         # ring slots the chain took (packed: how far its use moves)
    ("operation", "u1"),      # IO_*
    ("busy", "u1"),
    ("reserved", "<u4"),
])
assert INFLIGHT_DTYPE.itemsize == 40


def _request_head_dtype() -> np.dtype:
    # A request's first 32 device-readable bytes as one gather copies them: its header, then
    # the range a DISCARD or WRITE_ZEROES carries (one each: max_*_seg is 1).
    names, formats, offsets = [], [], []
    for prefix, dtype, base in (("", OUTHDR_DTYPE, 0),
                                ("range_", DISCARD_WRITE_ZEROES_DTYPE, OUTHDR_SIZE)):
        for name, (field, offset) in dtype.fields.items():
            names.append(prefix + name)
            formats.append(field)
            offsets.append(base + offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                     "itemsize": OUTHDR_SIZE + DISCARD_WRITE_ZEROES_SIZE})


REQUEST_HEAD_DTYPE = _request_head_dtype()
REQUEST_HEAD_SIZE = REQUEST_HEAD_DTYPE.itemsize
assert REQUEST_HEAD_SIZE == 32

# What a request's handling came to, besides a status byte to write (0, 1 or 2).
_SUBMITTED = -2   # a BLOCK_IO record was made: the executor completes it
_DROPPED = -1     # used with length 0, nothing written (no status byte to write)

_SECTOR = np.uint64(SECTOR_SIZE)
_HEADER = np.uint32(OUTHDR_SIZE)
_ZERO = np.uint64(0)
_RANGE = np.uint64(DISCARD_WRITE_ZEROES_SIZE)
_UNMAP = np.uint32(VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)
_IOVEC_SIZE = np.uint64(IOVEC.itemsize)
_EOPNOTSUPP = -errno.EOPNOTSUPP
_ONE = np.uint64(1)   # uint64 counters: an int64 1 would make the sum a float64


@njit(**NJIT)
def _write_status(state, address, status):
    # SAFETY: `address` is the last device-writable byte of a chain this queue popped and has
    # not used yet: the pop translated it whole, and the queue's keepalive holds its mapping.
    # The source is one of the three bytes of the ST_STATUS_BYTES column.
    copy_bytes(address, np.uint64(state.ctypes.data) + np.uint64(ST_STATUS_BYTES * 8)
               + np.uint64(status), np.uint64(1))
    state[N_STATUS_OK + status] += _ONE


@njit(**NJIT)
def _fail(state, reason):
    # A request the device refuses itself: IOERR, or UNSUPP for what it does not support.
    state[reason] += _ONE
    return (VIRTIO_BLK_S_UNSUPP if reason == E_UNSUPPORTED else VIRTIO_BLK_S_IOERR), 1


@njit(**NJIT)
def _status_address(chain, segments):
    # §5.2.6: the status byte is the last device-writable byte (the chain has one), wherever
    # its descriptor starts; pops emit no empty segments, so it ends the last one.
    last = segments[chain.first_seg + chain.nseg - 1]
    return last.addr + np.uint64(last.len) - _ONE


@njit(**NJIT)
def _range_error(state, sector, nbytes):
    # 0, or why the device refuses [sector, + nbytes) (§5.2.6.1: data in whole sectors, never
    # past capacity; the logical block size as QEMU holds requests to it). Overflow-free: the
    # sector is held to the capacity before any multiplication.
    if nbytes % _SECTOR:
        return E_LENGTH
    sectors = nbytes // _SECTOR
    block = state[ST_BLOCK_SECTORS]
    if sector % block or sectors % block:
        return E_ALIGNMENT
    capacity = state[ST_CAPACITY]
    if sector > capacity or sectors > capacity - sector:
        return E_RANGE
    return 0


@njit(**NJIT)
def _data_iovecs(segments, first, count, skip, length, iovecs, at, room):
    # Iovecs over bytes [skip, skip + length) of segments[first:first + count], from
    # iovecs[at]; returns how many, or -1 when they need more than `room`.
    n = 0
    start = _ZERO
    end = skip + length
    for k in range(count):
        segment = segments[first + k]
        stop = start + np.uint64(segment.len)
        low = max(start, skip)
        high = min(stop, end)
        if low < high:
            if n == room:
                return -1
            iovecs[at + n].base = segment.addr + (low - start)
            iovecs[at + n].length = high - low
            n += 1
        if stop >= end:
            break
        start = stop
    return n


@njit(**NJIT)
def _write_id(state, segments, first, count, n):
    # SAFETY: segments[first:first + count] are the chain's device-writable pieces, translated
    # whole by the pop, and the n bytes written stop before its status byte (the caller's n);
    # the source is the 24 bytes of the ST_SERIAL columns (n <= 20).
    source = np.uint64(state.ctypes.data) + np.uint64(ST_SERIAL * 8)
    done = np.uint64(0)
    for k in range(count):
        if done == n:
            break
        segment = segments[first + k]
        step = min(np.uint64(segment.len), n - done)
        copy_bytes(segment.addr, source + done, step)
        done += step


@njit(**NJIT)
def _submit(state, chain, status, operation, offset, length, flags, used_len, segments, first,
            count, skip, inflight, iovecs, ios, k):
    # Make ios[k] for the chain, in a free slot; (_SUBMITTED, 0), or the failure when its data
    # needs more iovecs than a slot has.
    slot = np.uint32(state[ST_FREE])
    room = np.int64(state[ST_IOVEC_ROOM])
    at = np.int64(slot) * room
    iovcnt = 0
    if operation == IO_READ or operation == IO_WRITE:
        iovcnt = _data_iovecs(segments, first, count, skip, length, iovecs, at, room)
        if iovcnt < 0:
            return _fail(state, E_SEGMENTS)
    row = inflight[slot]
    state[ST_FREE] = row.next_free
    state[ST_IN_FLIGHT] += _ONE
    row.generation += np.uint32(1)
    row.busy = 1
    row.status = status
    row.id = chain.id
    row.ndesc = chain.ndesc
    row.writable_len = chain.writable_len
    row.used_len = used_len
    row.length = length
    row.operation = operation
    io = ios[k]
    io.tag = np.uint64(row.generation) << np.uint64(32) | np.uint64(slot)
    io.offset = offset
    io.length = length
    io.iov = (np.uint64(iovecs.ctypes.data) + np.uint64(at) * _IOVEC_SIZE
              if iovcnt else np.uint64(0))
    io.iovcnt = iovcnt
    io.operation = operation
    io.flags = flags
    io.reserved = 0
    state[N_SUBMITTED] += _ONE
    return _SUBMITTED, 0


@njit(**NJIT)
def _handle(state, chain, head, segments, inflight, iovecs, ios, k):
    # One popped chain: (_SUBMITTED, 0) with ios[k] made, (_DROPPED, 0), or (status, used
    # length) for the device to complete it with now. Checks go in a fixed order, mirrored by
    # fastpath.testing.reference.blk, so that a request with several faults fails one way.
    if chain.error != 0:
        state[E_BAD_CHAIN] += _ONE
        return _DROPPED, 0
    if chain.writable_len == 0:
        # §5.2.6: the status byte is device-writable and last; without one there is nowhere
        # to report anything, so nothing is written at all.
        state[E_NO_STATUS] += _ONE
        return _DROPPED, 0
    if chain.readable_len < _HEADER:
        return _fail(state, E_BAD_HEADER)
    status = _status_address(chain, segments)
    kind = head.type
    sector = head.sector
    readable = np.uint64(chain.readable_len - _HEADER)   # data bytes after the header
    writable = np.uint64(chain.writable_len) - _ONE      # data bytes before the status byte
    first_readable = np.int64(chain.first_seg)
    first_writable = first_readable + np.int64(chain.nreadable)
    writable_segments = np.int64(chain.nseg) - np.int64(chain.nreadable)
    if kind == VIRTIO_BLK_T_IN:
        state[N_IN] += _ONE
        if readable:
            return _fail(state, E_DIRECTION)
        why = _range_error(state, sector, writable)
        if why:
            return _fail(state, why)
        if writable == 0:
            return VIRTIO_BLK_S_OK, 1
        return _submit(state, chain, status, IO_READ, sector * _SECTOR, writable, 0,
                       writable + _ONE, segments, first_writable, writable_segments, _ZERO,
                       inflight, iovecs, ios, k)
    if kind == VIRTIO_BLK_T_OUT:
        state[N_OUT] += _ONE
        if writable:
            return _fail(state, E_DIRECTION)
        if state[ST_READ_ONLY]:
            return _fail(state, E_READ_ONLY)
        why = _range_error(state, sector, readable)
        if why:
            return _fail(state, why)
        if readable == 0:
            return VIRTIO_BLK_S_OK, 1
        flags = IO_FLAG_FUA if state[ST_WRITETHROUGH] else 0
        return _submit(state, chain, status, IO_WRITE, sector * _SECTOR, readable, flags, _ONE,
                       segments, first_readable, np.int64(chain.nreadable),
                       np.uint64(OUTHDR_SIZE), inflight, iovecs, ios, k)
    if kind == VIRTIO_BLK_T_FLUSH:
        # §5.2.6.1: the driver sets sector 0 and SHOULD NOT send data: neither is an error
        # (QEMU ignores both too); any data is left untouched.
        state[N_FLUSH] += _ONE
        return _submit(state, chain, status, IO_FLUSH, _ZERO, _ZERO, 0, _ONE, segments, 0, 0,
                       _ZERO, inflight, iovecs, ios, k)
    if kind == VIRTIO_BLK_T_GET_ID:
        state[N_GET_ID] += _ONE
        if readable:
            return _fail(state, E_DIRECTION)
        n = min(writable, np.uint64(VIRTIO_BLK_ID_BYTES))
        _write_id(state, segments, first_writable, writable_segments, n)
        return VIRTIO_BLK_S_OK, np.int64(n) + 1
    if kind == VIRTIO_BLK_T_DISCARD or kind == VIRTIO_BLK_T_WRITE_ZEROES:
        discard = kind == VIRTIO_BLK_T_DISCARD
        state[N_DISCARD if discard else N_WRITE_ZEROES] += _ONE
        if writable:
            return _fail(state, E_DIRECTION)
        if readable == 0 or readable % _RANGE:
            return _fail(state, E_LENGTH)
        if readable > _RANGE:
            # More ranges than max_discard_seg / max_write_zeroes_seg (1), as QEMU answers.
            return _fail(state, E_UNSUPPORTED)
        flags = head.range_flags
        # §5.2.6.2: UNSUPP for an unknown flag, and for unmap on a discard.
        if flags & ~_UNMAP or (discard and flags & _UNMAP):
            return _fail(state, E_UNSUPPORTED)
        if state[ST_READ_ONLY]:
            return _fail(state, E_READ_ONLY)
        sectors = np.uint64(head.range_num_sectors)
        if sectors > state[ST_MAX_DISCARD if discard else ST_MAX_WRITE_ZEROES]:
            return _fail(state, E_RANGE)
        why = _range_error(state, head.range_sector, sectors * _SECTOR)
        if why:
            return _fail(state, why)
        if sectors == 0:
            return VIRTIO_BLK_S_OK, 1
        if discard:
            operation, io_flags = IO_DISCARD, 0
        else:
            operation = IO_WRITE_ZEROES
            io_flags = ((IO_FLAG_MAY_UNMAP if flags & _UNMAP else 0)
                        | (IO_FLAG_FUA if state[ST_WRITETHROUGH] else 0))
        return _submit(state, chain, status, operation, head.range_sector * _SECTOR,
                       sectors * _SECTOR, io_flags, _ONE, segments, 0, 0, _ZERO, inflight,
                       iovecs, ios, k)
    state[N_UNKNOWN] += _ONE
    return _fail(state, E_UNSUPPORTED)


@njit(**NJIT)
def _set_used(chains, j, chain_id, ndesc, writable_len, error, written):
    # chains[j] as the push reads it: the buffer, its ring slots and what was written.
    used = chains[j]
    used.id = chain_id
    used.first_seg = 0
    used.nseg = 0
    used.nreadable = 0
    used.ndesc = ndesc
    used.error = error
    used.readable_len = 0
    used.writable_len = writable_len
    used.written = written
    used.reserved = 0


@njit(**NJIT)
def _push(state, chains, n):
    # Use chains[:n] and notify the driver if it asked to be (§2.7.10, §2.8.10).
    packed = state[ST_PACKED] != 0
    pushed = push_burst(packed, state[ST_QUEUE], chains.ctypes.data, n)
    if device_should_notify(packed, state[ST_QUEUE]):
        fd = np.int64(state[ST_CALL_FD])
        if fd >= 0:
            eventfd_signal(np.int32(fd))
            state[N_NOTIFIED] += _ONE
    return pushed


@njit(**NJIT)
def take_requests(queue, ios, max_n):
    """Pop up to max_n requests from the queue's ring; returns how many BLOCK_IO records it
    made in ios[:n], or an FP_E_* code (< 0) once the ring is broken (reset it).

    Requests the device completes itself (GET_ID, empty reads and writes, bad requests) are
    used before it returns, with the driver notified as it asked. Fewer than max_n records
    come back when the ring has fewer requests, or when those completed at once took some of
    the burst; at most as many as there are free in-flight slots and rows in ios."""
    state, chains, segments, heads, inflight, iovecs = queue
    want = min(max_n, len(ios), len(chains), len(inflight) - np.int64(state[ST_IN_FLIGHT]))
    if want <= 0 or state[ST_DETACHED]:
        return 0
    packed = state[ST_PACKED] != 0
    n = pop_burst(packed, state[ST_QUEUE], chains.ctypes.data, want, segments.ctypes.data,
                  len(segments))
    if n < 0:
        state[N_BROKEN] += _ONE
        return n
    # Each request's header (and range) copied once: the guest may change its buffers while
    # we look, and reads the copy cannot see a change in.
    gather_burst(chains.ctypes.data, n, segments.ctypes.data, heads.ctypes.data,
                 REQUEST_HEAD_SIZE)
    made = 0
    done = 0
    for i in range(n):
        chain = chains[i]
        outcome, used_len = _handle(state, chain, heads[i], segments, inflight, iovecs, ios, made)
        if outcome == _SUBMITTED:
            made += 1
            continue
        if outcome != _DROPPED:
            _write_status(state, _status_address(chain, segments), outcome)
        # done <= i: the records before i are no longer needed, so the used ones gather there.
        _set_used(chains, done, chain.id, chain.ndesc, chain.writable_len, chain.error,
                  used_len)
        done += 1
    if done:
        _push(state, chains, done)
    return made


@njit(**NJIT)
def complete_requests(queue, completions, n):
    """Complete the requests of completions[:n] (BLOCK_COMPLETION records of this queue's
    tags): write each status byte (0 -> OK, -EOPNOTSUPP -> UNSUPP, any other -> IOERR), use
    its chain (a read's data and status byte, or the status byte alone) and notify the driver
    as it asked. A completion that names no request in flight is counted and ignored; one for
    a detached queue only frees its slot. Returns the requests used."""
    state, chains, segments, heads, inflight, iovecs = queue
    pushed = 0
    j = 0
    for k in range(n):
        tag = completions[k].tag
        slot = tag & np.uint64(0xFFFFFFFF)
        if slot >= len(inflight):
            state[N_STALE] += _ONE
            continue
        row = inflight[slot]
        if row.busy == 0 or np.uint64(row.generation) != tag >> np.uint64(32):
            state[N_STALE] += _ONE
            continue
        row.busy = 0
        row.next_free = np.uint32(state[ST_FREE])
        state[ST_FREE] = slot
        state[ST_IN_FLIGHT] -= _ONE
        if state[ST_DETACHED]:
            state[N_ABANDONED] += _ONE
            continue
        result = completions[k].status
        written = np.uint32(1)
        if result == 0:
            status = VIRTIO_BLK_S_OK
            written = row.used_len
            if row.operation == IO_READ:
                state[N_BYTES_READ] += row.length
            elif row.operation == IO_WRITE:
                state[N_BYTES_WRITTEN] += row.length
        elif result == _EOPNOTSUPP:
            status = VIRTIO_BLK_S_UNSUPP
        else:
            status = VIRTIO_BLK_S_IOERR
        _write_status(state, row.status, status)
        _set_used(chains, j, row.id, row.ndesc, row.writable_len, 0, written)
        j += 1
        if j == len(chains):
            pushed += _push(state, chains, j)
            j = 0
    if j:
        pushed += _push(state, chains, j)
    return pushed
