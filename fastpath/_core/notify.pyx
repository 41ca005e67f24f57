"""eventfd kicks and calls, callable without the GIL from the core and from Numba kernels."""

from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport int32_t, uint32_t, uint64_t

import os


cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t count)
    ssize_t write(int fd, const void *buf, size_t count)


cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum:
        POLLIN


cpdef enum:
    FP_MAX_WAIT_FDS = 64


cdef int fp_eventfd_signal(int fd) noexcept nogil:
    cdef uint64_t one = 1
    if write(fd, &one, 8) == 8:
        return 0
    return 0 if errno == EAGAIN else -errno


cdef int fp_eventfd_wait(const int32_t *fds, uint32_t n, int timeout_ms,
                         uint64_t *counts_read) noexcept nogil:
    cdef pollfd polled[FP_MAX_WAIT_FDS]
    cdef uint32_t i, count = 0
    cdef int rc, ready = 0
    cdef uint64_t value
    for i in range(n if n < FP_MAX_WAIT_FDS else FP_MAX_WAIT_FDS):
        if fds[i] >= 0:
            polled[count].fd = fds[i]
            polled[count].events = POLLIN
            polled[count].revents = 0
            count += 1
    rc = poll(polled, count, timeout_ms)
    if rc < 0:
        return 0 if errno == EINTR else -errno
    for i in range(count):
        if polled[i].revents:
            # Non-blocking or not, an eventfd that polled readable has a count to read.
            if read(polled[i].fd, &value, 8) == 8:
                counts_read[0] += value
            ready += 1
    return ready


def signal(int fd):
    """Add 1 to eventfd `fd` (a kick or a call)."""
    cdef int rc
    with nogil:
        rc = fp_eventfd_signal(fd)
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))


def wait(fds, int timeout_ms):
    """Wait up to timeout_ms for any of the eventfds to fire and clear them; returns how many
    fired and the sum of the counts read from them."""
    cdef int32_t buf[FP_MAX_WAIT_FDS]
    cdef uint32_t n = 0
    cdef int rc
    cdef uint64_t counts_read = 0
    for fd in fds:
        if n == FP_MAX_WAIT_FDS:
            raise ValueError(f"at most {FP_MAX_WAIT_FDS} fds")
        buf[n] = fd
        n += 1
    with nogil:
        rc = fp_eventfd_wait(buf, n, timeout_ms, &counts_read)
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))
    return rc, counts_read
