# Time for compiled loops: the wall clock to stamp what they record (packet captures), the
# monotonic clock to time what they do (I/O latencies).
from libc.stdint cimport int64_t


# Nanoseconds since the Unix epoch (CLOCK_REALTIME; a vDSO call, no system call).
cdef int64_t fp_realtime_ns() noexcept nogil

# Nanoseconds of CLOCK_MONOTONIC (a vDSO call, no system call).
cdef int64_t fp_monotonic_ns() noexcept nogil
