# The dirty-page log of vhost-user live migration ("Migration" in the protocol document): one
# bit per 4 KiB guest page, bit (gpa / 4096) % 8 of byte gpa / 4096 / 8, in memory the
# front-end shares (SET_LOG_BASE). The back-end sets the bit of every page it writes.
from libc.stdint cimport uint8_t, uint64_t

from fastpath._core.chain cimport fp_atomic_or_u8

cpdef enum:
    FP_LOG_PAGE_SHIFT = 12


cdef struct fp_dirty_log:
    uint8_t *bitmap         # NULL: not logging
    uint64_t size           # bytes of bitmap


# Mark the pages of [gpa, gpa + length) dirty; pages past the log's end are not logged (the
# front-end sized the log for its memory).
cdef inline void fp_log_write(const fp_dirty_log *log, uint64_t gpa,
                              uint64_t length) noexcept nogil:
    # SAFETY: only bytes below log.size of the mapped bitmap are touched.
    cdef uint64_t page, last
    if log.bitmap == NULL or length == 0 or gpa + (length - 1) < gpa:
        return
    last = (gpa + length - 1) >> FP_LOG_PAGE_SHIFT
    page = gpa >> FP_LOG_PAGE_SHIFT
    while page <= last and (page >> 3) < log.size:
        fp_atomic_or_u8(&log.bitmap[page >> 3], <uint8_t>(1 << (page & 7)))
        page += 1
