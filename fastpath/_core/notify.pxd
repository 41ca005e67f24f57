# eventfd notifications between the two sides of a queue: kicks (driver to device) and calls
# (device to driver), as vhost-user passes them.
from libc.stdint cimport int32_t, uint32_t, uint64_t


# Adds 1 to the eventfd; returns 0 or -errno (EAGAIN, when its counter is full, is success:
# the other side has a notification pending already).
cdef int fp_eventfd_signal(int fd) noexcept nogil
# Waits up to timeout_ms (-1: for ever) for any of fds[0:n] (n <= 64) to be readable, and
# clears each that is, adding the counts it read (the kicks or calls it consumed) to *counts_read;
# returns how many were, 0 on timeout, or -errno. Negative fds are skipped.
cdef int fp_eventfd_wait(const int32_t *fds, uint32_t n, int timeout_ms,
                         uint64_t *counts_read) noexcept nogil
