"""Copies between popped chains and flat buffers, and the record layouts' sizes."""

from libc.stdint cimport uint8_t, uint32_t, uint64_t

SEGMENT_SIZE = sizeof(fp_segment)
CHAIN_SIZE = sizeof(fp_chain)
DRIVER_CHAIN_SIZE = sizeof(fp_driver_chain)
USED_ELEM_SIZE = sizeof(fp_used_elem)
# Whether this build has FASTPATH_DEBUG's checks on (and its -O0): benchmarks report it.
DEBUG_BUILD = FASTPATH_DEBUG


cdef void fp_copy_bytes(uint8_t *dst, const uint8_t *src, uint64_t n) noexcept nogil:
    # SAFETY: the caller owns both ranges: rows of its own arrays, bounds checked by it.
    fp_copy(dst, src, n)


cdef uint64_t fp_gather_burst(const fp_chain *chains, uint32_t n, const fp_segment *segs,
                              uint8_t *dst, uint32_t stride) noexcept nogil:
    # SAFETY: dst holds n * stride bytes (the caller's contract); segments were made by a pop.
    cdef uint32_t i
    cdef uint64_t total = 0
    cdef const fp_segment *first
    for i in range(n):
        first = &segs[chains[i].first_seg]
        if chains[i].nreadable and first.len >= stride:
            # The common case, a header inside the first segment: one copy, no segment walk.
            fp_copy(dst + <size_t>i * stride, <const void *>(<uintptr_t>first.addr), stride)
            total += stride
        else:
            total += fp_chain_gather(&chains[i], segs, dst + <size_t>i * stride, stride)
    return total


def record_offsets():
    """{record: {field: byte offset}} as the C compiler laid the records out.

    The numpy dtypes that mirror them are checked against this at import, field by field.
    """
    cdef fp_segment seg
    cdef fp_chain ch
    cdef fp_driver_chain dc
    cdef fp_used_elem ue

    def at(base, field):
        return <size_t>field - <size_t>base

    return {
        "segment": {
            "addr": at(<size_t>&seg, <size_t>&seg.addr),
            "len": at(<size_t>&seg, <size_t>&seg.len),
            "flags": at(<size_t>&seg, <size_t>&seg.flags),
        },
        "chain": {
            "id": at(<size_t>&ch, <size_t>&ch.id),
            "first_seg": at(<size_t>&ch, <size_t>&ch.first_seg),
            "nseg": at(<size_t>&ch, <size_t>&ch.nseg),
            "nreadable": at(<size_t>&ch, <size_t>&ch.nreadable),
            "ndesc": at(<size_t>&ch, <size_t>&ch.ndesc),
            "error": at(<size_t>&ch, <size_t>&ch.error),
            "readable_len": at(<size_t>&ch, <size_t>&ch.readable_len),
            "writable_len": at(<size_t>&ch, <size_t>&ch.writable_len),
            "written": at(<size_t>&ch, <size_t>&ch.written),
        },
        "driver_chain": {
            "indirect_table": at(<size_t>&dc, <size_t>&dc.indirect_table),
            "first_seg": at(<size_t>&dc, <size_t>&dc.first_seg),
            "nseg": at(<size_t>&dc, <size_t>&dc.nseg),
            "id": at(<size_t>&dc, <size_t>&dc.id),
        },
        "used_elem": {
            "id": at(<size_t>&ue, <size_t>&ue.id),
            "len": at(<size_t>&ue, <size_t>&ue.len),
        },
    }


cdef dict fp_error_counts(const uint64_t *errors):
    return {code: errors[code] for code in range(1, FP_NERRORS) if errors[code]}


cdef object fp_take_miss(fp_access *a):
    # Read while a data plane may be popping: a miss recorded meanwhile is recorded again by
    # the next pop that stops at it, so a lost one only comes a burst later.
    cdef uint8_t perm = a.miss_perm
    cdef uint64_t iova = a.miss_iova
    if perm == 0:
        return None
    a.miss_perm = 0
    return iova, perm


def chain_gather(const uint8_t[::1] chains, Py_ssize_t index, const uint8_t[::1] segs,
                 uint8_t[::1] dst):
    """Copy chain `index`'s readable bytes into dst; returns the count. Arrays are raw bytes."""
    if index < 0 or <size_t>index >= <size_t>chains.shape[0] // sizeof(fp_chain):
        raise IndexError("chain index out of range")
    cdef const fp_chain *c = <const fp_chain *>&chains[0] + index
    _check_segments(c, segs)
    if dst.shape[0] == 0 or c.nseg == 0:
        return 0
    return fp_chain_gather(c, <const fp_segment *>&segs[0], &dst[0], <uint32_t>dst.shape[0])


def chain_scatter(const uint8_t[::1] chains, Py_ssize_t index, const uint8_t[::1] segs,
                  const uint8_t[::1] src):
    """Copy src into chain `index`'s writable segments; returns the count."""
    if index < 0 or <size_t>index >= <size_t>chains.shape[0] // sizeof(fp_chain):
        raise IndexError("chain index out of range")
    cdef const fp_chain *c = <const fp_chain *>&chains[0] + index
    _check_segments(c, segs)
    if src.shape[0] == 0 or c.nseg == 0:
        return 0
    return fp_chain_scatter(c, <const fp_segment *>&segs[0], &src[0], <uint32_t>src.shape[0])


cdef _check_segments(const fp_chain *c, const uint8_t[::1] segs):
    if <size_t>c.first_seg + c.nseg > <size_t>segs.shape[0] // sizeof(fp_segment):
        raise IndexError("chain's segments lie outside the segment array")
    if c.nreadable > c.nseg:
        raise ValueError("chain record claims more readable segments than it has")


def check_driver_chains(const uint8_t[::1] chains, uint32_t n, const uint8_t[::1] segs,
                        uint32_t queue_size):
    """Raise unless chains[:n] (raw driver-chain records) fit their arrays and the queue."""
    cdef size_t nsegs = segs.shape[0] // sizeof(fp_segment)
    cdef const fp_driver_chain *c
    cdef uint32_t i
    if n > <size_t>chains.shape[0] // sizeof(fp_driver_chain):
        raise IndexError("more chains to add than the array holds")
    if n == 0:
        return
    c = <const fp_driver_chain *>&chains[0]
    for i in range(n):
        if <size_t>c[i].first_seg + c[i].nseg > nsegs:
            raise IndexError(f"chain {i}'s segments lie outside the segment array")
        if c[i].indirect_table == 0 and c[i].nseg > queue_size:
            raise ValueError(f"chain {i} is longer than the queue")
