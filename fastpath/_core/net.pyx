"""virtio-net frames over device-side queues (virtio 1.2 §5.1.6): copy in, copy out, one call
per burst. Chains come from the ring modules' pops, so every address used here was translated
and bounds-checked there; lengths the guest chose are checked against our buffers here."""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from fastpath._core.chain cimport fp_access, fp_chain, fp_copy, fp_release_fence, fp_segment
from fastpath._core.dirty_log cimport fp_log_write
from fastpath._core.memory cimport fp_hva_to_gpa, fp_memory
from fastpath._core.notify cimport fp_eventfd_signal
from fastpath._core.packed cimport (fp_packed_device, fp_packed_device_should_notify,
                                    fp_packed_pop_burst, fp_packed_push_burst,
                                    fp_packed_unpop_burst)
from fastpath._core.split cimport (fp_split_device, fp_split_device_should_notify,
                                   fp_split_pop_burst, fp_split_push_burst, fp_split_unpop_burst)

HDR_SIZE = sizeof(fp_net_hdr)
assert HDR_SIZE == 12
# Where num_buffers sits in the header, for the Python side's dtype to be held to.
NUM_BUFFERS_OFFSET = <size_t>&(<fp_net_hdr *>NULL).num_buffers


cdef inline int _pop(fp_net_queue *q, uint32_t first, uint32_t n,
                     uint32_t first_seg) noexcept nogil:
    # Pop into chains[first:first + n], segments from first_seg on; the records' first_seg
    # then counts from the start of the array, as the copies below expect.
    cdef int got, i
    if q.packed:
        got = fp_packed_pop_burst(<fp_packed_device *>q.vq, q.chains + first, n,
                                  q.segs + first_seg, q.max_segs - first_seg)
    else:
        got = fp_split_pop_burst(<fp_split_device *>q.vq, q.chains + first, n,
                                 q.segs + first_seg, q.max_segs - first_seg)
    if first_seg:
        for i in range(got):
            q.chains[first + i].first_seg += first_seg
    return got


cdef inline const fp_memory *_memory(const fp_net_queue *q) noexcept nogil:
    if q.packed:
        return (<fp_packed_device *>q.vq).mem
    return (<fp_split_device *>q.vq).mem


cdef inline const fp_access *_access(const fp_net_queue *q) noexcept nogil:
    if q.packed:
        return &(<fp_packed_device *>q.vq).access
    return &(<fp_split_device *>q.vq).access


cdef inline void _log_written(fp_net_queue *q, const fp_chain *c) noexcept nogil:
    # Log the guest pages of the bytes written into chain c.
    cdef uint32_t s, n, left = c.written
    cdef const fp_segment *seg
    cdef const fp_memory *mem = _memory(q)
    for s in range(c.nreadable, c.nseg):
        if left == 0:
            return
        seg = &q.segs[c.first_seg + s]
        n = seg.len if seg.len < left else left
        fp_log_write(&q.log, fp_hva_to_gpa(mem, seg.addr), n)
        left -= n


cdef inline void _push_and_call(fp_net_queue *q, uint32_t n) noexcept nogil:
    cdef bint notify
    cdef uint32_t i
    if n == 0:
        return
    if q.packed:
        fp_packed_push_burst(<fp_packed_device *>q.vq, q.chains, n)
        notify = fp_packed_device_should_notify(<fp_packed_device *>q.vq)
    else:
        fp_split_push_burst(<fp_split_device *>q.vq, q.chains, n)
        notify = fp_split_device_should_notify(<fp_split_device *>q.vq)
    if q.log.bitmap != NULL:
        # The front-end may read the log as soon as it sees the used entries: mark the
        # pages written once the writes are visible (a release fence orders them).
        fp_release_fence()
        for i in range(n):
            if q.chains[i].written:
                _log_written(q, &q.chains[i])
        fp_log_write(&q.log, q.used_log_gpa, q.used_log_len)
    if notify and q.call_fd >= 0:
        fp_eventfd_signal(q.call_fd)
        q.calls += 1


cdef inline void _unpop(fp_net_queue *q, uint32_t first, uint32_t n) noexcept nogil:
    if n == 0:
        return
    if q.packed:
        fp_packed_unpop_burst(<fp_packed_device *>q.vq, q.chains + first, n)
    else:
        fp_split_unpop_burst(<fp_split_device *>q.vq, n)


cdef inline uint32_t _segments_end(const fp_net_queue *q, uint32_t nchains) noexcept nogil:
    if nchains == 0:
        return 0
    cdef const fp_chain *last = &q.chains[nchains - 1]
    return last.first_seg + last.nseg


cdef int fp_net_receive(fp_net_queue *q, uint8_t *frames, uint32_t stride, uint32_t room,
                        const uint32_t *slots, uint32_t *lengths, uint32_t max_n) noexcept nogil:
    # SAFETY: segments come from a pop, translated whole; a frame is copied only once its
    # length (readable bytes less the header) is known to fit its slot's room bytes.
    # The queue's arrays and counts in locals: the frame copies store through byte pointers,
    # which may alias anything, and would make the compiler reload them for every frame.
    cdef int n = _pop(q, 0, max_n if max_n < q.max_chains else q.max_chains, 0)
    cdef fp_chain *chains = q.chains
    cdef const fp_segment *segs = q.segs
    cdef uint32_t i, s, k, skip, length, done, slot, out = 0, dropped = 0
    cdef uint64_t nbytes = 0
    cdef fp_chain *c
    cdef const fp_segment *seg
    cdef uint8_t *dst
    if n <= 0:
        return n
    for i in range(<uint32_t>n):
        c = &chains[i]
        c.written = 0
        if c.error or c.readable_len < sizeof(fp_net_hdr) or (
                c.readable_len - sizeof(fp_net_hdr) > room):
            dropped += 1
            continue
        length = c.readable_len - sizeof(fp_net_hdr)
        slot = slots[out] if slots != NULL else out
        dst = frames + <uint64_t>slot * stride
        seg = &segs[c.first_seg]
        if c.nreadable == 1:
            # Header and frame in one buffer, as drivers send them.
            fp_copy(dst, <const uint8_t *>(<uintptr_t>seg.addr) + sizeof(fp_net_hdr), length)
        else:
            skip = sizeof(fp_net_hdr)
            done = 0
            for s in range(c.nreadable):
                if seg[s].len <= skip:
                    skip -= seg[s].len
                    continue
                k = seg[s].len - skip
                fp_copy(dst + done, <const uint8_t *>(<uintptr_t>seg[s].addr) + skip, k)
                done += k
                skip = 0
        lengths[slot] = length
        nbytes += length
        out += 1
    q.frames += out
    q.bytes += nbytes
    q.dropped += dropped
    _push_and_call(q, <uint32_t>n)
    return <int>out


cdef inline void _scatter(fp_net_queue *q, fp_chain *c, const uint8_t *src, uint32_t n,
                          uint32_t at) noexcept nogil:
    # Copy n bytes into chain c's writable segments starting `at` bytes in.
    # SAFETY: the caller checked at + n <= c.writable_len; segments come from a pop.
    cdef uint32_t s, k, done = 0
    cdef const fp_segment *seg
    for s in range(c.nreadable, c.nseg):
        if done == n:
            return
        seg = &q.segs[c.first_seg + s]
        if seg.len <= at:
            at -= seg.len
            continue
        k = seg.len - at
        if k > n - done:
            k = n - done
        fp_copy(<uint8_t *>(<uintptr_t>seg.addr) + at, src + done, k)
        done += k
        at = 0


cdef inline void _write_header(fp_net_queue *q, fp_chain *c,
                               uint16_t num_buffers) noexcept nogil:
    # No offloads are offered, so a header is all zero but for the buffer count (§5.1.6.4).
    # SAFETY: the caller checked that the chain's writable length covers the header.
    cdef fp_net_hdr hdr
    cdef fp_segment *seg = &q.segs[c.first_seg + c.nreadable]
    cdef uint32_t i
    if seg.len >= sizeof(fp_net_hdr):
        memset(<void *>(<uintptr_t>seg.addr), 0, sizeof(fp_net_hdr))
        (<fp_net_hdr *>(<uintptr_t>seg.addr)).num_buffers = num_buffers
        return
    memset(&hdr, 0, sizeof(hdr))
    hdr.num_buffers = num_buffers
    for i in range(sizeof(fp_net_hdr)):
        _scatter_byte(q, c, (<uint8_t *>&hdr)[i], i)


cdef inline void _scatter_byte(fp_net_queue *q, fp_chain *c, uint8_t value,
                               uint32_t at) noexcept nogil:
    # SAFETY: as _scatter, for one byte.
    cdef uint32_t s
    cdef const fp_segment *seg
    for s in range(c.nreadable, c.nseg):
        seg = &q.segs[c.first_seg + s]
        if at < seg.len:
            (<uint8_t *>(<uintptr_t>seg.addr))[at] = value
            return
        at -= seg.len


cdef int fp_net_room(fp_net_queue *q, uint32_t max_n) noexcept nogil:
    # SAFETY: pops into the queue's own arrays and returns every chain to the ring unused
    # before anything is written.
    cdef int got
    if not _access(q).iotlb:
        return <int>max_n
    got = _pop(q, 0, max_n if max_n < q.max_chains else q.max_chains, 0)
    if got > 0:
        _unpop(q, 0, <uint32_t>got)
    return got


cdef int fp_net_transmit(fp_net_queue *q, const uint8_t *frames, uint32_t stride,
                         const uint32_t *slots, const uint32_t *lengths,
                         uint32_t n) noexcept nogil:
    # SAFETY: a frame goes only into buffers whose writable length (from the pop, translated
    # whole) covers header and frame; lengths beyond the stride are dropped, never read past.
    # The queue's arrays in locals, as in fp_net_receive.
    cdef uint32_t taken = 0, used = 0, avail = 0, first, j, need, room, at, part
    cdef uint32_t length, slot, delivered = 0
    cdef uint64_t nbytes = 0
    cdef int got
    cdef bint dropped
    cdef const uint8_t *src
    cdef fp_chain *chains = q.chains
    cdef fp_chain *c
    while taken < n:
        slot = slots[taken] if slots != NULL else taken
        length = lengths[slot]
        src = frames + <uint64_t>slot * stride
        need = length + sizeof(fp_net_hdr)
        if length > stride:
            q.dropped += 1
            taken += 1
            continue
        if used < avail:
            c = &chains[used]
            if not c.error and c.nseg == 1 and c.nreadable == 0 and c.writable_len >= need:
                # The common frame: the next buffer is one piece that holds header and frame
                # (num_buffers 1, as a frame in one buffer has with MRG_RXBUF or without).
                _write_header(q, c, 1)
                fp_copy(<uint8_t *>(<uintptr_t>q.segs[c.first_seg].addr) + sizeof(fp_net_hdr),
                        src, length)
                c.written = need
                delivered += 1
                nbytes += length
                used += 1
                taken += 1
                continue
        # Buffers for this frame: chains[first:j], popped as they are needed. Pops ask for one
        # buffer per frame still to go; a frame that needs more pops again.
        first = used
        j = used
        room = 0
        dropped = False
        while room < need:
            if j == avail:
                if avail == q.max_chains or (
                        q.max_segs - _segments_end(q, avail) < q.chain_segs):
                    break
                got = _pop(q, avail, min(n - taken, q.max_chains - avail),
                           _segments_end(q, avail))
                if got < 0:
                    q.frames += delivered
                    q.bytes += nbytes
                    _push_and_call(q, used)
                    return got
                if got == 0:
                    break
                avail += <uint32_t>got
            if q.chains[j].error or (q.mergeable and
                                     q.chains[j].writable_len < sizeof(fp_net_hdr)):
                # A malformed buffer (§5.1.6.3.1: with MRG_RXBUF each one holds a header at
                # least) goes back empty. Before the frame's first buffer it is
                # just skipped; after it, the frame is lost (its buffers must be consecutive).
                q.chains[j].written = 0
                j += 1
                if j - 1 == first:
                    first = used = j
                    continue
                dropped = True
                break
            if not q.mergeable and q.chains[j].writable_len < need:
                # Without MRG_RXBUF one buffer holds a whole frame; this frame can never fit
                # this buffer, so the buffer waits for the next frame.
                dropped = True
                break
            room += q.chains[j].writable_len
            j += 1
        if dropped:
            for k in range(first, j):
                q.chains[k].written = 0
            used = j
            q.dropped += 1
            taken += 1
            continue
        if room < need:
            break  # too few buffers posted: the frame and those after it wait
        at = 0
        for k in range(first, j):
            part = q.chains[k].writable_len
            if k == first:
                _write_header(q, &q.chains[k], <uint16_t>(j - first))
                part -= sizeof(fp_net_hdr)
                if part > length - at:
                    part = length - at
                _scatter(q, &q.chains[k], src, part, sizeof(fp_net_hdr))
                q.chains[k].written = part + sizeof(fp_net_hdr)
            else:
                if part > length - at:
                    part = length - at
                _scatter(q, &q.chains[k], src + at, part, 0)
                q.chains[k].written = part
            at += part
        delivered += 1
        nbytes += length
        used = j
        taken += 1
    q.frames += delivered
    q.bytes += nbytes
    _unpop(q, used, avail - used)
    _push_and_call(q, used)
    return <int>taken


cdef class NetQueue:
    """One virtqueue of a net device: receive frames from a transmitq, transmit frames into a
    receiveq. `vq` is a device queue's handle, `owner` the queue object that keeps it alive;
    bursts pop at most `max_chains` chains."""
    cdef fp_net_queue q
    cdef object owner

    def __cinit__(self):
        self.q.chains = NULL
        self.q.segs = NULL
        self.q.log.bitmap = NULL

    def __init__(self, uintptr_t vq, bint packed, object owner, *, bint mergeable=False,
                 int call_fd=-1, uint32_t max_chains=64, uint32_t queue_size=256):
        if not 1 <= max_chains <= 32768:
            raise ValueError("a burst holds 1 to 32768 chains")
        self.owner = owner
        self.q.vq = <void *>vq
        self.q.packed = packed
        self.q.mergeable = mergeable
        self.q.call_fd = call_fd
        self.q.max_chains = max_chains
        # As DeviceQueue.new_burst: room for a burst of small chains plus one as long as a
        # full indirect table, so that no chain fails for lack of room.
        self.q.chain_segs = queue_size if queue_size > 1024 else 1024
        self.q.max_segs = 4 * max_chains + self.q.chain_segs
        self.q.chains = <fp_chain *>malloc(max_chains * sizeof(fp_chain))
        self.q.segs = <fp_segment *>malloc(self.q.max_segs * sizeof(fp_segment))
        if self.q.chains == NULL or self.q.segs == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.q.chains)
        free(self.q.segs)

    @property
    def handle(self):
        """Address of the core state, for kernels calling fp_net_receive / fp_net_transmit."""
        return <uintptr_t>&self.q

    @property
    def call_fd(self):
        """The call eventfd written when the driver wants a notification (-1: none)."""
        return self.q.call_fd

    @call_fd.setter
    def call_fd(self, int fd):
        self.q.call_fd = fd

    def set_log(self, uintptr_t bitmap, uint64_t size, uint64_t used_gpa, uint32_t used_len):
        """Log every guest page written into `bitmap` (`size` bytes; 0 stops logging), and
        [used_gpa, + used_len) on every push. The caller keeps the bitmap mapped."""
        self.q.log.bitmap = <uint8_t *>bitmap
        self.q.log.size = size if bitmap else 0
        self.q.used_log_gpa = used_gpa
        self.q.used_log_len = used_len

    @property
    def counters(self):
        """{frames, bytes, dropped, calls} since the queue was made."""
        return {"frames": self.q.frames, "bytes": self.q.bytes, "dropped": self.q.dropped,
                "calls": self.q.calls}

    def receive(self, uint8_t[:, ::1] frames, uint32_t[::1] lengths):
        """Copy up to len(lengths) frames out of the transmitq; returns how many (or < 0)."""
        cdef uint32_t n = min(frames.shape[0], lengths.shape[0])
        cdef int got
        if frames.shape[1] >= 1 << 30:
            raise ValueError("a frame row holds less than 1 GiB")
        if n == 0:
            return 0
        with nogil:
            got = fp_net_receive(&self.q, &frames[0, 0], frames.shape[1], frames.shape[1], NULL,
                                 &lengths[0], n)
        return got

    def transmit(self, const uint8_t[:, ::1] frames, const uint32_t[::1] lengths, uint32_t n):
        """Copy frames[:n] into the receiveq; returns how many it took (or < 0)."""
        cdef int took
        if n > frames.shape[0] or n > lengths.shape[0]:
            raise IndexError("more frames than the arrays hold")
        if frames.shape[1] >= 1 << 30:
            raise ValueError("a frame row holds less than 1 GiB")
        if n == 0:
            return 0
        with nogil:
            took = fp_net_transmit(&self.q, &frames[0, 0], frames.shape[1], NULL,
                                   &lengths[0], n)
        return took
