# Wall-clock time for compiled loops that stamp what they record (packet captures).
from libc.stdint cimport int64_t


# Nanoseconds since the Unix epoch (CLOCK_REALTIME; a vDSO call, no system call).
cdef int64_t fp_realtime_ns() noexcept nogil
