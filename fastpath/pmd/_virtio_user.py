"""The virtio-user port: a virtio-net driver (front-end) of a vhost-user back-end, as a
poll-mode port.

Queue q is virtio-net queue pair q: receiving collects the device's used buffers on receiveq
2q, sending fills transmitq 2q + 1. Rings and buffers live in the port's own memfd-backed guest
memory, shared with the back-end (`NetDriver`). Every virtqueue has one buffer per ring entry
at a fixed slot, each offered as one descriptor whose segment record is written once: a frame
costs one copy and a few stores, a burst a few calls into the core (collect, add, and whether
to kick). Both rings are polled: the device is asked for no calls.

Zero copy: when the port's pool is shared (`MbufPool(shared=True)`), its data block joins the
memory the back-end maps, and a frame is sent from its mbuf as it is: a chain of two
descriptors, the (zero) virtio-net header of slot 0 and the mbuf's frame. The mbuf stays in
flight, recorded by descriptor id, and goes back to the pool when its used element does.
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
    POOL_DATA,
    POOL_FREE,
    POOL_LENGTH,
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
RING_POOL_AT = 13   # transmitq: host address of the shared pool's data block; 0: none
RING_COLUMNS = 14

# A transmit id's entry in RING_SLOTS with this bit set is an mbuf in flight, not a slot.
IN_FLIGHT_MBUF = np.uint32(1 << 31)

# The records as 32-bit words (their one definition is in fastpath.vring's dtypes).
CHAIN_WORDS = DRIVER_CHAIN_DTYPE.itemsize // 4
CHAIN_FIRST_SEG = DRIVER_CHAIN_DTYPE.fields["first_seg"][1] // 4
CHAIN_NSEG_ID = DRIVER_CHAIN_DTYPE.fields["nseg"][1] // 4    # nseg (low half) and id
CHAIN_ID_SHIFT = 8 * (DRIVER_CHAIN_DTYPE.fields["id"][1] - DRIVER_CHAIN_DTYPE.fields["nseg"][1])
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
def _repost(ring, chains, slots, n):
    """Offer the slots named in chains[:n] again, remember which id each took and kick if
    the device wants it; returns how many were added."""
    if n == 0:
        return 0
    packed = ring[RING_PACKED] != 0
    driver = ring[RING_DRIVER]
    added = add_burst(packed, driver, ring[RING_CHAINS], n, ring[RING_SEGMENTS])
    for k in range(added):
        slots[chains[k * CHAIN_WORDS + CHAIN_NSEG_ID] >> CHAIN_ID_SHIFT] = (
            chains[k * CHAIN_WORDS + CHAIN_FIRST_SEG])
    if driver_should_kick(packed, driver):
        eventfd_signal(np.int32(ring[RING_KICK]))
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
def rx(row, pool, mbufs, max_n):
    """Frames the device put in the receive buffers: each copied out of its buffers (after
    the header) into an mbuf, the buffers offered again at once."""
    if row[ARG_RECEIVEQ] == 0 or max_n <= 0:
        return 0
    ring = _ring_state(row[ARG_RECEIVEQ])
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
    stats = row_stats(row)
    out = 0
    done = 0       # elements consumed; their slots go into chains[:done]
    while done < have and out < want:
        slot = used[done * USED_WORDS + USED_ID]
        count = 1
        good = True
        if mergeable:
            at = slot * buffer_size + NUM_BUFFERS_OFFSET
            count = np.int64(buffers[at]) | np.int64(buffers[at + 1]) << 8
            if count == 0 or count > size:
                # A header that cannot be right: this buffer alone is dropped.
                count = 1
                good = False
            if done + count > have:
                # The rest of the frame has not been collected yet: maybe it is there now.
                have += _collect(ring, used, slots, have, size - have)
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
            copy_bytes(data_at + mbuf * room + total, buffers_at + slot * buffer_size + skip, n)
            total += n
        done += count
        if good:
            lengths[mbuf] = total
            out += 1
        else:
            stats[STAT_ERRORS] += 1
    left = have - done
    if left and done:
        for w in range(left * USED_WORDS):
            used[w] = used[done * USED_WORDS + w]
    ring[RING_COUNT] = left
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
    """Offer mbufs[:n] as they are, behind slot 0's zero header; each one added stays in
    flight and its place in mbufs takes a spare from the pool (which the caller frees, as it
    frees what tx took). Returns how many were added."""
    size = np.int64(ring[RING_SIZE])
    chains = carray(u32_pointer(ring[RING_CHAINS]), (size * CHAIN_WORDS,))
    # SAFETY: the port made the segment array 3 * size records: slots first, then a header
    # and a frame record for each of up to size chains.
    segments = carray(u32_pointer(ring[RING_SEGMENTS]), (3 * size * SEGMENT_WORDS,))
    segments64 = carray(u64_pointer(ring[RING_SEGMENTS]), (3 * size * SEGMENT_WORDS // 2,))
    lengths = pool[POOL_LENGTH]
    room = pool[POOL_DATA].shape[1]
    pool_free = pool[POOL_FREE]
    top = pool[POOL_TOP][0]
    want = min(n, size, top)
    for k in range(want):
        mbuf = mbufs[k]
        frame = (size + 2 * k + 1) * SEGMENT_WORDS
        segments64[(frame + SEGMENT_ADDR) // 2] = SHARED_POOL_GPA + np.uint64(mbuf) * room
        segments[frame + SEGMENT_LEN] = lengths[mbuf]
        chains[k * CHAIN_WORDS + CHAIN_FIRST_SEG] = size + 2 * k
        chains[k * CHAIN_WORDS + CHAIN_NSEG_ID] = 2
    added = _repost(ring, chains, slots, want)
    for k in range(added):
        slots[chains[k * CHAIN_WORDS + CHAIN_NSEG_ID] >> CHAIN_ID_SHIFT] = (
            IN_FLIGHT_MBUF | mbufs[k])
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
    room = data.shape[1]
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
        copy_bytes(buffers_at + slot * buffer_size, data_at + mbuf * room, length)
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
    it names, kept alive here."""

    def __init__(self, driver: NetDriver, index: int, pool_at: int):
        queue = driver.queues[index]
        size = queue.size
        buffer_size = driver.layout.buffer_size(index)
        first = driver.layout.buffers(index)
        receive = index % 2 == 0
        self.queue = queue
        self.buffers = driver.memory.view(first, size * buffer_size)
        self.chains = np.zeros(size, dtype=DRIVER_CHAIN_DTYPE)
        self.chains["nseg"] = 1
        # A transmitq's segments go on: a header and a frame record for each zero-copy chain.
        self.segments = np.zeros(size if receive else 3 * size, dtype=SEGMENT_DTYPE)
        self.segments["addr"][:size] = first + np.arange(size, dtype=np.uint64) * buffer_size
        self.segments["len"][:size] = buffer_size
        self.segments["flags"] = SEG_WRITE if receive else 0
        # Slot 0's header bytes: zero for good (frames are copied in after them), and only
        # read by the device, so every zero-copy chain can share them.
        self.segments["addr"][size::2] = first
        self.segments["len"][size::2] = NET_HDR_SIZE
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
        self.state[RING_POOL_AT] = 0 if receive else pool_at
        queue.disable_calls()
        if receive:
            # Every receive buffer is posted from the start, and again as soon as it is read.
            self.chains["first_seg"] = np.arange(size, dtype=np.uint32)
            posted = queue.add_burst(self.chains, size, self.segments)
            assert posted == size, posted
            self.slots[self.chains["id"]] = self.chains["first_seg"]
            if queue.should_kick():
                driver.vrings[index].kick_backend()


class VirtioUserPort(Port):
    """A virtio-net driver of the vhost-user back-end listening on `path`, as a port of
    `queues` queue pairs (queue q is pair q: receiveq 2q, transmitq 2q + 1).

    `packed` and `mergeable` ask for RING_PACKED and MRG_RXBUF, and `queues` > 1 for MQ; a
    back-end that refuses any of them (or VERSION_1) raises BackendRefused, and one that does
    not come up on `path` within `connect_timeout` seconds raises FileNotFoundError or
    ConnectionRefusedError. With a shared `pool`, frames from it are sent without a copy
    (see the module's docstring). Each ring has `queue_size` buffers: transmit buffers of
    BUFFER_SIZE bytes (frames up to BUFFER_SIZE - 12; longer ones are counted as errors and
    not sent), receive buffers of `rx_buffer_size` bytes (without mergeable buffers a longer
    frame cannot arrive; with them, one that does not fit an mbuf is dropped and counted).
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
        pool_at = pool.data.ctypes.data if pool.shared else 0
        try:
            self._rings = [(_Ring(self.driver, 2 * q, pool_at),
                            _Ring(self.driver, 2 * q + 1, pool_at)) for q in range(queues)]
        except BaseException:
            self.driver.close()
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
        """Mbufs of the shared pool posted and not yet taken back (see `tx`)."""
        return sum(int(np.count_nonzero(transmitq.slots & IN_FLIGHT_MBUF))
                   for _, transmitq in self._rings)

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
        # The device has let go of the rings: the mbufs it never gave back are free again.
        for _, transmitq in self._rings:
            in_flight = transmitq.slots[transmitq.slots & IN_FLIGHT_MBUF != 0] ^ IN_FLIGHT_MBUF
            self.pool.release(in_flight, len(in_flight))
            transmitq.slots[:] = 0


register_port_kind(PortKind(
    code=KIND, name="virtio-user", argument="SOCKET",
    options={"queues": int, "packed": flag, "mergeable": flag, "queue_size": int},
    help="a virtio-net front-end of a vhost-user back-end listening on SOCKET",
    make=VirtioUserPort, rx=rx, tx=tx))
