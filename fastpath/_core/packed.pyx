"""Packed virtqueue bursts (virtio 1.2 §2.8): a device pops and pushes, a driver adds and collects.

Wrap counters start at 1 (§2.8.1). A slot is available when its AVAIL bit equals the driver's
wrap counter and its USED bit does not; used when both bits equal the device's wrap counter.
"""

from libc.stdint cimport UINT32_MAX, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

from fastpath._core.chain cimport (FP_E_BROKEN, FP_E_CHAIN_BYTES, FP_E_CHAIN_LOOP,
                                   FP_E_INDIRECT, FP_E_IOTLB_MISS, FP_E_TOO_MANY_SEGMENTS,
                                   FP_E_USED_ID, FP_E_WRITE_ORDER, FP_SEG_WRITE, FP_VQ_BROKEN,
                                   FP_VQ_EVENT_DESC, FP_VQ_EVENT_IDX, FP_VQ_INDIRECT,
                                   FP_VQ_NOTIFY_OFF, fp_access_set, fp_append_buffer,
                                   fp_chain_clear, fp_count_error, fp_error_counts, fp_full_fence,
                                   fp_load_acquire_u16, fp_load_acquire_u64, fp_load_relaxed_u16,
                                   fp_max_indirect,
                                   fp_need_event, fp_prefetch, fp_read_once_u64, fp_read_table,
                                   fp_store_single_segment_chain, fp_take_miss, fp_window,
                                   fp_window_holds, fp_windows_load,
                                   fp_store_release_u8, fp_store_release_u16,
                                   fp_store_release_u64, fp_store_relaxed_u16)
from fastpath._core.chain import check_driver_chains
from fastpath._core.memory cimport MemoryTable, fp_gpa_to_hva

DESC_SIZE = sizeof(fp_packed_desc)
INFLIGHT_HEADER_SIZE = sizeof(fp_inflight_packed_region)
INFLIGHT_DESC_SIZE = sizeof(fp_inflight_packed_desc)


def inflight_offsets():
    """{record: {field: byte offset}} of the inflight layouts as the compiler laid them out,
    for the numpy dtypes that mirror them."""
    cdef fp_inflight_packed_region r
    cdef fp_inflight_packed_desc d
    base_r, base_d = <size_t>&r, <size_t>&d
    return {
        "region": {"features": <size_t>&r.features - base_r,
                   "version": <size_t>&r.version - base_r,
                   "desc_num": <size_t>&r.desc_num - base_r,
                   "free_head": <size_t>&r.free_head - base_r,
                   "old_free_head": <size_t>&r.old_free_head - base_r,
                   "used_idx": <size_t>&r.used_idx - base_r,
                   "old_used_idx": <size_t>&r.old_used_idx - base_r,
                   "used_wrap_counter": <size_t>&r.used_wrap_counter - base_r,
                   "old_used_wrap_counter": <size_t>&r.old_used_wrap_counter - base_r},
        "desc": {"inflight": <size_t>&d.inflight - base_d,
                 "next": <size_t>&d.next - base_d,
                 "last": <size_t>&d.last - base_d,
                 "num": <size_t>&d.num - base_d,
                 "counter": <size_t>&d.counter - base_d,
                 "id": <size_t>&d.id - base_d,
                 "flags": <size_t>&d.flags - base_d,
                 "len": <size_t>&d.len - base_d,
                 "addr": <size_t>&d.addr - base_d},
    }


# §2.8.1: available means AVAIL == the wrap counter and USED != it; used means both equal it.
# Each is one compare of the two bits against the pattern the wrap counter gives.
cdef inline bint _is_avail(uint16_t flags, uint8_t wrap) noexcept nogil:
    return (flags & (FP_PACKED_DESC_F_AVAIL | FP_PACKED_DESC_F_USED)) == (
        FP_PACKED_DESC_F_AVAIL if wrap else FP_PACKED_DESC_F_USED)


cdef inline bint _is_used(uint16_t flags, uint8_t wrap) noexcept nogil:
    return (flags & (FP_PACKED_DESC_F_AVAIL | FP_PACKED_DESC_F_USED)) == (
        (FP_PACKED_DESC_F_AVAIL | FP_PACKED_DESC_F_USED) if wrap else 0)


cdef inline void _advance(uint16_t *pos, uint8_t *wrap, uint32_t by, uint32_t size) noexcept nogil:
    cdef uint32_t p = pos[0] + by
    if p >= size:
        p -= size
        wrap[0] ^= 1
    pos[0] = <uint16_t>p


cdef inline void _read_desc(const fp_packed_desc *p, fp_packed_desc *d) noexcept nogil:
    # One read of each word of a guest-written slot (fp_read_once_*): what was validated is
    # what gets used. For a chain's head, the caller keeps the flags of its acquire load.
    cdef uint64_t word = fp_read_once_u64(<const uint8_t *>p + 8)
    d.addr = fp_read_once_u64(p)
    d.len = <uint32_t>word
    d.id = <uint16_t>(word >> 32)
    d.flags = <uint16_t>(word >> 48)


cdef struct _walk:
    # What a chain walk has gathered so far.
    uint32_t nseg
    uint64_t readable
    uint64_t writable
    bint seen_write


cdef int _add_segment(fp_packed_device *vq, const fp_packed_desc *d, fp_chain *c,
                      fp_segment *segs, uint32_t max_segs, _walk *w) noexcept nogil:
    cdef int rc
    if d.flags & FP_PACKED_DESC_F_WRITE:
        w.seen_write = True
        w.writable += d.len
    elif w.seen_write:
        # §2.8.3: as in split rings, device-writable descriptors follow the readable ones.
        return FP_E_WRITE_ORDER
    else:
        w.readable += d.len
    rc = fp_append_buffer(&vq.access, &vq.mem_hint, d.addr, d.len,
                          FP_SEG_WRITE if d.flags & FP_PACKED_DESC_F_WRITE else 0,
                          segs, &w.nseg, max_segs)
    if rc == 0 and not w.seen_write:
        c.nreadable = <uint16_t>w.nseg
    return rc


cdef int _read_indirect(fp_packed_device *vq, const fp_packed_desc *d, fp_chain *c,
                        fp_segment *segs, uint32_t max_segs, _walk *w) noexcept nogil:
    # §2.8.19: the table's entries are the buffer, in order; no NEXT, no nesting.
    cdef const fp_packed_desc *table
    cdef fp_packed_desc e
    cdef uint32_t k, count
    cdef int rc
    if (not (vq.options & FP_VQ_INDIRECT) or d.flags & FP_PACKED_DESC_F_NEXT or d.len == 0
            or d.len % sizeof(fp_packed_desc) != 0
            or d.len // sizeof(fp_packed_desc) > fp_max_indirect(vq.ring.size)):
        return FP_E_INDIRECT
    table = <const fp_packed_desc *>fp_read_table(&vq.access, &vq.mem_hint, d.addr, d.len,
                                                  FP_E_INDIRECT, &rc)
    if table == NULL:
        return rc
    count = d.len // sizeof(fp_packed_desc)
    for k in range(count):
        _read_desc(&table[k], &e)
        if e.flags & FP_PACKED_DESC_F_INDIRECT:
            return FP_E_INDIRECT
        rc = _add_segment(vq, &e, c, segs, max_segs, w)
        if rc:
            return rc
    return 0


cdef inline void _end_pop(fp_packed_device *vq, uint16_t pos, uint8_t wrap,
                          uint32_t popped) noexcept nogil:
    vq.next_avail = pos
    vq.avail_wrap = wrap
    vq.popped += popped


cdef inline int _walk_desc(fp_packed_device *vq, const fp_packed_desc *d, uint32_t k,
                           fp_chain *c, fp_segment *segs, uint32_t max_segs, _walk *w,
                           int rc) noexcept nogil:
    # The chain's k-th descriptor (from 1) into c and segs; returns the chain's error so far.
    # After an error the walk goes on, reading nothing, so that every slot is consumed.
    if rc:
        return rc
    if d.flags & FP_PACKED_DESC_F_INDIRECT:
        return FP_E_INDIRECT if k > 1 else _read_indirect(vq, d, c, segs, max_segs, w)
    return _add_segment(vq, d, c, segs, max_segs, w)


cdef inline uint32_t _end_chain(fp_packed_device *vq, fp_chain *c, int rc, const _walk *w,
                                uint16_t id, uint32_t ndesc) noexcept nogil:
    # Fills in the chain's record once walked; returns the segments it took.
    if rc == 0 and (w.readable > UINT32_MAX or w.writable > UINT32_MAX or w.nseg > 0xFFFF):
        rc = FP_E_CHAIN_BYTES
    # §2.8.6: the buffer id is in the chain's last descriptor.
    c.id = id
    c.ndesc = <uint16_t>ndesc
    if rc:
        c.error = <short>rc
        c.nreadable = 0
        fp_count_error(vq.errors, rc)
        return 0
    c.nseg = <uint16_t>w.nseg
    c.readable_len = <uint32_t>w.readable
    c.writable_len = <uint32_t>w.writable
    return w.nseg


cdef inline void _start_walk(_walk *w) noexcept nogil:
    w.nseg = 0
    w.readable = 0
    w.writable = 0
    w.seen_write = False


cdef int _pop_resubmitted(fp_packed_device *vq, fp_chain *chains, uint32_t max_chains,
                          fp_segment *segs, uint32_t max_segs, uint32_t *used_segs) noexcept nogil:
    # The chains a restart left in flight, from the copies their entries keep (their ring slots
    # may hold used descriptors by now); returns how many, or -1 - n when the next one's pieces
    # do not fit after n or it waits for an IOTLB translation: it waits for a later burst, and
    # nothing else is popped in this one.
    cdef fp_packed_inflight *t = &vq.inflight
    cdef uint32_t i = 0, k, ndesc
    cdef uint16_t head, e
    cdef fp_packed_desc d
    cdef fp_chain *c
    cdef _walk w
    cdef int rc
    while i < max_chains and t.resubmit_next < t.resubmit_count:
        head = t.resubmit[t.resubmit_next]
        ndesc = t.num[head]
        c = &chains[i]
        fp_chain_clear(c, 0, used_segs[0])
        _start_walk(&w)
        rc = 0
        e = head
        for k in range(ndesc):
            d = t.saved[e]
            rc = _walk_desc(vq, &d, k + 1, c, segs + used_segs[0], max_segs - used_segs[0], &w,
                            rc)
            e = t.next[e]
        if rc == FP_E_IOTLB_MISS or (rc == FP_E_TOO_MANY_SEGMENTS and i > 0):
            return -1 - <int>i
        used_segs[0] += _end_chain(vq, c, rc, &w, d.id, ndesc)
        t.head_of[d.id] = head + 1
        t.resubmit_next += 1
        i += 1
    return <int>i


cdef void _record_pop(fp_packed_device *vq, uint16_t pos, uint32_t ndesc,
                      uint16_t id) noexcept nogil:
    # "When receiving available buffers": each of the chain's descriptors takes the next free
    # entry and a copy of itself, the first entry heads the chain (counter, inflight, its
    # length and last entry), and old_free_head catches up with free_head last: a restart
    # before that puts the entries back on the free list. Entries come off this side's free
    # list, below desc_num; ring slots are stepped within the ring.
    cdef fp_packed_inflight *t = &vq.inflight
    cdef uint16_t head = t.free_head, e = t.free_head, last = t.free_head
    cdef uint32_t _k
    cdef fp_packed_desc d
    cdef fp_inflight_packed_desc *entry
    if ndesc > t.free_count:
        # Only a driver making more slots available than the ring has gets here.
        t.untracked += 1
        return
    t.desc[head].num = <uint16_t>ndesc
    t.desc[head].counter = t.counter
    t.counter += 1
    t.desc[head].inflight = 1
    for _k in range(ndesc):
        _read_desc(&vq.ring.desc[pos], &d)
        entry = &t.desc[e]
        entry.id = d.id
        entry.flags = d.flags
        entry.len = d.len
        entry.addr = d.addr
        last = e
        e = t.next[e]
        pos = pos + 1 if pos + 1u < vq.ring.size else 0
    t.desc[head].last = last
    t.last[head] = last
    t.num[head] = <uint16_t>ndesc
    t.head_of[id] = head + 1
    t.free_head = e
    t.free_count -= ndesc
    t.region.free_head = e
    fp_store_release_u16(&t.region.old_free_head, e)


cdef uint32_t _pop_singles(const fp_packed_desc *ring, uint32_t size, uint16_t *pos,
                           uint8_t *wrap, uint32_t count, const fp_window *windows,
                           fp_chain *chains, fp_segment *segs, uint32_t first_seg) noexcept nogil:
    # Pops up to `count` available chains from slot *pos on while each is one descriptor
    # inside the window for the first one's access, into chains[0:] and segs[first_seg:],
    # moving *pos and *wrap past them; returns how many. The first chain it cannot take it
    # leaves in the ring for the general path, having written nothing for it. A queue's
    # one-descriptor buffers are all of one access (a transmitq's readable, a receiveq's
    # writable), so the loop keeps one window in registers.
    # SAFETY: slot positions stay below the ring size; the caller has room for `count` chains
    # and segments. The first slot's flags only pick the window: each slot's flags are read
    # once, with acquire, and what is checked is what is used.
    cdef uint16_t p = pos[0]
    cdef uint8_t wr = wrap[0]
    cdef uint32_t k
    cdef uint16_t access, want
    cdef uint64_t word, addr, hva
    cdef uint32_t length
    cdef fp_window w
    if count == 0:
        return 0
    access = fp_load_relaxed_u16(&ring[p].flags) & FP_PACKED_DESC_F_WRITE
    w = windows[1 if access else 0]
    # The flags of an available one-slot buffer of that access, as _is_avail sees them: one
    # compare tells both, and the pattern flips with the wrap counter.
    want = access | (FP_PACKED_DESC_F_AVAIL if wr else FP_PACKED_DESC_F_USED)
    for k in range(count):
        # Acquire: the driver writes the slot's address before its flags, which come in one
        # word with the len and id they cover.
        word = fp_load_acquire_u64(<const uint8_t *>&ring[p] + 8)
        if (<uint16_t>(word >> 48) & (FP_PACKED_DESC_F_AVAIL | FP_PACKED_DESC_F_USED
                                      | FP_PACKED_DESC_F_NEXT | FP_PACKED_DESC_F_INDIRECT
                                      | FP_PACKED_DESC_F_WRITE)) != want:
            break
        addr = fp_read_once_u64(&ring[p].addr)
        length = <uint32_t>word
        if not fp_window_holds(&w, addr, length):
            break
        hva = w.host + (addr - w.base)
        fp_store_single_segment_chain(hva, length, access, <uint16_t>(word >> 32),
                                      &segs[first_seg + k], first_seg + k, &chains[k])
        # The device reads the buffer's first bytes next (a header): start the load now.
        fp_prefetch(<const void *>(<uintptr_t>hva))
        p += 1
        if p == size:
            p = 0
            wr ^= 1
            want ^= FP_PACKED_DESC_F_AVAIL | FP_PACKED_DESC_F_USED
    else:
        k = count
    pos[0] = p
    wrap[0] = wr
    return k


cdef int fp_packed_pop_burst(fp_packed_device *vq, fp_chain *chains, uint32_t max_chains,
                             fp_segment *segs, uint32_t max_segs) noexcept nogil:
    # SAFETY: slot positions stay below the ring size (_advance); indirect tables are translated for
    # their whole length and capped; every buffer is translated whole before a segment points at
    # it; a chain longer than the ring stops the queue instead of walking on. An inflight
    # record's entries and links were checked against desc_num when it was attached.
    # Ring state lives in locals for the burst: stores to chains and segments could otherwise
    # alias it, and the compiler would reload it for every chain.
    cdef uint16_t pos = vq.next_avail
    cdef uint8_t wrap = vq.avail_wrap
    cdef uint32_t size = vq.ring.size
    cdef const fp_packed_desc *ring = vq.ring.desc
    cdef uint32_t i = 0, used_segs = 0, ndesc, took, _k
    cdef uint16_t walk_pos, flags
    cdef uint8_t walk_wrap
    cdef bint tracked = vq.inflight.region != NULL
    cdef fp_window windows[2]
    cdef fp_packed_desc d
    cdef fp_chain *c
    cdef _walk w
    cdef int rc
    if vq.options & FP_VQ_BROKEN:
        return FP_E_BROKEN
    if (vq.inflight.resubmit_next == vq.inflight.resubmit_count
            and not _is_avail(fp_load_acquire_u16(&ring[pos].flags), wrap)):
        # An empty ring, which a back-end polling faster than its driver adds finds most
        # times: nothing is read but the next slot's flags.
        return 0
    fp_windows_load(windows, &vq.access, vq.mem_hint)
    if vq.inflight.resubmit_next < vq.inflight.resubmit_count:
        rc = _pop_resubmitted(vq, chains, max_chains, segs, max_segs, &used_segs)
        fp_windows_load(windows, &vq.access, vq.mem_hint)
        if rc < 0:
            _end_pop(vq, pos, wrap, <uint32_t>(-1 - rc))
            return -1 - rc
        i = <uint32_t>rc
    while i < max_chains:
        # The common chains in a loop of their own, a few values live in registers; the first
        # one it leaves (a longer chain, one outside the window) is taken below.
        walk_pos = pos
        walk_wrap = wrap
        took = _pop_singles(ring, size, &pos, &wrap,
                            min(max_chains - i, max_segs - used_segs), windows, &chains[i],
                            segs, used_segs)
        if tracked:
            for _k in range(took):
                _record_pop(vq, walk_pos, 1, <uint16_t>chains[i + _k].id)
                _advance(&walk_pos, &walk_wrap, 1, size)
        used_segs += took
        i += took
        if i == max_chains:
            break
        # Acquire: the driver writes a chain's other slots before its head's flags. A packed
        # ring has no index to load once per burst: each head's flags are its own index.
        flags = fp_load_acquire_u16(&ring[pos].flags)
        if not _is_avail(flags, wrap):
            break
        c = &chains[i]
        _read_desc(&ring[pos], &d)
        fp_chain_clear(c, d.id, used_segs)
        _start_walk(&w)
        ndesc = 0
        rc = 0
        walk_pos = pos
        walk_wrap = wrap
        while True:
            _read_desc(&ring[walk_pos], &d)
            if ndesc == 0:
                d.flags = flags
            ndesc += 1
            if ndesc > size:
                # No end in sight: the ring cannot be parsed any further.
                vq.options |= FP_VQ_BROKEN
                fp_count_error(vq.errors, FP_E_CHAIN_LOOP)
                _end_pop(vq, pos, wrap, i)
                return FP_E_CHAIN_LOOP if i == 0 else <int>i
            rc = _walk_desc(vq, &d, ndesc, c, segs + used_segs, max_segs - used_segs, &w, rc)
            _advance(&walk_pos, &walk_wrap, 1, size)
            if not (d.flags & FP_PACKED_DESC_F_NEXT):
                break
        if rc == FP_E_IOTLB_MISS or (rc == FP_E_TOO_MANY_SEGMENTS and i > 0):
            # Left in the ring: for the next burst, or until the IOTLB has the translation.
            break
        used_segs += _end_chain(vq, c, rc, &w, d.id, ndesc)
        # The walk may have moved the hint to another region: the next chains likely sit there.
        fp_windows_load(windows, &vq.access, vq.mem_hint)
        if tracked:
            _record_pop(vq, pos, ndesc, d.id)
        pos = walk_pos
        wrap = walk_wrap
        i += 1
    _end_pop(vq, pos, wrap, i)
    return <int>i


cdef void fp_packed_unpop_burst(fp_packed_device *vq, const fp_chain *chains,
                                uint32_t n) noexcept nogil:
    # SAFETY: only the private position moves. The chains' descriptors are still marked
    # available (a pop writes nothing to the ring), so stepping back over their slots returns
    # them; the wrap counter flips when the step crosses the start of the ring.
    cdef uint32_t i, slots = 0
    for i in range(n):
        slots += chains[i].ndesc
    if slots > vq.next_avail:
        vq.next_avail = <uint16_t>(vq.next_avail + vq.ring.size - slots)
        vq.avail_wrap ^= 1
    else:
        vq.next_avail = <uint16_t>(vq.next_avail - slots)
    vq.popped -= n


cdef inline int _record_use(fp_packed_inflight *t, uint16_t id) noexcept nogil:
    # "When supplying used buffers": the chain's entries go back on the free list, its head
    # first; returns the head, or -1 for a buffer id with no chain recorded (popped when no
    # free entries were left).
    cdef uint16_t head, last
    if t.head_of[id] == 0:
        return -1
    head = t.head_of[id] - 1
    t.head_of[id] = 0
    last = t.last[head]
    t.next[last] = t.free_head
    t.desc[last].next = t.free_head
    t.free_head = head
    t.free_count += t.num[head]
    t.region.free_head = head
    return head


cdef inline void _record_used(fp_packed_inflight *t, int head, uint16_t pos,
                              uint8_t wrap) noexcept nogil:
    # Once the driver can see the used descriptor: its head is no longer in flight, then the
    # old_* values catch up, which ends the step (a restart before that finds old_used_idx
    # behind and looks at the ring to tell whether the descriptor reached the driver).
    if head >= 0:
        fp_store_release_u8(&t.desc[head].inflight, 0)
    fp_store_release_u16(&t.region.old_free_head, t.free_head)
    fp_store_release_u16(&t.region.old_used_idx, pos)
    fp_store_release_u8(&t.region.old_used_wrap_counter, wrap)


cdef int fp_packed_push_burst(fp_packed_device *vq, const fp_chain *chains,
                              uint32_t n) noexcept nogil:
    # SAFETY: slot positions stay below the ring size; a record's ndesc is checked against it.
    # An inflight record's heads come from this side's own map of buffer ids, each below
    # desc_num, and a push takes each at most once (the map forgets it).
    cdef uint16_t pos = vq.next_used
    cdef uint8_t wrap = vq.used_wrap
    cdef uint16_t next_pos
    cdef uint8_t next_wrap
    cdef uint32_t size = vq.ring.size
    cdef fp_packed_desc *ring = vq.ring.desc
    cdef fp_packed_inflight *t = &vq.inflight
    cdef bint tracked = t.region != NULL
    cdef uint32_t i, pushed = 0, length, slots = 0
    cdef uint16_t flags, ndesc
    cdef int head = -1
    for i in range(n):
        ndesc = chains[i].ndesc
        if ndesc == 0 or ndesc > size:
            fp_count_error(vq.errors, FP_E_USED_ID)
            continue
        length = (chains[i].written if chains[i].written < chains[i].writable_len
                  else chains[i].writable_len)
        flags = (FP_PACKED_DESC_F_AVAIL | FP_PACKED_DESC_F_USED) if wrap else 0
        if length:
            flags |= FP_PACKED_DESC_F_WRITE
        next_pos = pos
        next_wrap = wrap
        _advance(&next_pos, &next_wrap, ndesc, size)
        if tracked:
            # One used descriptor per step of the record, each whole before the next starts:
            # after a roll-back, a later slot already written would look used to the driver.
            head = _record_use(t, <uint16_t>chains[i].id)
            t.region.used_idx = next_pos
            t.region.used_wrap_counter = next_wrap
        # Release: the record's step so far is visible before the flags that hand the slot
        # back, which go in one word with the id and len they cover.
        fp_store_release_u64(<uint8_t *>&ring[pos] + 8,
                             length | <uint64_t>(<uint16_t>chains[i].id) << 32
                             | <uint64_t>flags << 48)
        if tracked:
            _record_used(t, head, next_pos, next_wrap)
        pos = next_pos
        wrap = next_wrap
        slots += ndesc
        pushed += 1
    vq.next_used = pos
    vq.used_wrap = wrap
    # Saturates: a lap or more is all the decision needs to know.
    vq.used_since_notify = min(vq.used_since_notify + slots, size)
    vq.pushed += pushed
    return <int>pushed


cdef inline bint _event_wanted(const fp_packed_event *event, uint16_t new, uint32_t moved,
                               uint8_t wrap, uint32_t size, bint event_idx) noexcept nogil:
    # §2.8.10: ENABLE always, DISABLE never, DESC when the ring passes the given slot.
    cdef uint16_t flags = fp_load_relaxed_u16(&event.flags)
    cdef uint16_t off_wrap, off
    if flags == FP_PACKED_EVENT_DISABLE:
        return False
    if flags != FP_PACKED_EVENT_DESC or not event_idx:
        # ENABLE, or a value we do not know: a spurious notification costs a wake-up, a
        # missed one hangs the other side.
        return True
    if moved >= size:
        # A whole lap or more since the last decision: every slot was passed.
        return True
    off_wrap = fp_load_relaxed_u16(&event.off_wrap)
    off = off_wrap & ~FP_PACKED_WRAP_BIT
    if (off_wrap >> 15) != wrap:
        off -= size
    return fp_need_event(off, new, <uint16_t>(new - moved))


cdef bint fp_packed_device_should_notify(fp_packed_device *vq) noexcept nogil:
    cdef uint32_t moved = vq.used_since_notify
    if moved == 0:
        return False
    vq.used_since_notify = 0
    fp_full_fence()
    return _event_wanted(vq.ring.driver_event, vq.next_used, moved, vq.used_wrap, vq.ring.size,
                         vq.options & FP_VQ_EVENT_IDX)


cdef int fp_packed_device_set_kicks(fp_packed_device *vq, bint enabled) noexcept nogil:
    fp_store_relaxed_u16(&vq.ring.device_event.flags,
                         FP_PACKED_EVENT_ENABLE if enabled else FP_PACKED_EVENT_DISABLE)
    if not enabled:
        return 0
    # Chains a restart left to pop again get no kick either.
    if vq.inflight.resubmit_next < vq.inflight.resubmit_count:
        return 1
    fp_full_fence()
    return _is_avail(fp_load_acquire_u16(&vq.ring.desc[vq.next_avail].flags), vq.avail_wrap)


cdef int fp_packed_add_burst(fp_packed_driver *vq, fp_driver_chain *chains, uint32_t n,
                             const fp_segment *segs) noexcept nogil:
    # SAFETY: slot positions stay below the ring size and ids come off this side's free list;
    # an indirect table is written only after it was translated for its whole length.
    # Ring state lives in locals for the burst: stores to descriptors could otherwise alias it.
    cdef uint16_t pos = vq.next_avail
    cdef uint8_t wrap = vq.avail_wrap
    cdef uint32_t num_free = vq.num_free
    cdef uint32_t num_free_ids = vq.num_free_ids
    cdef uint32_t size = vq.ring.size
    cdef fp_packed_desc *ring = vq.ring.desc
    cdef uint16_t *ndesc_of = vq.ndesc
    cdef const uint16_t *free_ids = vq.free_ids
    cdef uint32_t i, k, need, nseg, added = 0
    cdef uint64_t table_gpa
    cdef uint16_t id, head, head_flags, f
    cdef fp_packed_desc *table = NULL
    cdef const fp_segment *s
    for i in range(n):
        table_gpa = chains[i].indirect_table
        nseg = chains[i].nseg
        s = &segs[chains[i].first_seg]
        need = 1 if table_gpa else nseg
        if nseg == 0 or need > num_free:
            break
        if table_gpa and not (vq.options & FP_VQ_INDIRECT):
            # No indirect descriptors unless the feature was negotiated.
            fp_count_error(vq.errors, FP_E_INDIRECT)
            break
        if table_gpa:
            table = <fp_packed_desc *>fp_gpa_to_hva(vq.mem, table_gpa,
                                                    nseg * sizeof(fp_packed_desc), &vq.mem_hint)
            if table == NULL:
                fp_count_error(vq.errors, FP_E_INDIRECT)
                break
            for k in range(nseg):
                table[k].addr = s[k].addr
                table[k].len = s[k].len
                table[k].id = 0
                table[k].flags = FP_PACKED_DESC_F_WRITE if s[k].flags & FP_SEG_WRITE else 0
        # Every chain takes a slot: with a slot free, fewer than `size` ids are in flight.
        num_free_ids -= 1
        id = free_ids[num_free_ids]
        if need == 1 and not table_gpa:
            # The common one-slot buffer, without the loop below and its per-slot choices.
            ring[pos].addr = s.addr
            # Release: the flags go last and make the buffer available (§2.8.21), in one word
            # with the len and id they cover.
            f = ((FP_PACKED_DESC_F_WRITE if s.flags & FP_SEG_WRITE else 0)
                 | (FP_PACKED_DESC_F_AVAIL if wrap else FP_PACKED_DESC_F_USED))
            fp_store_release_u64(<uint8_t *>&ring[pos] + 8,
                                 s.len | <uint64_t>id << 32 | <uint64_t>f << 48)
            _advance(&pos, &wrap, 1, size)
            ndesc_of[id] = 1
            num_free -= 1
            chains[i].id = id
            added += 1
            continue
        head = pos
        head_flags = 0
        for k in range(need):
            if table_gpa:
                ring[pos].addr = table_gpa
                ring[pos].len = nseg * sizeof(fp_packed_desc)
                f = FP_PACKED_DESC_F_INDIRECT
            else:
                ring[pos].addr = s[k].addr
                ring[pos].len = s[k].len
                f = ((FP_PACKED_DESC_F_WRITE if s[k].flags & FP_SEG_WRITE else 0)
                     | (FP_PACKED_DESC_F_NEXT if k + 1 < need else 0))
            f |= FP_PACKED_DESC_F_AVAIL if wrap else FP_PACKED_DESC_F_USED
            ring[pos].id = id
            if k == 0:
                head_flags = f
            else:
                ring[pos].flags = f
            _advance(&pos, &wrap, 1, size)
        # Release: the head's flags go last and make the whole chain available (§2.8.21).
        fp_store_release_u16(&ring[head].flags, head_flags)
        ndesc_of[id] = <uint16_t>need
        num_free -= need
        chains[i].id = id
        added += 1
    vq.added_since_kick = min(vq.added_since_kick + (vq.num_free - num_free), size)
    vq.num_free_ids = num_free_ids
    vq.next_avail = pos
    vq.avail_wrap = wrap
    vq.num_free = num_free
    return <int>added


cdef bint fp_packed_driver_should_kick(fp_packed_driver *vq) noexcept nogil:
    cdef uint32_t moved = vq.added_since_kick
    if moved == 0:
        return False
    vq.added_since_kick = 0
    fp_full_fence()
    return _event_wanted(vq.ring.device_event, vq.next_avail, moved, vq.avail_wrap,
                         vq.ring.size, vq.options & FP_VQ_EVENT_IDX)


cdef int fp_packed_collect_burst(fp_packed_driver *vq, fp_used_elem *out,
                                 uint32_t max_n) noexcept nogil:
    # SAFETY: slot positions stay below the ring size; an id from the device is checked against the
    # queue size and this side's in-flight record before it is used as an index.
    # State lives in locals for the burst: stores to `out` and the lists (fields of the same
    # types) could otherwise alias it, and the compiler would reload it for every element.
    cdef uint16_t pos = vq.last_used
    cdef uint8_t wrap = vq.used_wrap
    cdef uint32_t num_free = vq.num_free
    cdef uint32_t num_free_ids = vq.num_free_ids
    cdef uint32_t size = vq.ring.size
    cdef const fp_packed_desc *ring = vq.ring.desc
    cdef uint16_t *ndesc_of = vq.ndesc
    cdef uint16_t *free_ids = vq.free_ids
    cdef uint32_t n = 0
    cdef uint16_t flags, id, ndesc
    cdef uint32_t length
    cdef uint64_t word
    while n < max_n:
        # Acquire, with the id and len the flags cover: one read of the device-written word,
        # so that the id checked is the id used.
        word = fp_load_acquire_u64(<const uint8_t *>&ring[pos] + 8)
        flags = <uint16_t>(word >> 48)
        if not _is_used(flags, wrap):
            break
        id = <uint16_t>(word >> 32)
        # §2.8.4: a used descriptor's len means something only with WRITE set.
        length = <uint32_t>word if flags & FP_PACKED_DESC_F_WRITE else 0
        ndesc = ndesc_of[id] if id < size else 0
        if ndesc == 0:
            # The device returned something we never gave it: count it, skip its slot.
            fp_count_error(vq.errors, FP_E_USED_ID)
            _advance(&pos, &wrap, 1, size)
            continue
        if ndesc == 1:
            # The common one-slot chain as a branch, not an add of the loaded count: the next
            # slot's position would otherwise wait for this slot's id and count loads, a chain
            # of dependent loads from one element to the next; the branch is predicted.
            _advance(&pos, &wrap, 1, size)
        else:
            _advance(&pos, &wrap, ndesc, size)
        num_free += ndesc
        ndesc_of[id] = 0
        # The id was in flight (ndesc), so it is not on the stack, which has room for it.
        free_ids[num_free_ids] = id
        num_free_ids += 1
        out[n].id = id
        out[n].len = length
        n += 1
    vq.last_used = pos
    vq.used_wrap = wrap
    vq.num_free = num_free
    vq.num_free_ids = num_free_ids
    if n and vq.options & FP_VQ_EVENT_DESC:
        # §2.8.10: a driver waiting for a given slot asks for the next one once it has
        # collected, as the split driver moves used_event on.
        fp_store_release_u16(&vq.ring.driver_event.off_wrap,
                             pos | (FP_PACKED_WRAP_BIT if wrap else 0))
    return <int>n


cdef int fp_packed_driver_set_calls(fp_packed_driver *vq, bint enabled) noexcept nogil:
    if not enabled:
        vq.options &= ~FP_VQ_EVENT_DESC
        fp_store_relaxed_u16(&vq.ring.driver_event.flags, FP_PACKED_EVENT_DISABLE)
        return 0
    if vq.options & FP_VQ_EVENT_IDX:
        vq.options |= FP_VQ_EVENT_DESC
        fp_store_relaxed_u16(&vq.ring.driver_event.off_wrap,
                             vq.last_used | (FP_PACKED_WRAP_BIT if vq.used_wrap else 0))
        fp_store_release_u16(&vq.ring.driver_event.flags, FP_PACKED_EVENT_DESC)
    else:
        fp_store_relaxed_u16(&vq.ring.driver_event.flags, FP_PACKED_EVENT_ENABLE)
    fp_full_fence()
    return _is_used(fp_load_acquire_u16(&vq.ring.desc[vq.last_used].flags), vq.used_wrap)


cdef int _set_ring(fp_packed_ring *ring, uint32_t size, uintptr_t desc, uintptr_t driver_event,
                   uintptr_t device_event) except -1:
    if size == 0 or size > 32768:
        raise ValueError(f"packed queue size must be 1 to 32768, not {size}")
    ring.size = size
    ring.desc = <fp_packed_desc *>desc
    ring.driver_event = <fp_packed_event *>driver_event
    ring.device_event = <fp_packed_event *>device_event
    return 0


cdef class PackedDevice:
    """Device-side state of one packed queue mapped at the given host addresses.

    The caller has checked that the areas lie inside `memory`'s regions and keeps them mapped.
    """
    cdef fp_packed_device q
    cdef MemoryTable memory
    cdef object iotlb_tables
    cdef object owner
    cdef object inflight_owner
    cdef uint16_t[::1] next, last, num
    cdef const uint8_t[::1] saved
    cdef const uint16_t[::1] resubmit

    def __cinit__(self):
        self.q.inflight.head_of = NULL

    def __init__(self, MemoryTable memory, uint32_t size, uintptr_t desc,
                 uintptr_t driver_event, uintptr_t device_event, uint16_t options,
                 object owner=None):
        _set_ring(&self.q.ring, size, desc, driver_event, device_event)
        self.memory = memory
        self.owner = owner
        self.q.mem = &memory.mem
        fp_access_set(&self.q.access, &memory.mem, &memory.mem, False, -1)
        self.q.options = options & (FP_VQ_EVENT_IDX | FP_VQ_INDIRECT)
        self.q.avail_wrap = 1
        self.q.used_wrap = 1

    def __dealloc__(self):
        free(self.q.inflight.head_of)

    def track_inflight(self, uintptr_t region, uint32_t desc_num, uint64_t counter,
                       uint16_t free_head, uint32_t free_count, uint16_t[::1] next,
                       uint16_t[::1] last, uint16_t[::1] num, const uint8_t[::1] saved,
                       const uint16_t[::1] resubmit, object owner):
        """Record pops and pushes in the inflight queue region at address `region` (desc_num
        entries), which `owner` keeps mapped, going on from `counter`. The region's free list
        (free_count entries from free_head) and chains (`next` links, each head's `last` entry
        and `num` descriptors) come as this side's own copies; `saved` holds the descriptors
        of the chains in `resubmit` (heads, oldest first), which are popped first."""
        cdef uint32_t k, _j, size = self.q.ring.size
        cdef uint16_t e
        # SAFETY: the hot path follows these links and indexes the region with them unchecked:
        # every entry reachable from the free list or a chain to pop again is checked here.
        if not size <= desc_num <= 32768:
            raise ValueError(f"an inflight region of {desc_num} entries cannot track a ring of "
                             f"{size}")
        if not (next.shape[0] == last.shape[0] == num.shape[0] == desc_num
                and <size_t>saved.shape[0] == desc_num * sizeof(fp_packed_desc)):
            raise ValueError("the inflight record's arrays do not have desc_num entries")
        if free_count > desc_num:
            raise ValueError(f"{free_count} free entries of {desc_num}")
        e = free_head
        for k in range(free_count):
            if e >= desc_num:
                raise ValueError(f"the free list leaves the region after {k} entries")
            e = next[e]
        for k in range(resubmit.shape[0]):
            e = resubmit[k]
            if e >= desc_num or not 1 <= num[e] <= size or last[e] >= desc_num:
                raise ValueError(f"chain {e} to pop again is not one")
            for _j in range(num[e] - 1):
                e = next[e]
                if e >= desc_num:
                    raise ValueError(f"chain {resubmit[k]} leaves the region")
        free(self.q.inflight.head_of)
        self.q.inflight.head_of = <uint16_t *>calloc(65536, sizeof(uint16_t))
        if self.q.inflight.head_of == NULL:
            raise MemoryError()
        self.inflight_owner = owner
        self.next, self.last, self.num = next, last, num
        self.saved, self.resubmit = saved, resubmit
        self.q.inflight.region = <fp_inflight_packed_region *>region
        self.q.inflight.desc = <fp_inflight_packed_desc *>(
            region + sizeof(fp_inflight_packed_region))
        self.q.inflight.counter = counter
        self.q.inflight.desc_num = desc_num
        self.q.inflight.free_head = free_head
        self.q.inflight.free_count = free_count
        self.q.inflight.next = &next[0]
        self.q.inflight.last = &last[0]
        self.q.inflight.num = &num[0]
        self.q.inflight.saved = <const fp_packed_desc *>&saved[0]
        self.q.inflight.resubmit = &resubmit[0] if resubmit.shape[0] else NULL
        self.q.inflight.resubmit_count = resubmit.shape[0]
        self.q.inflight.resubmit_next = 0
        self.q.inflight.untracked = 0

    @property
    def inflight_counter(self):
        """The counter value the next recorded pop gets."""
        return self.q.inflight.counter

    @property
    def inflight_untracked(self):
        """Chains popped with no free entry left to record them in."""
        return self.q.inflight.untracked

    @property
    def resubmit_pending(self):
        """How many chains a restart left in flight that pops have not returned yet."""
        return self.q.inflight.resubmit_count - self.q.inflight.resubmit_next

    @property
    def resubmit_heads(self):
        """Heads (region entries) of the chains a restart left in flight that pops have not
        returned yet, oldest first."""
        return list(self.resubmit[self.q.inflight.resubmit_next:self.q.inflight.resubmit_count])

    @property
    def handle(self):
        """Address of the core state, for compiled callers of the fp_packed_* functions."""
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
    def avail_state(self):
        """(next slot to pop, its wrap counter)."""
        return self.q.next_avail, self.q.avail_wrap

    @avail_state.setter
    def avail_state(self, value):
        pos, wrap = value
        if not 0 <= pos < self.q.ring.size:
            raise ValueError(f"slot {pos} is outside a queue of {self.q.ring.size}")
        self.q.next_avail = pos
        self.q.avail_wrap = 1 if wrap else 0

    @property
    def used_state(self):
        """(next slot to write a used element to, its wrap counter)."""
        return self.q.next_used, self.q.used_wrap

    @used_state.setter
    def used_state(self, value):
        pos, wrap = value
        if not 0 <= pos < self.q.ring.size:
            raise ValueError(f"slot {pos} is outside a queue of {self.q.ring.size}")
        self.q.next_used = pos
        self.q.used_wrap = 1 if wrap else 0
        self.q.used_since_notify = 0

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
        """Forget all progress and errors (the device was reset); wrap counters back to 1."""
        self.q.next_avail = 0
        self.q.next_used = 0
        self.q.avail_wrap = 1
        self.q.used_wrap = 1
        self.q.used_since_notify = 0
        self.q.options &= ~(FP_VQ_BROKEN | FP_VQ_NOTIFY_OFF)
        self.q.popped = 0
        self.q.pushed = 0
        memset(self.q.errors, 0, sizeof(self.q.errors))
        self.q.inflight.resubmit_count = 0
        self.q.inflight.resubmit_next = 0

    def pop_burst(self, uint8_t[::1] chains, uint8_t[::1] segs):
        cdef uint32_t max_chains = chains.shape[0] // sizeof(fp_chain)
        cdef uint32_t max_segs = segs.shape[0] // sizeof(fp_segment)
        cdef int n
        if max_chains == 0:
            return 0
        with nogil:
            n = fp_packed_pop_burst(&self.q, <fp_chain *>&chains[0], max_chains,
                                    <fp_segment *>&segs[0] if max_segs else NULL, max_segs)
        return n

    def push_burst(self, const uint8_t[::1] chains, uint32_t n):
        if <size_t>n * sizeof(fp_chain) > <size_t>chains.shape[0]:
            raise IndexError("more chains to push than the array holds")
        if n == 0:
            return 0
        cdef int pushed
        with nogil:
            pushed = fp_packed_push_burst(&self.q, <const fp_chain *>&chains[0], n)
        return pushed

    def should_notify(self):
        return fp_packed_device_should_notify(&self.q)

    def set_kicks(self, bint enabled):
        return fp_packed_device_set_kicks(&self.q, enabled)


cdef class PackedDriver:
    """Driver-side state of one packed queue; the driver owns and initialises the ring areas."""
    cdef fp_packed_driver q
    cdef MemoryTable memory
    cdef object owner

    def __cinit__(self):
        self.q.free_ids = NULL
        self.q.ndesc = NULL

    def __init__(self, MemoryTable memory, uint32_t size, uintptr_t desc,
                 uintptr_t driver_event, uintptr_t device_event, uint16_t options,
                 object owner=None):
        cdef uint32_t i
        _set_ring(&self.q.ring, size, desc, driver_event, device_event)
        self.memory = memory
        self.owner = owner
        self.q.mem = &memory.mem
        self.q.options = options & (FP_VQ_EVENT_IDX | FP_VQ_INDIRECT)
        self.q.avail_wrap = 1
        self.q.used_wrap = 1
        self.q.free_ids = <uint16_t *>malloc(size * sizeof(uint16_t))
        self.q.ndesc = <uint16_t *>malloc(size * sizeof(uint16_t))
        if self.q.free_ids == NULL or self.q.ndesc == NULL:
            raise MemoryError()
        for i in range(size):
            # Id 0 on top: a fresh ring hands out 0, 1, 2, ...
            self.q.free_ids[i] = <uint16_t>(size - 1 - i)
            self.q.ndesc[i] = 0
        self.q.num_free_ids = size
        self.q.num_free = size

    def __dealloc__(self):
        free(self.q.free_ids)
        free(self.q.ndesc)

    @property
    def handle(self):
        return <uintptr_t>&self.q

    @property
    def num_free(self):
        return self.q.num_free

    @property
    def avail_state(self):
        return self.q.next_avail, self.q.avail_wrap

    @property
    def used_state(self):
        return self.q.last_used, self.q.used_wrap

    def errors(self):
        return fp_error_counts(self.q.errors)

    def add_burst(self, uint8_t[::1] chains, uint32_t n, const uint8_t[::1] segs):
        check_driver_chains(chains, n, segs, self.q.ring.size)
        if n == 0:
            return 0
        cdef int added
        with nogil:
            added = fp_packed_add_burst(&self.q, <fp_driver_chain *>&chains[0], n,
                                        <const fp_segment *>&segs[0])
        return added

    def should_kick(self):
        return fp_packed_driver_should_kick(&self.q)

    def collect_burst(self, uint8_t[::1] out):
        cdef uint32_t max_n = out.shape[0] // sizeof(fp_used_elem)
        if max_n == 0:
            return 0
        cdef int n
        with nogil:
            n = fp_packed_collect_burst(&self.q, <fp_used_elem *>&out[0], max_n)
        return n

    def set_calls(self, bint enabled):
        return fp_packed_driver_set_calls(&self.q, enabled)
