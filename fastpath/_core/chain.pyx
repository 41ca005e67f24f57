"""Copies between popped chains and flat buffers, and the record layouts' sizes."""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memcpy

from fastpath._core.memory cimport fp_gpa_chunk

SEGMENT_SIZE = sizeof(fp_segment)
CHAIN_SIZE = sizeof(fp_chain)
DRIVER_CHAIN_SIZE = sizeof(fp_driver_chain)
USED_ELEM_SIZE = sizeof(fp_used_elem)


cdef uint32_t fp_chain_gather(const fp_chain *chain, const fp_segment *segs, uint8_t *dst,
                              uint32_t cap) noexcept nogil:
    cdef uint32_t i, n, done = 0
    cdef const fp_segment *s
    for i in range(chain.nreadable):
        s = &segs[chain.first_seg + i]
        n = s.len if s.len < cap - done else cap - done
        memcpy(dst + done, <const void *>(<uintptr_t>s.addr), n)
        done += n
        if done == cap:
            break
    return done


cdef uint32_t fp_chain_scatter(const fp_chain *chain, const fp_segment *segs, const uint8_t *src,
                               uint32_t n) noexcept nogil:
    cdef uint32_t i, k, done = 0
    cdef const fp_segment *s
    for i in range(chain.nreadable, chain.nseg):
        s = &segs[chain.first_seg + i]
        k = s.len if s.len < n - done else n - done
        memcpy(<void *>(<uintptr_t>s.addr), src + done, k)
        done += k
        if done == n:
            break
    return done


cdef int fp_append_buffer(const fp_memory *mem, uint32_t *hint, uint64_t gpa, uint32_t length,
                          uint16_t flags, fp_segment *segs, uint32_t *nseg,
                          uint32_t max_segs) noexcept nogil:
    cdef uint64_t chunk
    cdef uint8_t *hva
    cdef uint64_t left = length
    while left:
        hva = fp_gpa_chunk(mem, gpa, left, hint, &chunk)
        if hva == NULL:
            return FP_E_DESC_MEMORY
        if nseg[0] >= max_segs:
            return FP_E_TOO_MANY_SEGMENTS
        segs[nseg[0]].addr = <uintptr_t>hva
        segs[nseg[0]].len = <uint32_t>chunk
        segs[nseg[0]].flags = flags
        segs[nseg[0]].reserved = 0
        nseg[0] += 1
        gpa += chunk
        left -= chunk
    return 0


cdef dict fp_error_counts(const uint64_t *errors):
    return {code: errors[code] for code in range(1, FP_NERRORS) if errors[code]}


def chain_gather(const uint8_t[::1] chains, Py_ssize_t index, const uint8_t[::1] segs,
                 uint8_t[::1] dst):
    """Copy chain `index`'s readable bytes into dst; returns the count. Arrays are raw bytes."""
    if (index < 0 or (index + 1) * sizeof(fp_chain) > <size_t>chains.shape[0]):
        raise IndexError("chain index out of range")
    cdef const fp_chain *c = <const fp_chain *>&chains[0] + index
    _check_segments(c, segs)
    if dst.shape[0] == 0 or c.nseg == 0:
        return 0
    return fp_chain_gather(c, <const fp_segment *>&segs[0], &dst[0], <uint32_t>dst.shape[0])


def chain_scatter(const uint8_t[::1] chains, Py_ssize_t index, const uint8_t[::1] segs,
                  const uint8_t[::1] src):
    """Copy src into chain `index`'s writable segments; returns the count."""
    if (index < 0 or (index + 1) * sizeof(fp_chain) > <size_t>chains.shape[0]):
        raise IndexError("chain index out of range")
    cdef const fp_chain *c = <const fp_chain *>&chains[0] + index
    _check_segments(c, segs)
    if src.shape[0] == 0 or c.nseg == 0:
        return 0
    return fp_chain_scatter(c, <const fp_segment *>&segs[0], &src[0], <uint32_t>src.shape[0])


cdef _check_segments(const fp_chain *c, const uint8_t[::1] segs):
    if (<size_t>c.first_seg + c.nseg) * sizeof(fp_segment) > <size_t>segs.shape[0]:
        raise IndexError("chain's segments lie outside the segment array")
