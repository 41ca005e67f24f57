"""Time without the GIL: the wall clock, for kernels that stamp what they capture, and the
monotonic clock, for kernels that time what they do."""

from libc.stdint cimport int64_t


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec *tp)
    enum:
        CLOCK_REALTIME
        CLOCK_MONOTONIC


cdef int64_t fp_realtime_ns() noexcept nogil:
    cdef timespec now
    clock_gettime(CLOCK_REALTIME, &now)
    return <int64_t>now.tv_sec * 1000000000 + now.tv_nsec


def realtime_ns():
    """Nanoseconds since the Unix epoch, as the compiled loops read them."""
    return fp_realtime_ns()


cdef int64_t fp_monotonic_ns() noexcept nogil:
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return <int64_t>now.tv_sec * 1000000000 + now.tv_nsec


def monotonic_ns():
    """Nanoseconds of the monotonic clock (time.monotonic_ns's), as the compiled loops read
    them."""
    return fp_monotonic_ns()
