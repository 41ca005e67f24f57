"""Split virtqueue bursts (virtio 1.2 §2.7): a device pops and pushes, a driver adds and collects.

Everything a guest can write (ring indices, descriptor fields, indirect tables) is read once into
a local and validated before it is used; a bad chain is reported in its record, never followed.
"""

from libc.stdint cimport UINT32_MAX, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from fastpath._core.chain cimport (FP_E_AVAIL_IDX, FP_E_BROKEN, FP_E_CHAIN_BYTES,
                                   FP_E_CHAIN_LOOP, FP_E_HEAD_RANGE, FP_E_INDIRECT,
                                   FP_E_IOTLB_MISS, FP_E_NEXT_RANGE, FP_E_TOO_MANY_SEGMENTS,
                                   FP_E_USED_ID, FP_E_WRITE_ORDER, FP_SEG_WRITE,
                                   FP_VQ_BROKEN, FP_VQ_EVENT_IDX, FP_VQ_INDIRECT,
                                   FP_VQ_NOTIFY_OFF, fp_access_set, fp_append_buffer,
                                   fp_chain_clear, fp_count_error, fp_error_counts, fp_full_fence,
                                   fp_load_acquire_u16, fp_load_relaxed_u16, fp_need_event,
                                   fp_max_indirect, fp_read_once_u16, fp_read_once_u64,
                                   fp_prefetch, fp_read_table, fp_store_single_segment_chain,
                                   fp_take_miss, fp_window, fp_window_holds, fp_windows_load,
                                   fp_store_release_u8, fp_store_release_u16,
                                   fp_store_relaxed_u16)
from fastpath._core.chain import check_driver_chains
from fastpath._core.memory cimport MemoryTable, fp_gpa_to_hva

DESC_SIZE = sizeof(fp_split_desc)
INFLIGHT_HEADER_SIZE = sizeof(fp_inflight_split_region)
INFLIGHT_DESC_SIZE = sizeof(fp_inflight_split_desc)


def inflight_offsets():
    """{record: {field: byte offset}} of the inflight layouts as the compiler laid them out,
    for the numpy dtypes that mirror them."""
    cdef fp_inflight_split_region r
    cdef fp_inflight_split_desc d
    base_r, base_d = <size_t>&r, <size_t>&d
    return {
        "region": {"features": <size_t>&r.features - base_r,
                   "version": <size_t>&r.version - base_r,
                   "desc_num": <size_t>&r.desc_num - base_r,
                   "last_batch_head": <size_t>&r.last_batch_head - base_r,
                   "used_idx": <size_t>&r.used_idx - base_r},
        "desc": {"inflight": <size_t>&d.inflight - base_d,
                 "next": <size_t>&d.next - base_d,
                 "counter": <size_t>&d.counter - base_d},
    }


cdef inline void _read_desc(const fp_split_desc *p, fp_split_desc *d) noexcept nogil:
    # One read of each word of a guest-written entry (fp_read_once_*): what was validated is
    # what gets used, however the guest rewrites the entry meanwhile.
    cdef uint64_t word = fp_read_once_u64(<const uint8_t *>p + 8)
    d.addr = fp_read_once_u64(p)
    d.len = <uint32_t>word
    d.flags = <uint16_t>(word >> 32)
    d.next = <uint16_t>(word >> 48)


cdef int _read_chain(fp_split_device *vq, uint16_t head, fp_chain *c, fp_segment *segs,
                     uint32_t max_segs) noexcept nogil:
    # Walk the chain at `head` into segs[0:max_segs]; fills c's counts. Returns 0 or an error.
    cdef const fp_split_desc *table = vq.ring.desc
    cdef uint32_t table_size = vq.ring.size
    cdef uint32_t idx = head
    cdef uint32_t visited = 0
    cdef uint32_t nseg = 0
    cdef uint64_t readable = 0, writable = 0
    cdef bint in_indirect = False, seen_write = False
    cdef fp_split_desc d
    cdef int rc
    if head >= vq.ring.size:
        return FP_E_HEAD_RANGE
    while True:
        _read_desc(&table[idx], &d)
        visited += 1
        if visited > table_size:
            return FP_E_CHAIN_LOOP
        if d.flags & FP_SPLIT_DESC_F_INDIRECT:
            # §2.7.5.3: one level only, never with NEXT, a whole number of descriptors; and no
            # more of them than a chain may have, which also bounds the walk.
            if (in_indirect or not (vq.options & FP_VQ_INDIRECT)
                    or d.flags & FP_SPLIT_DESC_F_NEXT or d.len == 0
                    or d.len % sizeof(fp_split_desc) != 0
                    or d.len // sizeof(fp_split_desc) > fp_max_indirect(vq.ring.size)):
                return FP_E_INDIRECT
            table = <const fp_split_desc *>fp_read_table(&vq.access, &vq.mem_hint, d.addr,
                                                         d.len, FP_E_INDIRECT, &rc)
            if table == NULL:
                return rc
            table_size = d.len // sizeof(fp_split_desc)
            idx = 0
            visited = 0
            in_indirect = True
            continue
        if d.flags & FP_SPLIT_DESC_F_WRITE:
            seen_write = True
            writable += d.len
        elif seen_write:
            return FP_E_WRITE_ORDER
        else:
            readable += d.len
        rc = fp_append_buffer(&vq.access, &vq.mem_hint, d.addr, d.len,
                              FP_SEG_WRITE if d.flags & FP_SPLIT_DESC_F_WRITE else 0,
                              segs, &nseg, max_segs)
        if rc:
            return rc
        if not seen_write:
            c.nreadable = <uint16_t>nseg
        if not (d.flags & FP_SPLIT_DESC_F_NEXT):
            break
        idx = d.next
        if idx >= table_size:
            return FP_E_NEXT_RANGE
    if readable > UINT32_MAX or writable > UINT32_MAX or nseg > 0xFFFF:
        return FP_E_CHAIN_BYTES
    c.nseg = <uint16_t>nseg
    c.readable_len = <uint32_t>readable
    c.writable_len = <uint32_t>writable
    return 0


cdef int _pop_chain(fp_split_device *vq, uint16_t head, fp_chain *c, fp_segment *segs,
                    uint32_t used_segs, uint32_t max_segs, fp_window *windows,
                    bint first) noexcept nogil:
    # The chain at `head` into c, its pieces from segs[used_segs]; returns the segments it took,
    # or -1 when they do not fit and it is not the burst's first chain (it is left for the next
    # burst, which starts with an empty segment array) or when a translation is missing (it is
    # left until the IOTLB has it). A bad chain takes none, its error set. The burst's loop
    # takes a one-descriptor chain inside its window itself; this is every other case.
    cdef int rc
    fp_chain_clear(c, head, used_segs)
    rc = _read_chain(vq, head, c, segs + used_segs, max_segs - used_segs)
    # The walk may have moved the hint to another region: the next chains likely sit there too.
    fp_windows_load(windows, &vq.access, vq.mem_hint)
    if rc == FP_E_IOTLB_MISS or (rc == FP_E_TOO_MANY_SEGMENTS and not first):
        return -1
    if rc:
        c.error = <short>rc
        c.nseg = 0
        c.nreadable = 0
        c.readable_len = 0
        c.writable_len = 0
        fp_count_error(vq.errors, rc)
        return 0
    return c.nseg


cdef inline void _record_pop(fp_split_inflight *t, uint16_t head) noexcept nogil:
    # "When receiving available buffers": the head's counter, then inflight = 1. The release
    # store puts the counter and every head recorded before in the region first, so a restart
    # finds the pops recorded in the order they happened (see fp_atomic.h).
    t.desc[head].counter = t.counter
    t.counter += 1
    fp_store_release_u8(&t.desc[head].inflight, 1)


cdef inline int _end_pop(fp_split_device *vq, uint16_t next_idx, uint32_t n) noexcept nogil:
    vq.last_avail_idx = next_idx
    vq.popped += n
    if vq.options & FP_VQ_EVENT_IDX and not (vq.options & FP_VQ_NOTIFY_OFF):
        # §2.7.10: kick me when the driver moves avail idx past what I have consumed.
        fp_store_relaxed_u16(vq.ring.avail_event, next_idx)
    return <int>n


cdef uint32_t _pop_singles(const uint16_t *avail_ring, const fp_split_desc *desc, uint32_t mask,
                           uint32_t idx, uint32_t count, const fp_window *windows,
                           fp_chain *chains, fp_segment *segs, uint32_t first_seg) noexcept nogil:
    # Pops up to `count` chains from avail slot idx on while each is one descriptor inside the
    # window for the first one's access, into chains[0:] and segs[first_seg:]; returns how
    # many. The first chain it cannot take it leaves for the general path, having written
    # nothing for it. A queue's one-descriptor buffers are all of one access (a transmitq's
    # readable, a receiveq's writable), so the loop keeps one window in registers.
    # SAFETY: avail slots are masked to the ring and a head is checked against it before its
    # descriptor is read; the caller has room for `count` chains and segments. The first
    # descriptor's flags only pick the window: the loop reads them again, once, and checks
    # what it uses. A prefetch reads nothing used, so a head not yet checked is masked only to
    # stay in the table.
    cdef uint32_t k
    cdef uint16_t head, next_head, access
    cdef uint64_t hva
    cdef fp_window w
    cdef fp_split_desc d
    if count == 0:
        return 0
    next_head = fp_read_once_u16(&avail_ring[idx & mask])
    access = fp_read_once_u16(&desc[next_head & mask].flags) & FP_SPLIT_DESC_F_WRITE
    w = windows[1 if access else 0]
    for k in range(count):
        head = next_head
        if k + 1 < count:
            # The next chain's descriptor, while this one is read and translated.
            next_head = fp_read_once_u16(&avail_ring[(idx + k + 1) & mask])
            fp_prefetch(&desc[next_head & mask])
        if head > mask:
            return k
        _read_desc(&desc[head], &d)
        if ((d.flags & (FP_SPLIT_DESC_F_NEXT | FP_SPLIT_DESC_F_INDIRECT
                        | FP_SPLIT_DESC_F_WRITE)) != access
                or not fp_window_holds(&w, d.addr, d.len)):
            return k
        hva = w.host + (d.addr - w.base)
        fp_store_single_segment_chain(hva, d.len, access, head, &segs[first_seg + k],
                                      first_seg + k, &chains[k])
        # The device reads the buffer's first bytes next (a header): load it now.
        fp_prefetch(<const void *>(<uintptr_t>hva))
    return count


cdef int fp_split_pop_burst(fp_split_device *vq, fp_chain *chains, uint32_t max_chains,
                            fp_segment *segs, uint32_t max_segs) noexcept nogil:
    # SAFETY: the ring areas were translated for their full size when the queue was made; every
    # avail slot is masked to the ring, every head and next is checked against its table before
    # use, and every buffer is translated whole before a segment points at it. An inflight
    # record's heads were checked against the ring when it was attached, and a head is recorded
    # only below the ring size, which the record's desc_num is at least. A prefetch reads
    # nothing the core uses, so the one of a head not yet checked is masked only to stay in
    # the table.
    # Ring state lives in locals for the burst: stores to chains and segments could otherwise
    # alias it, and the compiler would reload it for every chain.
    cdef uint16_t next_idx = vq.last_avail_idx
    cdef uint32_t mask = vq.ring.size - 1
    cdef const uint16_t *avail_ring = vq.ring.avail + 2
    cdef const fp_split_desc *desc = vq.ring.desc
    cdef fp_split_inflight *t = &vq.inflight
    cdef bint tracked = t.region != NULL
    cdef fp_window windows[2]
    cdef uint16_t avail_idx, head
    cdef uint32_t pending, _k, n = 0, used_segs = 0
    cdef int took
    if vq.options & FP_VQ_BROKEN:
        return FP_E_BROKEN
    if t.resubmit_next < t.resubmit_count:
        fp_windows_load(windows, &vq.access, vq.mem_hint)
    # A restart's chains first: they were taken from the avail ring before it, and go first
    # so that the driver gets back what it waited longest for.
    while n < max_chains and t.resubmit_next < t.resubmit_count:
        took = _pop_chain(vq, t.resubmit[t.resubmit_next], &chains[n], segs, used_segs,
                          max_segs, windows, n == 0)
        if took < 0:
            return _end_pop(vq, next_idx, n)
        used_segs += <uint32_t>took
        t.resubmit_next += 1
        n += 1
    # Acquire, once per burst: the ring entries (and the descriptors they name) the driver
    # wrote before publishing idx are visible after this, for every chain the burst takes.
    avail_idx = fp_load_acquire_u16(&vq.ring.avail[1])
    pending = <uint16_t>(avail_idx - next_idx)
    if pending > vq.ring.size:
        # §2.7.13.3: the driver never has more than the queue size outstanding.
        vq.options |= FP_VQ_BROKEN
        fp_count_error(vq.errors, FP_E_AVAIL_IDX)
        if n:
            return _end_pop(vq, next_idx, n)
        return FP_E_AVAIL_IDX
    if pending > max_chains - n:
        pending = max_chains - n
    if pending:
        # Only now: a back-end that polls faster than its driver adds finds the ring empty
        # most times, and then reads nothing but the avail index.
        fp_windows_load(windows, &vq.access, vq.mem_hint)
    while pending:
        # The common chains in a loop of their own, a few values live in registers; the first
        # one it leaves (a longer chain, one outside the window, a bad head) is taken below.
        took = <int>_pop_singles(avail_ring, desc, mask, next_idx,
                                 min(pending, max_segs - used_segs), windows, &chains[n],
                                 segs, used_segs)
        if tracked:
            for _k in range(<uint32_t>took):
                _record_pop(t, <uint16_t>chains[n + _k].id)
        next_idx += <uint16_t>took
        used_segs += <uint32_t>took
        n += <uint32_t>took
        pending -= <uint32_t>took
        if pending == 0:
            break
        head = fp_read_once_u16(&avail_ring[next_idx & mask])
        took = _pop_chain(vq, head, &chains[n], segs, used_segs, max_segs, windows, n == 0)
        if took < 0:
            break
        next_idx += 1
        used_segs += <uint32_t>took
        if tracked and head <= mask:
            _record_pop(t, head)
        n += 1
        pending -= 1
    return _end_pop(vq, next_idx, n)


cdef int fp_split_push_burst(fp_split_device *vq, const fp_chain *chains,
                             uint32_t n) noexcept nogil:
    # SAFETY: used slots are masked to the ring; a chain id past the queue is never written, nor
    # recorded (the inflight record's desc_num is at least the ring size).
    cdef uint32_t i, pushed = 0
    cdef uint32_t size = vq.ring.size
    cdef fp_used_elem *used_ring = vq.ring.used_ring
    cdef uint16_t idx = vq.used_idx
    cdef fp_split_inflight *t = &vq.inflight
    # In locals: the stores to the used ring and the region could otherwise alias them,
    # reloaded every chain.
    cdef fp_inflight_split_desc *record = t.desc
    cdef uint16_t batch_head = t.last_batch_head
    cdef fp_used_elem *e
    for i in range(n):
        if chains[i].id >= size:
            # A head the guest put out of range cannot go back; it was counted at pop.
            if chains[i].error != FP_E_HEAD_RANGE:
                fp_count_error(vq.errors, FP_E_USED_ID)
            continue
        if record != NULL:
            # "When supplying used buffers": the batch's heads are linked, newest first.
            record[chains[i].id].next = batch_head
            batch_head = <uint16_t>chains[i].id
        e = &used_ring[idx & (size - 1)]
        e.id = chains[i].id
        # Never report more written than the driver offered (§2.7.8.1).
        e.len = (chains[i].written if chains[i].written < chains[i].writable_len
                 else chains[i].writable_len)
        idx += 1
        pushed += 1
    if record != NULL:
        t.last_batch_head = batch_head
        t.region.last_batch_head = batch_head
    # Release: the elements (and the batch's links) are visible before the index that covers them.
    fp_store_release_u16(&vq.ring.used[1], idx)
    vq.used_idx = idx
    vq.pushed += pushed
    if t.region != NULL and pushed:
        _record_used(t, chains, n, vq.ring.size, idx)
    return <int>pushed


cdef void _record_used(fp_split_inflight *t, const fp_chain *chains, uint32_t n, uint32_t size,
                       uint16_t used_idx) noexcept nogil:
    # After the used index moved: the batch's heads are no longer in flight, then the region
    # notes the index it has caught up with. Each a release store: a restart that finds
    # used_idx behind the ring's knows the batch's heads may still be marked (the spec's
    # roll-forward), and one that finds it equal knows they are not.
    cdef uint32_t i
    for i in range(n):
        if chains[i].id < size:
            fp_store_release_u8(&t.desc[chains[i].id].inflight, 0)
    fp_store_release_u16(&t.region.used_idx, used_idx)


cdef void fp_split_unpop_burst(fp_split_device *vq, uint32_t n) noexcept nogil:
    # SAFETY: only the private index moves; each chain took one avail entry and a pop writes
    # nothing to the ring, so stepping back returns them. The caller keeps n within its last pop.
    vq.last_avail_idx = <uint16_t>(vq.last_avail_idx - n)
    vq.popped -= n


cdef bint fp_split_device_should_notify(fp_split_device *vq) noexcept nogil:
    cdef uint16_t old = vq.signalled_used
    cdef uint16_t new = vq.used_idx
    if old == new:
        return False
    vq.signalled_used = new
    # Our used idx store must be globally visible before we read the driver's wish.
    fp_full_fence()
    if vq.options & FP_VQ_EVENT_IDX:
        return fp_need_event(fp_load_relaxed_u16(vq.ring.used_event), new, old)
    return not (fp_load_relaxed_u16(&vq.ring.avail[0]) & FP_SPLIT_AVAIL_F_NO_INTERRUPT)


cdef int fp_split_device_set_kicks(fp_split_device *vq, bint enabled) noexcept nogil:
    if not enabled:
        vq.options |= FP_VQ_NOTIFY_OFF
        if not (vq.options & FP_VQ_EVENT_IDX):
            fp_store_relaxed_u16(&vq.ring.used[0], FP_SPLIT_USED_F_NO_NOTIFY)
        return 0
    vq.options &= ~FP_VQ_NOTIFY_OFF
    if vq.options & FP_VQ_EVENT_IDX:
        fp_store_relaxed_u16(vq.ring.avail_event, vq.last_avail_idx)
    else:
        fp_store_relaxed_u16(&vq.ring.used[0], 0)
    # A chain added before the driver saw our wish gets no kick: report it to the caller, and
    # the chains a restart left to pop again, for which no kick comes either.
    fp_full_fence()
    return (<uint16_t>(fp_load_acquire_u16(&vq.ring.avail[1]) - vq.last_avail_idx)
            + <int>(vq.inflight.resubmit_count - vq.inflight.resubmit_next))


cdef int fp_split_add_burst(fp_split_driver *vq, fp_driver_chain *chains, uint32_t n,
                            const fp_segment *segs) noexcept nogil:
    # SAFETY: descriptors come off this side's private free stack (indices < size, num_free of
    # them); an indirect table is written only after it was translated for its whole length.
    # Ring and free-list state lives in locals for the burst: stores to descriptors and avail
    # entries could otherwise alias it, and the compiler would reload it for every chain.
    cdef fp_split_desc *desc = vq.ring.desc
    cdef uint16_t *avail_ring = vq.ring.avail + 2
    cdef const uint16_t *free_stack = vq.free_stack
    cdef uint16_t *next = vq.next
    cdef uint16_t *ndesc = vq.ndesc
    cdef uint16_t avail_idx = vq.avail_idx
    cdef uint32_t num_free = vq.num_free
    cdef uint32_t i, k, need, added = 0
    cdef uint32_t mask = vq.ring.size - 1
    cdef uint16_t head, cur, following
    cdef fp_split_desc *table
    cdef fp_split_desc e
    cdef fp_driver_chain *c
    for i in range(n):
        c = &chains[i]
        need = 1 if c.indirect_table else c.nseg
        if c.nseg == 0 or need > num_free:
            break
        if c.indirect_table and not (vq.options & FP_VQ_INDIRECT):
            # §2.7.5.3.1: no indirect descriptors unless the feature was negotiated.
            fp_count_error(vq.errors, FP_E_INDIRECT)
            break
        head = free_stack[num_free - 1]
        if c.indirect_table:
            table = <fp_split_desc *>fp_gpa_to_hva(vq.mem, c.indirect_table,
                                                   c.nseg * sizeof(fp_split_desc), &vq.mem_hint)
            if table == NULL:
                fp_count_error(vq.errors, FP_E_INDIRECT)
                break
            for k in range(c.nseg):
                _write_desc(&table[k], &segs[c.first_seg + k], <uint16_t>(k + 1),
                            k + 1 < c.nseg)
            e.addr = c.indirect_table
            e.len = c.nseg * sizeof(fp_split_desc)
            e.flags = FP_SPLIT_DESC_F_INDIRECT
            e.next = 0
            desc[head] = e
        elif need == 1:
            _write_desc(&desc[head], &segs[c.first_seg], 0, False)
        else:
            # The chain takes the stack's top `need` entries, top first, each linked to the next.
            cur = head
            for k in range(1, need):
                following = free_stack[num_free - 1 - k]
                next[cur] = following
                _write_desc(&desc[cur], &segs[c.first_seg + k - 1], following, True)
                cur = following
            _write_desc(&desc[cur], &segs[c.first_seg + need - 1], 0, False)
        num_free -= need
        ndesc[head] = <uint16_t>need
        c.id = head
        avail_ring[avail_idx & mask] = head
        avail_idx += 1
        added += 1
    vq.num_free = num_free
    vq.avail_idx = avail_idx
    # Release: descriptors and ring entries are visible before the index that exposes them.
    fp_store_release_u16(&vq.ring.avail[1], avail_idx)
    return <int>added


cdef inline void _write_desc(fp_split_desc *p, const fp_segment *s, uint16_t next,
                             bint more) noexcept nogil:
    # A descriptor for segment s, linked to `next` if more follow, written as one record from
    # a local: the compiler stores it in one or two wide moves instead of one per field.
    cdef fp_split_desc d
    d.addr = s.addr
    d.len = s.len
    d.flags = ((FP_SPLIT_DESC_F_WRITE if s.flags & FP_SEG_WRITE else 0)
               | (FP_SPLIT_DESC_F_NEXT if more else 0))
    d.next = next if more else 0
    p[0] = d


cdef bint fp_split_driver_should_kick(fp_split_driver *vq) noexcept nogil:
    cdef uint16_t old = vq.kicked_avail_idx
    cdef uint16_t new = vq.avail_idx
    if old == new:
        return False
    vq.kicked_avail_idx = new
    fp_full_fence()
    if vq.options & FP_VQ_EVENT_IDX:
        return fp_need_event(fp_load_relaxed_u16(vq.ring.avail_event), new, old)
    return not (fp_load_relaxed_u16(&vq.ring.used[0]) & FP_SPLIT_USED_F_NO_NOTIFY)


cdef int fp_split_collect_burst(fp_split_driver *vq, fp_used_elem *out,
                                uint32_t max_n) noexcept nogil:
    # SAFETY: used slots are masked to the ring; an id from the device is checked against the queue
    # size and this side's record of what is in flight before it touches the free stack, which
    # then has room for the chain's descriptors (they are not on it).
    # Free-list state lives in locals for the burst: stores to `out` and the lists could
    # otherwise alias it, and the compiler would reload it for every element.
    cdef const fp_used_elem *used_ring = vq.ring.used_ring
    cdef uint16_t *free_stack = vq.free_stack
    cdef const uint16_t *next = vq.next
    cdef uint16_t *ndesc = vq.ndesc
    cdef uint16_t last_used = vq.last_used_idx
    cdef uint32_t num_free = vq.num_free
    cdef uint32_t n = 0, k, count
    cdef uint32_t size = vq.ring.size
    # Acquire, once per burst: every element below the index is visible after this.
    cdef uint16_t used_idx = fp_load_acquire_u16(&vq.ring.used[1])
    cdef uint64_t elem
    cdef uint32_t id
    cdef uint16_t cur
    while last_used != used_idx and n < max_n:
        # One read of the device-written element: the id checked is the id used.
        elem = fp_read_once_u64(&used_ring[last_used & (size - 1)])
        id = <uint32_t>elem
        last_used += 1
        if id >= size or ndesc[id] == 0:
            # The device returned something we never gave it: count it, free nothing.
            fp_count_error(vq.errors, FP_E_USED_ID)
            continue
        count = ndesc[id]
        if count == 1:
            free_stack[num_free] = <uint16_t>id
        else:
            # Onto the stack in chain order from the top down: the head is taken first again.
            cur = <uint16_t>id
            for k in range(count):
                free_stack[num_free + count - 1 - k] = cur
                cur = next[cur]
        num_free += count
        ndesc[id] = 0
        out[n].id = id
        out[n].len = <uint32_t>(elem >> 32)
        n += 1
    vq.last_used_idx = last_used
    vq.num_free = num_free
    if vq.options & FP_VQ_EVENT_IDX and not (vq.options & FP_VQ_NOTIFY_OFF):
        fp_store_relaxed_u16(vq.ring.used_event, last_used)
    return <int>n


cdef int fp_split_driver_set_calls(fp_split_driver *vq, bint enabled) noexcept nogil:
    if not enabled:
        vq.options |= FP_VQ_NOTIFY_OFF
        if not (vq.options & FP_VQ_EVENT_IDX):
            fp_store_relaxed_u16(&vq.ring.avail[0], FP_SPLIT_AVAIL_F_NO_INTERRUPT)
        return 0
    vq.options &= ~FP_VQ_NOTIFY_OFF
    if vq.options & FP_VQ_EVENT_IDX:
        fp_store_relaxed_u16(vq.ring.used_event, vq.last_used_idx)
    else:
        fp_store_relaxed_u16(&vq.ring.avail[0], 0)
    fp_full_fence()
    return <uint16_t>(fp_load_acquire_u16(&vq.ring.used[1]) - vq.last_used_idx)


cdef int _set_ring(fp_split_ring *ring, uint32_t size, uintptr_t desc, uintptr_t avail,
                   uintptr_t used) except -1:
    if size == 0 or size > 32768 or size & (size - 1):
        raise ValueError(f"split queue size must be a power of two up to 32768, not {size}")
    ring.size = size
    ring.desc = <fp_split_desc *>desc
    ring.avail = <uint16_t *>avail
    ring.used = <uint16_t *>used
    ring.used_ring = <fp_used_elem *>(used + 4)
    ring.used_event = ring.avail + 2 + size
    ring.avail_event = <uint16_t *>(used + 4 + sizeof(fp_used_elem) * size)
    return 0


cdef class SplitDevice:
    """Device-side state of one split queue whose areas are mapped at the given host addresses.

    The caller has checked that the areas lie inside `memory`'s regions and keeps them mapped
    (`owner` is held for that). Arrays passed in are raw bytes of the record layouts.
    """
    cdef fp_split_device q
    cdef MemoryTable memory
    cdef object iotlb_tables
    cdef object owner
    cdef object inflight_owner
    cdef const uint16_t[::1] resubmit

    def __init__(self, MemoryTable memory, uint32_t size, uintptr_t desc, uintptr_t avail,
                 uintptr_t used, uint16_t options, object owner=None):
        _set_ring(&self.q.ring, size, desc, avail, used)
        self.memory = memory
        self.owner = owner
        self.q.mem = &memory.mem
        fp_access_set(&self.q.access, &memory.mem, &memory.mem, False, -1)
        self.q.options = options & (FP_VQ_EVENT_IDX | FP_VQ_INDIRECT)

    @property
    def handle(self):
        """Address of the core state, for compiled callers of the fp_split_* functions."""
        return <uintptr_t>&self.q

    def use_iotlb(self, MemoryTable readable, MemoryTable writable, int miss_fd=-1):
        """Look buffers up by IOVA in an IOTLB from now on (VIRTIO_F_ACCESS_PLATFORM): the
        entries the device may read in `readable`, those it may write in `writable`. A chain
        with an IOVA in neither stops the pop before it; `take_miss()` says where, and a new
        miss signals the eventfd `miss_fd` (-1: none)."""
        self.iotlb_tables = (readable, writable)
        fp_access_set(&self.q.access, &readable.mem, &writable.mem, True, miss_fd)

    def take_miss(self):
        """(iova, access) a pop stopped at for want of a translation, or None."""
        return fp_take_miss(&self.q.access)

    @property
    def last_avail_idx(self):
        return self.q.last_avail_idx

    @last_avail_idx.setter
    def last_avail_idx(self, uint16_t value):
        self.q.last_avail_idx = value

    @property
    def used_idx(self):
        return self.q.used_idx

    @used_idx.setter
    def used_idx(self, uint16_t value):
        self.q.used_idx = value
        self.q.signalled_used = value

    @property
    def broken(self):
        return bool(self.q.options & FP_VQ_BROKEN)

    @property
    def popped(self):
        return self.q.popped

    @property
    def pushed(self):
        return self.q.pushed

    def errors(self):
        """{-code: count} for every error seen at least once."""
        return fp_error_counts(self.q.errors)

    def reset(self):
        """Forget all progress and errors (the device was reset), and the chains a restart
        left to pop again."""
        self.q.last_avail_idx = 0
        self.q.used_idx = 0
        self.q.signalled_used = 0
        self.q.options &= ~(FP_VQ_BROKEN | FP_VQ_NOTIFY_OFF)
        self.q.popped = 0
        self.q.pushed = 0
        memset(self.q.errors, 0, sizeof(self.q.errors))
        self.q.inflight.resubmit_count = 0
        self.q.inflight.resubmit_next = 0

    def track_inflight(self, uintptr_t region, uint32_t desc_num, uint64_t counter,
                       uint16_t last_batch_head, const uint16_t[::1] resubmit, object owner):
        """Record pops and pushes in the inflight queue region at address `region` (desc_num
        entries), which `owner` keeps mapped, going on from `counter`; the heads in
        `resubmit` are popped first."""
        # SAFETY: the hot path indexes the region with heads below the ring size, and walks
        # the chains of the heads to pop again: both hold only if these checks pass.
        if desc_num < self.q.ring.size:
            raise ValueError(f"an inflight region of {desc_num} entries cannot track a ring of "
                             f"{self.q.ring.size}")
        for head in resubmit:
            if head >= self.q.ring.size:
                raise ValueError(f"head {head} is outside a ring of {self.q.ring.size}")
        self.inflight_owner = owner
        self.resubmit = resubmit
        self.q.inflight.region = <fp_inflight_split_region *>region
        self.q.inflight.desc = <fp_inflight_split_desc *>(region + sizeof(fp_inflight_split_region))
        self.q.inflight.counter = counter
        self.q.inflight.last_batch_head = last_batch_head
        self.q.inflight.resubmit = &resubmit[0] if resubmit.shape[0] else NULL
        self.q.inflight.resubmit_count = resubmit.shape[0]
        self.q.inflight.resubmit_next = 0

    @property
    def inflight_counter(self):
        """The counter value the next recorded pop gets."""
        return self.q.inflight.counter

    @property
    def resubmit_pending(self):
        """How many chains a restart left in flight that pops have not returned yet."""
        return self.q.inflight.resubmit_count - self.q.inflight.resubmit_next

    @property
    def resubmit_heads(self):
        """Heads a restart left in flight that pops have not returned yet, oldest first."""
        return list(self.resubmit[self.q.inflight.resubmit_next:self.q.inflight.resubmit_count])

    def pop_burst(self, uint8_t[::1] chains, uint8_t[::1] segs):
        cdef uint32_t max_chains = chains.shape[0] // sizeof(fp_chain)
        cdef uint32_t max_segs = segs.shape[0] // sizeof(fp_segment)
        cdef int n
        if max_chains == 0:
            return 0
        with nogil:
            n = fp_split_pop_burst(&self.q, <fp_chain *>&chains[0], max_chains,
                                   <fp_segment *>&segs[0] if max_segs else NULL, max_segs)
        return n

    def push_burst(self, const uint8_t[::1] chains, uint32_t n):
        if <size_t>n * sizeof(fp_chain) > <size_t>chains.shape[0]:
            raise IndexError("more chains to push than the array holds")
        if n == 0:
            return 0
        cdef int pushed
        with nogil:
            pushed = fp_split_push_burst(&self.q, <const fp_chain *>&chains[0], n)
        return pushed

    def should_notify(self):
        return fp_split_device_should_notify(&self.q)

    def set_kicks(self, bint enabled):
        return fp_split_device_set_kicks(&self.q, enabled)


cdef class SplitDriver:
    """Driver-side state of one split queue; the driver owns and initialises the ring areas."""
    cdef fp_split_driver q
    cdef MemoryTable memory
    cdef object owner

    def __cinit__(self):
        self.q.free_stack = NULL
        self.q.next = NULL
        self.q.ndesc = NULL

    def __init__(self, MemoryTable memory, uint32_t size, uintptr_t desc, uintptr_t avail,
                 uintptr_t used, uint16_t options, object owner=None):
        cdef uint32_t i
        _set_ring(&self.q.ring, size, desc, avail, used)
        self.memory = memory
        self.owner = owner
        self.q.mem = &memory.mem
        self.q.options = options & (FP_VQ_EVENT_IDX | FP_VQ_INDIRECT)
        self.q.free_stack = <uint16_t *>malloc(size * sizeof(uint16_t))
        self.q.next = <uint16_t *>malloc(size * sizeof(uint16_t))
        self.q.ndesc = <uint16_t *>malloc(size * sizeof(uint16_t))
        if self.q.free_stack == NULL or self.q.next == NULL or self.q.ndesc == NULL:
            raise MemoryError()
        for i in range(size):
            # Descriptor 0 on top: a fresh ring hands out 0, 1, 2, ...
            self.q.free_stack[i] = <uint16_t>(size - 1 - i)
            self.q.next[i] = 0
            self.q.ndesc[i] = 0
        self.q.num_free = size

    def __dealloc__(self):
        free(self.q.free_stack)
        free(self.q.next)
        free(self.q.ndesc)

    @property
    def handle(self):
        return <uintptr_t>&self.q

    @property
    def num_free(self):
        return self.q.num_free

    @property
    def avail_idx(self):
        return self.q.avail_idx

    @property
    def last_used_idx(self):
        return self.q.last_used_idx

    def errors(self):
        return fp_error_counts(self.q.errors)

    def add_burst(self, uint8_t[::1] chains, uint32_t n, const uint8_t[::1] segs):
        check_driver_chains(chains, n, segs, self.q.ring.size)
        if n == 0:
            return 0
        cdef int added
        with nogil:
            added = fp_split_add_burst(&self.q, <fp_driver_chain *>&chains[0], n,
                                       <const fp_segment *>&segs[0])
        return added

    def should_kick(self):
        return fp_split_driver_should_kick(&self.q)

    def collect_burst(self, uint8_t[::1] out):
        cdef uint32_t max_n = out.shape[0] // sizeof(fp_used_elem)
        if max_n == 0:
            return 0
        cdef int n
        with nogil:
            n = fp_split_collect_burst(&self.q, <fp_used_elem *>&out[0], max_n)
        return n

    def set_calls(self, bint enabled):
        return fp_split_driver_set_calls(&self.q, enabled)
