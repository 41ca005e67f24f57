# Records shared by the split and packed queues: what a burst pop hands to a device, what a driver
# hands to a burst add, error codes, and copies between chains and flat buffers. The helpers used
# per descriptor or per chain are inline here, so that each queue module compiles them in.
from libc.stdint cimport int16_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t

from fastpath._core.memory cimport fp_gpa_chunk, fp_gpa_to_hva, fp_memory
from fastpath._core.notify cimport fp_eventfd_signal


cdef extern from "fp_copy.h":
    void fp_copy(void *dst, const void *src, size_t n) noexcept nogil
    void fp_prefetch(const void *p) noexcept nogil
    void fp_store_u64(void *p, uint64_t v) noexcept nogil


cdef extern from "fp_atomic.h":
    uint16_t fp_load_acquire_u16(const uint16_t *p) noexcept nogil
    void fp_store_release_u16(uint16_t *p, uint16_t v) noexcept nogil
    uint16_t fp_load_relaxed_u16(const uint16_t *p) noexcept nogil
    void fp_store_relaxed_u16(uint16_t *p, uint16_t v) noexcept nogil
    void fp_full_fence() noexcept nogil
    void fp_release_fence() noexcept nogil
    uint8_t fp_atomic_or_u8(uint8_t *p, uint8_t v) noexcept nogil
    void fp_store_release_u8(uint8_t *p, uint8_t v) noexcept nogil
    uint64_t fp_read_once_u64(const void *p) noexcept nogil
    uint16_t fp_read_once_u16(const void *p) noexcept nogil
    uint64_t fp_load_acquire_u64(const void *p) noexcept nogil
    void fp_store_release_u64(void *p, uint64_t v) noexcept nogil


# Per-chain and per-queue errors. A negative return is one of these; the queue's counter at the
# same index (negated) counts it. fastpath.errors maps each to a named exception.
cpdef enum:
    FP_OK = 0
    FP_E_HEAD_RANGE = -1        # avail ring names a head index >= queue size
    FP_E_NEXT_RANGE = -2        # a descriptor's next index is outside its table
    FP_E_CHAIN_LOOP = -3        # a chain longer than its table: a loop or an overlong chain
    FP_E_DESC_MEMORY = -4       # a buffer outside guest memory
    FP_E_INDIRECT = -5          # a bad indirect table (size, place, nesting, NEXT, not negotiated)
    FP_E_WRITE_ORDER = -6       # a device-readable descriptor after a device-writable one
    FP_E_TOO_MANY_SEGMENTS = -7  # a chain needs more segments than the caller's array holds
    FP_E_AVAIL_IDX = -8         # the avail index moved by more than the queue size
    FP_E_USED_ID = -9           # a used element names no buffer in flight
    FP_E_BROKEN = -10           # the queue stopped after an unrecoverable error; reset it
    FP_E_CHAIN_BYTES = -11      # a chain's total length does not fit 32 bits
    FP_E_NO_SPACE = -12         # (Python layer) the driver has too few free descriptors
    FP_E_IOTLB_MISS = -13       # an IOVA not in the IOTLB yet: the chain waits in the ring
    FP_NERRORS = 14


# Queue options and state bits, both ring types and both sides.
cpdef enum:
    FP_VQ_EVENT_IDX = 1         # VIRTIO_F_EVENT_IDX negotiated
    FP_VQ_INDIRECT = 2          # VIRTIO_F_INDIRECT_DESC negotiated
    FP_VQ_BROKEN = 0x100        # device side: stopped after an unrecoverable ring error
    FP_VQ_NOTIFY_OFF = 0x200    # notifications from the other side are suppressed
    FP_VQ_EVENT_DESC = 0x400    # packed driver: asked for a call when a given slot is used


# The most descriptors an indirect table may hold: the queue size or this, whichever is larger.
# QEMU serves at most 1024 (VIRTQUEUE_MAX_SIZE); a cap also bounds the work a guest can demand.
cpdef enum:
    FP_MAX_INDIRECT = 1024


# Segment flags.
cpdef enum:
    FP_SEG_WRITE = 1            # device-writable


# One contiguous piece of a buffer. Device side: `addr` is a host address inside guest memory.
# Driver side: `addr` is a guest-physical address.
cdef packed struct fp_segment:
    uint64_t addr
    uint32_t len
    uint16_t flags
    uint16_t reserved


# One buffer (descriptor chain) popped by a device. Its segments are segs[first_seg:first_seg+nseg],
# device-readable ones first. The device sets `written` before pushing it back as used.
cdef packed struct fp_chain:
    uint32_t id             # split: head index; packed: buffer id
    uint32_t first_seg
    uint16_t nseg
    uint16_t nreadable
    uint16_t ndesc          # ring slots the chain took (packed: how far the used index moves)
    int16_t error           # FP_OK or an FP_E_* code; a failed chain has no segments
    uint32_t readable_len
    uint32_t writable_len
    uint32_t written
    uint32_t reserved


# One buffer a driver offers: segs[first_seg:first_seg+nseg] (readable ones first). A non-zero
# `indirect_table` is the guest-physical address of room for nseg descriptors: the chain goes
# there as an indirect table and takes one ring slot. The add sets `id`.
cdef packed struct fp_driver_chain:
    uint64_t indirect_table
    uint32_t first_seg
    uint16_t nseg
    uint16_t id


# A completion as a driver collects it (the split ring's used element, virtio 1.2 §2.7.8).
cdef packed struct fp_used_elem:
    uint32_t id
    uint32_t len


# virtio 1.2 §2.7.10 / §2.8.10: did the index move from old to new_idx past event_idx?
cdef inline bint fp_need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old) noexcept nogil:
    return <uint16_t>(new_idx - event_idx - 1) < <uint16_t>(new_idx - old)


# Copy a chain's device-readable bytes into dst (at most cap); returns the bytes copied.
cdef inline uint32_t fp_chain_gather(const fp_chain *chain, const fp_segment *segs,
                                     uint8_t *dst, uint32_t cap) noexcept nogil:
    # SAFETY: segment addresses and lengths come from a pop, which translated each one whole;
    # at most cap bytes go to dst.
    cdef uint32_t i, n, done = 0
    cdef const fp_segment *s
    for i in range(chain.nreadable):
        s = &segs[chain.first_seg + i]
        n = s.len if s.len < cap - done else cap - done
        fp_copy(dst + done, <const void *>(<uintptr_t>s.addr), n)
        done += n
        if done == cap:
            break
    return done

# For each of chains[0:n], copy its first `stride` readable bytes (fewer if it has fewer) to
# dst + i * stride; returns the total copied. One call per burst for compiled callers.
cdef uint64_t fp_gather_burst(const fp_chain *chains, uint32_t n, const fp_segment *segs,
                              uint8_t *dst, uint32_t stride) noexcept nogil

# Copy n bytes from src to dst (the ranges apart), for kernels moving frames between buffers of
# their own: Numba's element-by-element slice copies are many times slower.
cdef void fp_copy_bytes(uint8_t *dst, const uint8_t *src, uint64_t n) noexcept nogil

# Copy up to n bytes of src into a chain's device-writable segments; returns the bytes copied.
cdef inline uint32_t fp_chain_scatter(const fp_chain *chain, const fp_segment *segs,
                                      const uint8_t *src, uint32_t n) noexcept nogil:
    # SAFETY: as fp_chain_gather, and only device-writable segments are written.
    cdef uint32_t i, k, done = 0
    cdef const fp_segment *s
    for i in range(chain.nreadable, chain.nseg):
        s = &segs[chain.first_seg + i]
        k = s.len if s.len < n - done else n - done
        fp_copy(<void *>(<uintptr_t>s.addr), src + done, k)
        done += k
        if done == n:
            break
    return done


# How a device queue reaches the buffers its chains name. Without VIRTIO_F_ACCESS_PLATFORM both
# tables are the guest memory table and addresses are guest-physical. With it, addresses are IOVAs
# (hv.md §5.1) and the tables are the connection's IOTLB written as region rows keyed by IOVA:
# `read` holds the entries the device may read (RO, RW), `write` those it may write (WO, RW).
# Two tables rather than a permission word per row: a permission is enforced by which table a
# lookup searches, so every pop keeps the one lookup it already makes, and fp_region stays the
# row layout that Numba kernels share with the core.
cdef struct fp_access:
    const fp_memory *read
    const fp_memory *write
    uint64_t miss_iova          # where the last pop stopped for want of a translation
    uint8_t miss_perm           # FP_ACCESS_READ or FP_ACCESS_WRITE; 0 while nothing is missing
    bint iotlb                  # a failed lookup may be a miss (the tables are an IOTLB)
    int miss_fd                 # eventfd signalled for a new miss, or -1
    uint64_t signalled          # the IOVA page and access last signalled (page << 2 | access)


# Access bits of a miss, the values of VHOST_ACCESS_RO/WO (QEMU docs/interop/vhost-user.rst,
# "IOMMU support"), so that the Python side sends them as they are.
cpdef enum:
    FP_ACCESS_READ = 1
    FP_ACCESS_WRITE = 2


# [addr, addr + length) is not wholly in the table for its access. Without an IOTLB, or when the
# first missing byte is mapped without the access needed (hv.md §5.4: a permission failure), the
# buffer is refused; otherwise that byte's IOVA is recorded as a miss: the front-end has not told
# us its translation yet, and the chain waits in the ring for it.
cdef inline int fp_lookup_failed(fp_access *a, uint64_t addr, uint64_t length,
                                 bint write) noexcept nogil:
    cdef uint32_t hint = 0
    cdef uint64_t chunk
    if not a.iotlb:
        return FP_E_DESC_MEMORY
    # Every chunk found is non-empty and inside an entry whose end does not wrap (the IOTLB
    # refuses such entries), so the walk ends.
    while length and fp_gpa_chunk(a.write if write else a.read, addr, length, &hint,
                                  &chunk) != NULL:
        addr += chunk
        length -= chunk
    if length == 0 or fp_gpa_chunk(a.read if write else a.write, addr, 1, &hint,
                                   &chunk) != NULL:
        return FP_E_DESC_MEMORY
    a.miss_iova = addr
    a.miss_perm = FP_ACCESS_WRITE if write else FP_ACCESS_READ
    if a.miss_fd >= 0 and a.signalled != (addr >> 12 << 2 | a.miss_perm):
        # Wake the control plane to send the miss now, once per new miss: a chain waiting
        # for its translation meets the same one on every pop.
        a.signalled = addr >> 12 << 2 | a.miss_perm
        fp_eventfd_signal(a.miss_fd)
    return FP_E_IOTLB_MISS


# Append the buffer [addr, addr + length) to segs as one segment per region it touches,
# advancing *nseg. Returns 0, FP_E_DESC_MEMORY, FP_E_IOTLB_MISS or FP_E_TOO_MANY_SEGMENTS.
cdef inline int fp_append_buffer(fp_access *a, uint32_t *hint, uint64_t addr,
                                 uint32_t length, uint16_t flags, fp_segment *segs,
                                 uint32_t *nseg, uint32_t max_segs) noexcept nogil:
    # SAFETY: a segment is emitted only for bytes fp_gpa_chunk found inside one region of the
    # table for the segment's access, and only while nseg < max_segs.
    cdef uint64_t chunk
    cdef uint8_t *hva
    cdef uint64_t left = length
    cdef const fp_memory *mem = a.write if flags & FP_SEG_WRITE else a.read
    if length and addr + (length - 1) < addr:
        # The range wraps past 2**64: no region can hold it, even one that ends there.
        return FP_E_DESC_MEMORY
    while left:
        hva = fp_gpa_chunk(mem, addr, left, hint, &chunk)
        if hva == NULL:
            return fp_lookup_failed(a, addr, left, flags & FP_SEG_WRITE)
        if nseg[0] >= max_segs:
            return FP_E_TOO_MANY_SEGMENTS
        segs[nseg[0]].addr = <uintptr_t>hva
        segs[nseg[0]].len = <uint32_t>chunk
        segs[nseg[0]].flags = flags
        segs[nseg[0]].reserved = 0
        nseg[0] += 1
        addr += chunk
        left -= chunk
    return 0


# The host address of a table of `length` bytes at addr the device reads (an indirect table),
# or NULL with *rc set: FP_E_IOTLB_MISS for a miss, else `refused`.
cdef inline const uint8_t *fp_read_table(fp_access *a, uint32_t *hint, uint64_t addr,
                                         uint32_t length, int refused, int *rc) noexcept nogil:
    cdef const uint8_t *table = fp_gpa_to_hva(a.read, addr, length, hint)
    if table == NULL:
        rc[0] = FP_E_IOTLB_MISS if addr + length > addr and fp_lookup_failed(
            a, addr, length, False) == FP_E_IOTLB_MISS else refused
    return table


# The region the queue's last lookup found, for one access, as a burst sees it: loaded once per
# burst (fp_windows_load), so that a buffer inside it is translated with two compares instead of
# a walk of the table. The tables do not change while a pop runs (the engine's control-plane gate
# quiesces the data plane first), so a window stays true for the burst that loaded it.
cdef struct fp_window:
    uint64_t base
    uint64_t size           # 0: nothing is inside (no region at the hint)
    uint64_t host


cdef inline void _window_load(fp_window *w, const fp_memory *mem, uint32_t hint) noexcept nogil:
    if hint < mem.nregions:
        w.base = mem.regions[hint].guest_phys_addr
        w.size = mem.regions[hint].size
        w.host = mem.regions[hint].host_addr
    else:
        w.base = 0
        w.size = 0
        w.host = 0


# windows[0] for buffers the device reads, windows[1] for those it writes (FP_SEG_WRITE).
cdef inline void fp_windows_load(fp_window *windows, const fp_access *a,
                                 uint32_t hint) noexcept nogil:
    _window_load(&windows[0], a.read, hint)
    _window_load(&windows[1], a.write, hint)


# Segment and chain record of a one-segment chain (one descriptor inside the window) as
# little-endian words, one store each (fp_store_u64): field by field they take 13 stores, the
# most of any step of a pop. The caller checked that the buffer is inside a region for its
# access (fp_window_holds) and that `seg` exists.
cdef inline void fp_store_single_segment_chain(uint64_t hva, uint32_t length, bint writable,
                                               uint32_t id, fp_segment *seg,
                                               uint32_t first_seg, fp_chain *c) noexcept nogil:
    cdef uint8_t *s = <uint8_t *>seg
    cdef uint8_t *r = <uint8_t *>c
    # fp_segment: addr; len, flags, reserved = 0.
    fp_store_u64(s, hva)
    fp_store_u64(s + 8, length | (<uint64_t>FP_SEG_WRITE << 32 if writable else 0))
    # fp_chain: id, first_seg; nseg = 1, nreadable, ndesc = 1, error = 0; readable_len,
    # writable_len; written = 0, reserved = 0.
    fp_store_u64(r, id | <uint64_t>first_seg << 32)
    fp_store_u64(r + 8, 0x100000001 if writable else 0x100010001)
    fp_store_u64(r + 16, <uint64_t>length << 32 if writable else length)
    fp_store_u64(r + 24, 0)


# Whether the buffer [gpa, gpa + length) is not empty and lies wholly inside the window: then
# it is at host address w.host + (gpa - w.base), and a one-descriptor chain of it is a pop's
# common case, stored with fp_store_single_segment_chain. Otherwise the pop takes the general
# path, which looks the buffer up in the whole table. A burst keeps its window in a local
# (the struct's fields in registers) for its loop of such chains.
cdef inline bint fp_window_holds(const fp_window *w, uint64_t gpa, uint32_t length) noexcept nogil:
    # SAFETY: offset < size, and length - 1 < size - offset (an empty buffer wraps to
    # 2**64 - 1 and fails); neither side of a compare can overflow.
    cdef uint64_t offset = gpa - w.base
    return gpa >= w.base and offset < w.size and <uint64_t>length - 1 < w.size - offset


cdef inline void fp_chain_clear(fp_chain *c, uint32_t id, uint32_t first_seg) noexcept nogil:
    c.id = id
    c.first_seg = first_seg
    c.nseg = 0
    c.nreadable = 0
    c.ndesc = 1
    c.error = 0
    c.readable_len = 0
    c.writable_len = 0
    c.written = 0
    c.reserved = 0


cdef inline uint32_t fp_max_indirect(uint32_t queue_size) noexcept nogil:
    return queue_size if queue_size > FP_MAX_INDIRECT else FP_MAX_INDIRECT


cdef inline void fp_count_error(uint64_t *errors, int code) noexcept nogil:
    errors[-code] += 1


# {-code: count} for every error counted at least once.
cdef dict fp_error_counts(const uint64_t *errors)

# Buffers looked up in `read` and `write` from now on; with `iotlb`, a failed lookup may be a miss.
# A new miss signals miss_fd (-1: none).
cdef inline void fp_access_set(fp_access *a, const fp_memory *read, const fp_memory *write,
                               bint iotlb, int miss_fd) noexcept nogil:
    a.read = read
    a.write = write
    a.iotlb = iotlb
    a.miss_perm = 0
    a.miss_iova = 0
    a.miss_fd = miss_fd
    a.signalled = 0

# (iova, access) of the miss the last pops stopped at, or None; it is forgotten once taken (a
# pop that stops there again records it again).
cdef object fp_take_miss(fp_access *a)
