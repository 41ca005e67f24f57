"""The virtio-user port: a virtio-net driver (front-end) of a vhost-user back-end, as a
poll-mode port.

Queue q is virtio-net queue pair q: receiving collects the device's used buffers on receiveq
2q, sending fills transmitq 2q + 1. Rings and buffers live in the port's own memfd-backed guest
memory, shared with the back-end (`NetDriver`). Every virtqueue has one buffer per ring entry
at a fixed slot, each offered as one descriptor whose segment record is written once: a frame
costs one copy and a few stores, a burst a few calls into the core (collect, add, and whether
to kick). Both rings are polled: the device is asked for no calls.

Zero copy: when the port's pool is shared (`MbufPool(shared=True)`), its data block joins the
memory the back-end maps, and mbufs are the buffers. A frame is sent from its mbuf as it is,
one descriptor that covers a zero virtio-net header written in the mbuf's headroom and the
frame after it (with VERSION_1 a device may not assume any framing, virtio 1.2 §2.7.4, so
header and frame may share a descriptor), as DPDK's virtio PMD does when the header fits the
headroom. The receiveq's buffers are empty mbufs, each posted from NET_HDR_SIZE bytes before
its frame, so that the device writes the header into the headroom and the frame where the
mbuf's frame belongs: rx hands the mbuf up as it is, its length the used length less the
header, and posts a fresh mbuf in its place. A mergeable frame that spans several buffers
(only when receive buffers are smaller than the room: `rx_buffer_size`) is copied into its
first mbuf, the others posted again: the pool has no chained mbufs. Every mbuf the rings hold
is recorded by descriptor id, and goes back to the pool when its used element does, or when
the port closes.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
from numba import njit

from fastpath._numba import NJIT, carray, copy_bytes, u8_pointer, u32_pointer, u64_pointer
from fastpath.devices.net import (
    BUFFER_SIZE,
    NET_HDR_SIZE,
    NUM_BUFFERS_OFFSET,
    VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MRG_RXBUF,
    NetDriver,
)
from fastpath.errors import FastpathError
from fastpath.pmd._kinds import PortKind, flag, register_port_kind
from fastpath.pmd._mbuf import (
    MBUF_HEADROOM,
    POOL_DATA,
    POOL_FREE,
    POOL_LENGTH,
    POOL_STAMP,
    POOL_TOP,
    SHARED_POOL_GPA,
    free_burst,
)
from fastpath.pmd._port import ROW_ARGS, STAT_ERRORS, Port
from fastpath.pmd._port_kernels import row_stats, take_mbufs
from fastpath.vring import (
    DRIVER_CHAIN_DTYPE,
    SEG_WRITE,
    SEGMENT_DTYPE,
    USED_ELEM_DTYPE,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_VERSION_1,
)
from fastpath.vring.kernels import add_burst, collect_burst, driver_should_kick, eventfd_signal

log = logging.getLogger("fastpath.pmd")

KIND = 2

ARG_RECEIVEQ = ROW_ARGS        # address of the receiveq's ring state (RING_*); 0: closed
ARG_TRANSMITQ = ROW_ARGS + 1   # address of the transmitq's ring state

# Ring state columns (uint64), one array per virtqueue.
RING_DRIVER = 0     # the DriverQueue's handle
RING_PACKED = 1     # 1 for a packed ring
RING_KICK = 2       # the kick eventfd
RING_SIZE = 3       # ring entries, and buffers
RING_CHAINS = 4     # address of DRIVER_CHAIN_DTYPE[size]: the chains of the next add
RING_SEGMENTS = 5   # address of SEGMENT_DTYPE[size]: slot s's buffer as one segment
RING_USED = 6       # address of USED_ELEM_DTYPE[size]: collected used elements, by slot
RING_SLOTS = 7      # address of uint32[size]: the slot of each buffer id in flight
RING_FREE = 8       # transmitq: address of uint32[size], a stack of the free slots
RING_COUNT = 9      # transmitq: free slots; receiveq: collected elements not yet consumed
RING_BUFFERS = 10   # host address of slot 0's buffer (slot s at + s * buffer size)
RING_BUFFER_SIZE = 11
RING_MERGEABLE = 12  # receiveq: VIRTIO_NET_F_MRG_RXBUF, a frame may span buffers
RING_POOL_AT = 13   # host address of the shared pool's frames (POOL_DATA); 0: copy
RING_MBUFS = 14     # zero-copy receiveq: how many mbufs its buffers should be
RING_SHORT = 15     # zero-copy receiveq: buffers not posted for want of mbufs
RING_COLUMNS = 16

# An id's entry in RING_SLOTS with this bit set is an mbuf in flight, not a slot.
IN_FLIGHT_MBUF = np.uint32(1 << 31)
# A zero-copy buffer starts this far before its mbuf's frame: the virtio-net header's place.
assert NET_HDR_SIZE == 12 and NET_HDR_SIZE <= MBUF_HEADROOM

# The records as 32-bit words (their one definition is in fastpath.vring's dtypes).
CHAIN_WORDS = DRIVER_CHAIN_DTYPE.itemsize // 4
CHAIN_FIRST_SEG = DRIVER_CHAIN_DTYPE.fields["first_seg"][1] // 4
CHAIN_NSEG_ID = DRIVER_CHAIN_DTYPE.fields["nseg"][1] // 4    # nseg (low half) and id
CHAIN_ID_SHIFT = 8 * (DRIVER_CHAIN_DTYPE.fields["id"][1] - DRIVER_CHAIN_DTYPE.fields["nseg"][1])
SEGMENT_DTYPE_SIZE = SEGMENT_DTYPE.itemsize
SEGMENT_WORDS = SEGMENT_DTYPE.itemsize // 4
SEGMENT_LEN = SEGMENT_DTYPE.fields["len"][1] // 4
USED_WORDS = USED_ELEM_DTYPE.itemsize // 4
USED_ID = USED_ELEM_DTYPE.fields["id"][1] // 4
USED_LEN = USED_ELEM_DTYPE.fields["len"][1] // 4
SEGMENT_ADDR = SEGMENT_DTYPE.fields["addr"][1] // 4
assert CHAIN_ID_SHIFT == 16 and DRIVER_CHAIN_DTYPE.fields["nseg"][1] % 4 == 0



@njit(**NJIT)
def _ring_state(address):
    # SAFETY: the address is that of a queue's uint64[RING_COLUMNS] state row, which the port
    # keeps (with every array it names) for as long as the port row points at it.
    return carray(u64_pointer(address), (RING_COLUMNS,))


@njit(**NJIT)
def _offer(ring, n, segments_at):
    """Offer the chains of chains[:n] over the segment records at `segments_at` and kick if
    the device wants it; returns how many were added."""
    packed = ring[RING_PACKED] != 0
    driver = ring[RING_DRIVER]
    added = add_burst(packed, driver, ring[RING_CHAINS], n, segments_at)
    if driver_should_kick(packed, driver):
        eventfd_signal(np.int32(ring[RING_KICK]))
    return added


@njit(**NJIT)
def _repost(ring, chains, slots, n):
    """Offer the slots named in chains[:n] again, remember which id each took and kick if
    the device wants it; returns how many were added."""
    if n == 0:
        return 0
    added = _offer(ring, n, ring[RING_SEGMENTS])
    for k in range(added):
        slots[chains[k * CHAIN_WORDS + CHAIN_NSEG_ID] >> CHAIN_ID_SHIFT] = (
            chains[k * CHAIN_WORDS + CHAIN_FIRST_SEG])
    return added


@njit(**NJIT)
def _post_mbufs(ring, slots, posting, n, data, lengths):
    """Offer mbufs posting[:n] as one descriptor each, from NET_HDR_SIZE bytes before the
    frame: on a transmitq the header (zeroed here) and the frame of lengths[m] bytes, on a
    receiveq RING_BUFFER_SIZE bytes (the header's place and at most the room). Each one added
    is in flight by its id; returns how many were added."""
    if n == 0:
        return 0
    size = np.int64(ring[RING_SIZE])
    receive = ring[RING_MBUFS] != 0
    chains = carray(u32_pointer(ring[RING_CHAINS]), (size * CHAIN_WORDS,))
    # SAFETY: the port made the segment array 2 * size records: slots first, then one for
    # each of up to size mbufs posted at once (n <= size, the callers' bound).
    records_at = np.int64(ring[RING_SEGMENTS]) + size * SEGMENT_DTYPE_SIZE
    records = carray(u32_pointer(records_at), (size * SEGMENT_WORDS,))
    records64 = carray(u64_pointer(records_at), (size * SEGMENT_WORDS // 2,))
    stride = np.uint64(data.strides[0])
    data_at = data.ctypes.data
    buffer_size = np.uint32(ring[RING_BUFFER_SIZE])
    for k in range(n):
        mbuf = np.uint64(posting[k])
        at = k * SEGMENT_WORDS
        records64[(at + SEGMENT_ADDR) // 2] = (SHARED_POOL_GPA + mbuf * stride
                                               + (MBUF_HEADROOM - NET_HDR_SIZE))
        if receive:
            records[at + SEGMENT_LEN] = buffer_size
        else:
            # SAFETY: the header's 12 bytes are the end of the mbuf's own headroom (4-byte
            # aligned: rows and frames start on cache lines).
            header = carray(u32_pointer(data_at + mbuf * stride - NET_HDR_SIZE),
                            (NET_HDR_SIZE // 4,))
            # Written only when not zero already (a frame was received into the mbuf): a
            # store would take the line back from the device's core, which read it last.
            if header[0] | header[1] | header[2]:
                for w in range(NET_HDR_SIZE // 4):
                    header[w] = 0
            records[at + SEGMENT_LEN] = lengths[mbuf] + NET_HDR_SIZE
        chains[k * CHAIN_WORDS + CHAIN_FIRST_SEG] = k
        chains[k * CHAIN_WORDS + CHAIN_NSEG_ID] = 1
    added = _offer(ring, n, records_at)
    for k in range(added):
        slots[chains[k * CHAIN_WORDS + CHAIN_NSEG_ID] >> CHAIN_ID_SHIFT] = (
            IN_FLIGHT_MBUF | posting[k])
    return added


@njit(**NJIT)
def _collect(ring, used, slots, first, n):
    """Collect up to n used elements into used[first:], each naming its slot instead of its
    buffer id (the id is free again at once: a repost may hand it to another slot)."""
    got = collect_burst(ring[RING_PACKED] != 0, ring[RING_DRIVER],
                        np.int64(ring[RING_USED]) + first * (USED_WORDS * 4), n)
    for k in range(first, first + got):
        buffer_id = used[k * USED_WORDS + USED_ID]
        used[k * USED_WORDS + USED_ID] = slots[buffer_id]
        # No longer in flight: `close` gives back only the mbufs still named here.
        slots[buffer_id] = 0
    return got


@njit(**NJIT)
def _refill(ring, slots, pool, posting, n):
    """Post mbufs posting[:n] (buffers given back) and fresh ones from the pool for the
    buffers a zero-copy receiveq lacks; those it cannot post now stay counted short, for the
    next burst. Returns how many were posted."""
    size = np.int64(ring[RING_SIZE])
    short = np.int64(ring[RING_SHORT])
    pool_free = pool[POOL_FREE]
    stamps = pool[POOL_STAMP]
    top = pool[POOL_TOP][0]
    while short > 0 and top > 0 and n < size:
        top -= 1
        mbuf = pool_free[top]
        # The device writes it: whatever template it held is gone.
        stamps[mbuf] = 0
        posting[n] = mbuf
        n += 1
        short -= 1
    added = _post_mbufs(ring, slots, posting, n, pool[POOL_DATA], pool[POOL_LENGTH])
    for k in range(added, n):
        pool_free[top] = posting[k]
        top += 1
        short += 1
    pool[POOL_TOP][0] = top
    ring[RING_SHORT] = short
    return added


@njit(**NJIT)
def _buffer_count(low, high, size):
    """How many buffers a mergeable frame says it spans (its header's num_buffers bytes), and
    whether that can be right; when not, 1: that buffer alone is dropped."""
    count = np.int64(low) | np.int64(high) << 8
    if count == 0 or count > size:
        return np.int64(1), False
    return count, True


@njit(**NJIT)
def _collected_through(ring, used, slots, have, end):
    """Used elements collected, after trying for more if a frame's buffers run to `end`
    beyond them (the rest of the frame may have come back since)."""
    if end > have:
        have += _collect(ring, used, slots, have, np.int64(ring[RING_SIZE]) - have)
    return have


@njit(**NJIT)
def _keep_uncollected(ring, used, have, done):
    """Move the used elements a burst left (a frame whose buffers are not all back, or frames
    there were no mbufs for) to the front, for the next burst."""
    left = have - done
    if left and done:
        for w in range(left * USED_WORDS):
            used[w] = used[done * USED_WORDS + w]
    ring[RING_COUNT] = left


@njit(**NJIT)
def _rx_zero_copy(row, ring, pool, mbufs, max_n):
    """Frames the device wrote into posted mbufs: each handed up in its own mbuf (a frame
    that spans buffers copied into its first), fresh mbufs posted in their place."""
    size = np.int64(ring[RING_SIZE])
    # SAFETY: as in rx; RING_FREE, unused by a receiveq otherwise, is its size-entry list of
    # the mbufs to post.
    used = carray(u32_pointer(ring[RING_USED]), (size * USED_WORDS,))
    slots = carray(u32_pointer(ring[RING_SLOTS]), (size,))
    posting = carray(u32_pointer(ring[RING_FREE]), (size,))
    have = np.int64(ring[RING_COUNT])
    if have < max_n:
        have += _collect(ring, used, slots, have, min(max_n, size) - have)
    data = pool[POOL_DATA]
    lengths = pool[POOL_LENGTH]
    stride = np.int64(data.strides[0])
    data_at = np.int64(data.ctypes.data)
    room = np.int64(data.shape[1])
    buffer_size = np.int64(ring[RING_BUFFER_SIZE])
    mergeable = ring[RING_MERGEABLE] != 0
    stats = row_stats(row)
    out = 0
    done = 0       # elements consumed
    npost = 0      # buffers to post again: posting[:npost]
    while done < have and out < max_n:
        mbuf = np.int64(used[done * USED_WORDS + USED_ID] ^ IN_FLIGHT_MBUF)
        frame_at = data_at + mbuf * stride
        count = 1
        good = True
        if mergeable:
            # SAFETY: the header's place is the end of the mbuf's own headroom.
            header = carray(u8_pointer(frame_at - NET_HDR_SIZE), (NET_HDR_SIZE,))
            count, good = _buffer_count(header[NUM_BUFFERS_OFFSET],
                                        header[NUM_BUFFERS_OFFSET + 1], size)
            have = _collected_through(ring, used, slots, have, done + count)
            if done + count > have:
                break
        total = np.int64(used[done * USED_WORDS + USED_LEN]) - NET_HDR_SIZE
        if total < 0 or total + NET_HDR_SIZE > buffer_size:
            good = False
        for e in range(done + 1, done + count):
            more = used[e * USED_WORDS + USED_ID] ^ IN_FLIGHT_MBUF
            posting[npost] = more
            npost += 1
            n = np.int64(used[e * USED_WORDS + USED_LEN])
            if good and n <= buffer_size and total + n <= room:
                # The rest of the frame starts at its buffer's first byte, the header's place.
                copy_bytes(frame_at + total, data_at + np.int64(more) * stride - NET_HDR_SIZE,
                           n)
                total += n
            else:
                good = False
        done += count
        if good:
            lengths[mbuf] = total
            mbufs[out] = mbuf
            out += 1
            ring[RING_SHORT] += 1
        else:
            posting[npost] = mbuf
            npost += 1
            stats[STAT_ERRORS] += 1
    _keep_uncollected(ring, used, have, done)
    _refill(ring, slots, pool, posting, npost)
    return out


@njit(**NJIT)
def rx(row, pool, mbufs, max_n):
    """Frames the device put in the receive buffers: each copied out of its buffers (after
    the header) into an mbuf, the buffers offered again at once (or, from the port's shared
    pool, the mbufs themselves: see _rx_zero_copy)."""
    if row[ARG_RECEIVEQ] == 0 or max_n <= 0:
        return 0
    ring = _ring_state(row[ARG_RECEIVEQ])
    if ring[RING_MBUFS] != 0:
        return _rx_zero_copy(row, ring, pool, mbufs, max_n)
    size = np.int64(ring[RING_SIZE])
    buffer_size = np.int64(ring[RING_BUFFER_SIZE])
    mergeable = ring[RING_MERGEABLE] != 0
    # SAFETY: every array below was allocated by the port with exactly these sizes (size
    # entries of USED_WORDS, CHAIN_WORDS, one slot each; size buffers of buffer_size bytes in
    # the port's own guest memory) and lives as long as the state row naming it.
    used = carray(u32_pointer(ring[RING_USED]), (size * USED_WORDS,))
    slots = carray(u32_pointer(ring[RING_SLOTS]), (size,))
    # Elements left from the last burst come first: frames there were no mbufs for, or one
    # whose buffers had not all come back.
    have = np.int64(ring[RING_COUNT])
    if have < max_n:
        have += _collect(ring, used, slots, have, min(max_n, size) - have)
    if have == 0:
        return 0
    # A frame takes one element at least: mbufs for as many frames as elements will do.
    want = take_mbufs(row, pool, mbufs, min(max_n, have))
    if want == 0:
        ring[RING_COUNT] = have
        return 0
    chains = carray(u32_pointer(ring[RING_CHAINS]), (size * CHAIN_WORDS,))
    buffers_at = np.int64(ring[RING_BUFFERS])
    buffers = carray(u8_pointer(buffers_at), (size * buffer_size,))
    data = pool[POOL_DATA]
    data_at = data.ctypes.data
    lengths = pool[POOL_LENGTH]
    room = data.shape[1]
    stride = data.strides[0]
    stats = row_stats(row)
    out = 0
    done = 0       # elements consumed; their slots go into chains[:done]
    while done < have and out < want:
        slot = used[done * USED_WORDS + USED_ID]
        count = 1
        good = True
        if mergeable:
            at = slot * buffer_size + NUM_BUFFERS_OFFSET
            count, good = _buffer_count(buffers[at], buffers[at + 1], size)
            have = _collected_through(ring, used, slots, have, done + count)
            if done + count > have:
                break
        mbuf = mbufs[out]
        total = 0
        for e in range(done, done + count):
            slot = used[e * USED_WORDS + USED_ID]
            written = np.int64(used[e * USED_WORDS + USED_LEN])
            skip = NET_HDR_SIZE if e == done else 0
            chains[e * CHAIN_WORDS + CHAIN_FIRST_SEG] = slot
            if not good or written < skip or written > buffer_size:
                good = False
                continue
            n = written - skip
            if total + n > room:
                good = False
                continue
            copy_bytes(data_at + mbuf * stride + total, buffers_at + slot * buffer_size + skip, n)
            total += n
        done += count
        if good:
            lengths[mbuf] = total
            out += 1
        else:
            stats[STAT_ERRORS] += 1
    _keep_uncollected(ring, used, have, done)
    if _repost(ring, chains, slots, done) < done:
        stats[STAT_ERRORS] += 1
    free_burst(pool, mbufs, out, want)
    return out


@njit(**NJIT)
def _take_back(ring, slots, free, free_count, pool, zero_copy):
    """Collect the buffers the device has finished with: slots onto the free stack, mbufs
    back to the pool; returns the free slots now."""
    size = np.int64(ring[RING_SIZE])
    # SAFETY: as in rx, the used array was allocated by the port with size elements.
    used = carray(u32_pointer(ring[RING_USED]), (size * USED_WORDS,))
    got = _collect(ring, used, slots, 0, size)
    pool_free = pool[POOL_FREE]
    top = pool[POOL_TOP][0]
    lost = 0
    for k in range(got):
        value = used[k * USED_WORDS + USED_ID]
        if value & IN_FLIGHT_MBUF:
            if zero_copy:
                pool_free[top] = value ^ IN_FLIGHT_MBUF
                top += 1
            else:
                # Sent from the shared pool, but this burst came with another pool: the mbuf
                # cannot go home from here.
                lost += 1
        else:
            free[free_count] = value
            free_count += 1
    pool[POOL_TOP][0] = top
    return free_count, lost


@njit(**NJIT)
def _tx_zero_copy(ring, slots, pool, mbufs, n):
    """Offer mbufs[:n] as they are, each with a zero header in its headroom; each one added
    stays in flight and its place in mbufs takes a spare from the pool (which the caller
    frees, as it frees what tx took). Returns how many were added."""
    pool_free = pool[POOL_FREE]
    top = pool[POOL_TOP][0]
    want = min(n, np.int64(ring[RING_SIZE]), top)
    added = _post_mbufs(ring, slots, mbufs, want, pool[POOL_DATA], pool[POOL_LENGTH])
    for k in range(added):
        top -= 1
        mbufs[k] = pool_free[top]
    pool[POOL_TOP][0] = top
    return added


@njit(**NJIT)
def tx(row, pool, mbufs, n):
    """Frames into free transmit buffers behind a zeroed header, one descriptor each, offered
    in one add (or, from the port's shared pool, the mbufs themselves); returns how many were
    taken (fewer when the ring is full). A frame longer than a buffer holds is counted as an
    error and taken."""
    if row[ARG_TRANSMITQ] == 0:
        return 0
    ring = _ring_state(row[ARG_TRANSMITQ])
    size = np.int64(ring[RING_SIZE])
    buffer_size = np.int64(ring[RING_BUFFER_SIZE])
    # SAFETY: as in rx, each array was allocated by the port with these sizes and lives as
    # long as the state row naming it.
    slots = carray(u32_pointer(ring[RING_SLOTS]), (size,))
    free = carray(u32_pointer(ring[RING_FREE]), (size,))
    data = pool[POOL_DATA]
    data_at = data.ctypes.data
    zero_copy = ring[RING_POOL_AT] != 0 and ring[RING_POOL_AT] == np.uint64(data_at)
    free_count = np.int64(ring[RING_COUNT])
    lost = 0
    if zero_copy or free_count < n:
        # Take back the buffers the device has finished with; in-flight mbufs are the spares
        # a zero-copy burst needs.
        free_count, lost = _take_back(ring, slots, free, free_count, pool, zero_copy)
    ring[RING_COUNT] = free_count
    if lost:
        row_stats(row)[STAT_ERRORS] += lost
    if zero_copy:
        return _tx_zero_copy(ring, slots, pool, mbufs, n)
    chains = carray(u32_pointer(ring[RING_CHAINS]), (size * CHAIN_WORDS,))
    segments = carray(u32_pointer(ring[RING_SEGMENTS]), (size * SEGMENT_WORDS,))
    buffers_at = np.int64(ring[RING_BUFFERS]) + NET_HDR_SIZE
    stride = data.strides[0]
    lengths = pool[POOL_LENGTH]
    fits = buffer_size - NET_HDR_SIZE
    taken = 0
    added = 0
    too_long = 0
    while taken < n and added < free_count:
        mbuf = mbufs[taken]
        taken += 1
        length = np.int64(lengths[mbuf])
        if length > fits:
            too_long += 1
            continue
        slot = free[free_count - 1 - added]
        copy_bytes(buffers_at + slot * buffer_size, data_at + mbuf * stride, length)
        segments[slot * SEGMENT_WORDS + SEGMENT_LEN] = NET_HDR_SIZE + length
        chains[added * CHAIN_WORDS + CHAIN_FIRST_SEG] = slot
        chains[added * CHAIN_WORDS + CHAIN_NSEG_ID] = 1
        added += 1
    ring[RING_COUNT] = free_count - added
    if too_long:
        row_stats(row)[STAT_ERRORS] += too_long
    if _repost(ring, chains, slots, added) < added:
        row_stats(row)[STAT_ERRORS] += 1
    return taken


class _Ring:
    """One virtqueue's driver state as the kernels reach it: `state` (RING_*) and the arrays
    it names, kept alive here. With a shared `pool`, a receiveq's buffers are `rx_mbufs` of
    its mbufs, posted here."""

    def __init__(self, driver: NetDriver, index: int, pool, rx_mbufs: int):
        queue = driver.queues[index]
        size = queue.size
        buffer_size = driver.layout.buffer_size(index)
        first = driver.layout.buffers(index)
        receive = index % 2 == 0
        zero_copy = pool.shared and (rx_mbufs > 0 or not receive)
        self.queue = queue
        self.buffers = driver.memory.view(first, size * buffer_size)
        self.chains = np.zeros(size, dtype=DRIVER_CHAIN_DTYPE)
        self.chains["nseg"] = 1
        # The segments go on: a record for each of up to size mbufs posted at once.
        self.segments = np.zeros(2 * size, dtype=SEGMENT_DTYPE)
        self.segments["addr"][:size] = first + np.arange(size, dtype=np.uint64) * buffer_size
        self.segments["len"][:size] = buffer_size
        self.segments["flags"] = SEG_WRITE if receive else 0
        self.used = np.zeros(size, dtype=USED_ELEM_DTYPE)
        self.slots = np.zeros(size, dtype=np.uint32)
        self.free = np.arange(size - 1, -1, -1, dtype=np.uint32)
        self.state = np.zeros(RING_COLUMNS, dtype=np.uint64)
        self.state[RING_DRIVER] = queue.handle
        self.state[RING_PACKED] = int(queue.packed)
        self.state[RING_KICK] = driver.vrings[index].kick
        self.state[RING_SIZE] = size
        self.state[RING_CHAINS] = self.chains.ctypes.data
        self.state[RING_SEGMENTS] = self.segments.ctypes.data
        self.state[RING_USED] = self.used.ctypes.data
        self.state[RING_SLOTS] = self.slots.ctypes.data
        self.state[RING_FREE] = self.free.ctypes.data
        self.state[RING_BUFFERS] = self.buffers.ctypes.data
        self.state[RING_BUFFER_SIZE] = buffer_size
        self.state[RING_MERGEABLE] = int(receive and driver.mergeable)
        self.state[RING_COUNT] = 0 if receive else size
        self.state[RING_POOL_AT] = pool.data.ctypes.data if zero_copy else 0
        queue.disable_calls()
        if receive and zero_copy:
            # Buffers of the header's place and at most the room: one frame an mbuf.
            self.state[RING_BUFFER_SIZE] = min(buffer_size, pool.room + NET_HDR_SIZE)
            self.state[RING_MBUFS] = self.state[RING_SHORT] = rx_mbufs
            _refill(self.state, self.slots, pool.arrays, self.free, 0)
        elif receive:
            # Every receive buffer is posted from the start, and again as soon as it is read.
            self.chains["first_seg"] = np.arange(size, dtype=np.uint32)
            posted = queue.add_burst(self.chains, size, self.segments)
            assert posted == size, posted
            self.slots[self.chains["id"]] = self.chains["first_seg"]
            if queue.should_kick():
                driver.vrings[index].kick_backend()

    def mbufs_held(self) -> np.ndarray:
        """The mbufs this ring holds: posted, or collected and not yet handed up."""
        leftover = self.used["id"][:int(self.state[RING_COUNT])] if self.state[RING_MBUFS] \
            else self.used["id"][:0]
        held = np.concatenate([self.slots, leftover])
        return held[held & IN_FLIGHT_MBUF != 0] ^ IN_FLIGHT_MBUF

    def release(self, pool) -> None:
        """Give every mbuf the ring holds back to `pool` (the device has let go of it)."""
        held = self.mbufs_held()
        pool.release(held, len(held))
        self.slots[:] = 0
        if self.state[RING_MBUFS]:
            self.state[RING_COUNT] = 0


class VirtioUserPort(Port):
    """A virtio-net driver of the vhost-user back-end listening on `path`, as a port of
    `queues` queue pairs (queue q is pair q: receiveq 2q, transmitq 2q + 1).

    `packed` and `mergeable` ask for RING_PACKED and MRG_RXBUF, and `queues` > 1 for MQ; a
    back-end that refuses any of them (or VERSION_1) raises BackendRefused, and one that does
    not come up on `path` within `connect_timeout` seconds raises FileNotFoundError or
    ConnectionRefusedError. With a shared `pool`, frames are sent and received in its mbufs
    without a copy (see the module's docstring), and each receiveq holds up to `queue_size`
    of them, at most a quarter of the pool shared among the pairs (`mbufs_posted`). Each ring
    has `queue_size` buffers: transmit buffers of BUFFER_SIZE bytes (frames up to
    BUFFER_SIZE - 12; longer ones are counted as errors and not sent), receive buffers of
    `rx_buffer_size` bytes (a zero-copy one at most the pool's room and the header; without
    mergeable buffers a longer frame cannot arrive; with them, one that does not fit an mbuf
    is dropped and counted).
    """

    kind = KIND

    def __init__(self, path: str, pool, *, queues: int = 1, queue_size: int = 256,
                 packed: bool = False, mergeable: bool = False, connect_timeout: float = 10.0,
                 name: str | None = None, rx_buffer_size: int = BUFFER_SIZE):
        if not 64 <= rx_buffer_size <= 65536:
            raise ValueError(f"a receive buffer is 64 to 65536 bytes, not {rx_buffer_size}")
        super().__init__(name or f"virtio-user:{path}", pool, queues)
        require = (1 << VIRTIO_F_VERSION_1 | (1 << VIRTIO_F_RING_PACKED if packed else 0)
                   | (1 << VIRTIO_NET_F_MRG_RXBUF if mergeable else 0)
                   | (1 << VIRTIO_NET_F_MQ if queues > 1 else 0))
        shared = pool.memory.regions if pool.shared else ()
        self.driver = NetDriver(path, queue_pairs=queues, queue_size=queue_size, packed=packed,
                                mergeable=mergeable, rx_buffer=rx_buffer_size,
                                connect_timeout=connect_timeout, require=require,
                                shared=tuple(shared))
        self._closed = False
        self._lock = threading.Lock()
        rx_mbufs = min(queue_size, pool.count // (4 * queues)) if pool.shared else 0
        self._rings: list[tuple[_Ring, _Ring]] = []
        try:
            for q in range(queues):
                self._rings.append((_Ring(self.driver, 2 * q, pool, rx_mbufs),
                                    _Ring(self.driver, 2 * q + 1, pool, rx_mbufs)))
        except BaseException:
            self.driver.close()
            self._release_mbufs()
            raise
        for q, (receiveq, transmitq) in enumerate(self._rings):
            self.rows[q, ARG_RECEIVEQ] = receiveq.state.ctypes.data
            self.rows[q, ARG_TRANSMITQ] = transmitq.state.ctypes.data

    @property
    def features(self) -> int:
        """The virtio features acked."""
        return self.driver.features

    @property
    def packed(self) -> bool:
        """Whether the rings are packed."""
        return self.driver.packed

    @property
    def mergeable(self) -> bool:
        """Whether receive frames may span buffers (MRG_RXBUF)."""
        return self.driver.mergeable

    @property
    def mbufs_in_flight(self) -> int:
        """Mbufs of the shared pool sent and not yet taken back (see `tx`)."""
        return sum(len(transmitq.mbufs_held()) for _, transmitq in self._rings)

    @property
    def mbufs_posted(self) -> int:
        """Mbufs of the shared pool the receiveqs hold: posted, or received and not yet
        handed up."""
        return sum(len(receiveq.mbufs_held()) for receiveq, _ in self._rings)

    def hold(self) -> threading.Lock:
        """Held around every burst: `close` waits for the one running."""
        return self._lock

    def close(self) -> None:
        """Stop the vrings, close the connection and the memory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # From here on the kernels find no rings: they move nothing.
            self.rows[:, ARG_RECEIVEQ] = 0
            self.rows[:, ARG_TRANSMITQ] = 0
        try:
            self.driver.stop()
        except (FastpathError, OSError) as e:
            # The back-end went away first: there is nothing left to stop.
            log.info("%s: stopping the vrings failed: %s", self.name, e)
        finally:
            self.driver.close()
        self._release_mbufs()

    def _release_mbufs(self) -> None:
        # The device has let go of the rings: the mbufs it never gave back are free again.
        for pair in self._rings:
            for ring in pair:
                ring.release(self.pool)


register_port_kind(PortKind(
    code=KIND, name="virtio-user", argument="SOCKET",
    options={"queues": int, "packed": flag, "mergeable": flag, "queue_size": int},
    help="a virtio-net front-end of a vhost-user back-end listening on SOCKET",
    make=VirtioUserPort, rx=rx, tx=tx))
