"""Asynchronous file I/O through io_uring (uring.pxd), for bdevs: liburing's queue, submit and
reap, with the bookkeeping that keeps the completion queue from overflowing, and the direct
I/O alignment a file needs (statx(2))."""

import os

from libc.errno cimport EBUSY, EINTR, EINVAL, ENOMEM, EOPNOTSUPP, ETIME, errno
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free
from posix.signal cimport sigset_t


cdef extern from "<liburing.h>" nogil:
    struct io_uring_sqe:
        pass

    struct io_uring_cqe:
        uint64_t user_data
        int32_t res

    struct __kernel_timespec:
        int64_t tv_sec
        long long tv_nsec

    enum:
        IORING_FEAT_EXT_ARG
        IORING_SETUP_SUBMIT_ALL
        IORING_SETUP_COOP_TASKRUN
        IORING_SETUP_TASKRUN_FLAG
        IORING_FSYNC_DATASYNC

    int io_uring_queue_init(unsigned int entries, io_uring *ring, unsigned int flags)
    void io_uring_queue_exit(io_uring *ring)
    unsigned int io_uring_sq_space_left(const io_uring *ring)
    io_uring_sqe *io_uring_get_sqe(io_uring *ring)
    void io_uring_sqe_set_data64(io_uring_sqe *sqe, uint64_t data)
    void io_uring_prep_readv(io_uring_sqe *sqe, int fd, const iovec *iovecs,
                             unsigned int nr_vecs, uint64_t offset)
    void io_uring_prep_writev2(io_uring_sqe *sqe, int fd, const iovec *iovecs,
                               unsigned int nr_vecs, uint64_t offset, int flags)
    void io_uring_prep_fsync(io_uring_sqe *sqe, int fd, unsigned int fsync_flags)
    void io_uring_prep_fallocate(io_uring_sqe *sqe, int fd, int mode, long offset, long length)
    int io_uring_submit(io_uring *ring)
    int io_uring_submit_and_wait(io_uring *ring, unsigned int wait_nr)
    unsigned int io_uring_peek_batch_cqe(io_uring *ring, io_uring_cqe **cqes,
                                         unsigned int count)
    void io_uring_cq_advance(io_uring *ring, unsigned int count)
    int io_uring_submit_and_wait_timeout(io_uring *ring, io_uring_cqe **cqe_ptr,
                                         unsigned int wait_nr, __kernel_timespec *ts,
                                         sigset_t *sigmask)


cdef extern from "<linux/falloc.h>" nogil:
    enum:
        FALLOC_FL_KEEP_SIZE
        FALLOC_FL_PUNCH_HOLE
        FALLOC_FL_ZERO_RANGE


cdef extern from "<sys/uio.h>" nogil:
    enum:
        RWF_DSYNC


cdef extern from "<fcntl.h>" nogil:
    enum:
        AT_EMPTY_PATH


# Python.h defines _GNU_SOURCE, so glibc takes struct statx from <linux/stat.h>, which has the
# direct I/O fields (Linux 6.1).
cdef extern from "<sys/stat.h>" nogil:
    struct kernel_statx "statx":
        uint32_t stx_mask
        uint32_t stx_dio_mem_align
        uint32_t stx_dio_offset_align

    enum:
        STATX_DIOALIGN

    int statx(int dirfd, const char *pathname, int flags, unsigned int mask,
              kernel_statx *statxbuf)


# Completions are read from the ring this many at a time.
cdef enum:
    _REAP_CHUNK = 64


cdef int fp_uring_create(uint32_t entries, uint32_t flags, fp_uring **ring) noexcept nogil:
    cdef fp_uring *r = <fp_uring *>calloc(1, sizeof(fp_uring))
    cdef int error
    if r == NULL:
        return -ENOMEM
    # Without SUBMIT_ALL (Linux 5.18) a request the kernel refuses as it takes it (iovecs
    # outside memory) ends the submission there, and the requests after it wait for the next
    # submit: a caller that only reaps then would wait for them forever.
    # COOP_TASKRUN (5.19): a completion waits for the task's next entry into the kernel
    # instead of interrupting it, which would cost a polling thread an interrupt per request;
    # TASKRUN_FLAG tells liburing's reap to enter when completions wait so.
    # Each is dropped alone where the kernel predates it: a 5.18 kernel keeps SUBMIT_ALL.
    error = io_uring_queue_init(entries, &r.ring, flags | IORING_SETUP_SUBMIT_ALL
                                | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG)
    if error == -EINVAL:
        error = io_uring_queue_init(entries, &r.ring, flags | IORING_SETUP_SUBMIT_ALL)
    if error == -EINVAL:
        error = io_uring_queue_init(entries, &r.ring, flags)
    if error < 0:
        free(r)
        return error
    # A timed wait without EXT_ARG would cost a timeout request of its own in the submission
    # queue, and its completion in the completion queue, which the bookkeeping does not count.
    if not r.ring.features & IORING_FEAT_EXT_ARG:
        io_uring_queue_exit(&r.ring)
        free(r)
        return -EOPNOTSUPP
    r.capacity = r.ring.cq.ring_entries
    r.outstanding = 0
    ring[0] = r
    return 0


cdef void fp_uring_destroy(fp_uring *ring) noexcept nogil:
    # SAFETY: `ring` is a handle fp_uring_create made and nobody destroyed (the caller's
    # promise); it is freed here, and nothing may use it again.
    cdef io_uring_cqe *cqes[_REAP_CHUNK]
    cdef unsigned int n
    cdef int error
    if ring == NULL:
        return
    # Closing the ring with requests in flight leaves the kernel to finish them after the
    # close returns, writing into buffers their owners may have freed by then: drain first.
    while ring.outstanding:
        n = io_uring_peek_batch_cqe(&ring.ring, cqes, _REAP_CHUNK)
        if n:
            io_uring_cq_advance(&ring.ring, n)
            ring.outstanding -= n
            continue
        error = io_uring_submit_and_wait(&ring.ring, 1)
        if error < 0 and error != -EINTR:
            break
    io_uring_queue_exit(&ring.ring)
    free(ring)


cdef uint32_t fp_uring_space(const fp_uring *ring) noexcept nogil:
    # SAFETY: `ring` is a live handle from fp_uring_create (the caller's promise).
    cdef uint32_t slots = io_uring_sq_space_left(&ring.ring)
    cdef uint32_t room = ring.capacity - ring.outstanding
    return slots if slots < room else room


cdef uint32_t fp_uring_outstanding(const fp_uring *ring) noexcept nogil:
    # SAFETY: `ring` is a live handle from fp_uring_create (the caller's promise).
    return ring.outstanding


cdef inline io_uring_sqe *_next_sqe(fp_uring *ring) noexcept nogil:
    # SAFETY: `ring` is a live handle from fp_uring_create (the caller's promise). A request
    # is taken only while its completion has room, so the completion queue never overflows.
    if ring.outstanding >= ring.capacity:
        return NULL
    return io_uring_get_sqe(&ring.ring)


cdef inline void _queued(fp_uring *ring, io_uring_sqe *sqe, uint64_t user_data) noexcept nogil:
    io_uring_sqe_set_data64(sqe, user_data)
    ring.outstanding += 1


cdef int fp_uring_queue_readv(fp_uring *ring, int fd, const iovec *iov, uint32_t iovcnt,
                              uint64_t offset, uint64_t user_data) noexcept nogil:
    # SAFETY: only the kernel reads the iovecs and writes the buffers, through its user-copy
    # routines: an address outside the process completes the request with -EFAULT.
    cdef io_uring_sqe *sqe = _next_sqe(ring)
    if sqe == NULL:
        return -EBUSY
    io_uring_prep_readv(sqe, fd, iov, iovcnt, offset)
    _queued(ring, sqe, user_data)
    return 0


cdef int fp_uring_queue_writev(fp_uring *ring, int fd, const iovec *iov, uint32_t iovcnt,
                               uint64_t offset, uint32_t flags, uint64_t user_data) noexcept nogil:
    # SAFETY: as fp_uring_queue_readv; the kernel only reads the buffers.
    cdef io_uring_sqe *sqe
    if flags & ~(<uint32_t>FP_URING_DATASYNC):
        return -EINVAL
    sqe = _next_sqe(ring)
    if sqe == NULL:
        return -EBUSY
    io_uring_prep_writev2(sqe, fd, iov, iovcnt, offset,
                          RWF_DSYNC if flags & FP_URING_DATASYNC else 0)
    _queued(ring, sqe, user_data)
    return 0


cdef int fp_uring_queue_fsync(fp_uring *ring, int fd, uint32_t flags,
                              uint64_t user_data) noexcept nogil:
    cdef io_uring_sqe *sqe
    if flags & ~(<uint32_t>FP_URING_DATASYNC):
        return -EINVAL
    sqe = _next_sqe(ring)
    if sqe == NULL:
        return -EBUSY
    io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC if flags & FP_URING_DATASYNC else 0)
    _queued(ring, sqe, user_data)
    return 0


cdef int fp_uring_queue_fallocate(fp_uring *ring, int fd, uint32_t mode, uint64_t offset,
                                  uint64_t length, uint64_t user_data) noexcept nogil:
    cdef io_uring_sqe *sqe
    cdef int falloc_mode
    if mode == FP_URING_PUNCH_HOLE:
        falloc_mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    elif mode == FP_URING_ZERO_RANGE:
        falloc_mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
    else:
        return -EINVAL
    sqe = _next_sqe(ring)
    if sqe == NULL:
        return -EBUSY
    # An offset or length past 2**63 turns negative here, and the kernel refuses it (-EINVAL).
    io_uring_prep_fallocate(sqe, fd, falloc_mode, <long>offset, <long>length)
    _queued(ring, sqe, user_data)
    return 0


cdef int fp_uring_submit(fp_uring *ring) noexcept nogil:
    # SAFETY: `ring` is a live handle from fp_uring_create (the caller's promise).
    return io_uring_submit(&ring.ring)


cdef int fp_uring_reap(fp_uring *ring, uint64_t *user_data, int32_t *results, uint32_t max_n,
                       int64_t wait_ns) noexcept nogil:
    # SAFETY: `ring` is a live handle from fp_uring_create, and user_data and results hold
    # max_n entries each (the caller's promise); at most max_n completions are written.
    cdef io_uring_cqe *cqes[_REAP_CHUNK]
    cdef io_uring_cqe *ready
    cdef __kernel_timespec timeout
    cdef uint32_t got = 0, want, n, i
    cdef int error
    if max_n > FP_URING_MAX_BURST:
        max_n = FP_URING_MAX_BURST
    while got < max_n:
        want = max_n - got if max_n - got < _REAP_CHUNK else _REAP_CHUNK
        n = io_uring_peek_batch_cqe(&ring.ring, cqes, want)
        if n == 0:
            if got or wait_ns <= 0 or ring.outstanding == 0:
                break
            timeout.tv_sec = wait_ns // 1000000000
            timeout.tv_nsec = wait_ns % 1000000000
            # One wait per call: a caller that wants more waits again.
            wait_ns = 0
            # What is queued goes to the kernel first, with the same system call.
            error = io_uring_submit_and_wait_timeout(&ring.ring, &ready, 1, &timeout, NULL)
            if error >= 0:
                continue
            if error == -ETIME or error == -EINTR:
                break
            return error
        for i in range(n):
            user_data[got + i] = cqes[i].user_data
            results[got + i] = cqes[i].res
        io_uring_cq_advance(&ring.ring, n)
        ring.outstanding -= n
        got += n
    return <int>got


def direct_io_alignment(int fd):
    """(memory, offset) alignment in bytes that O_DIRECT I/O on `fd` needs, as the kernel
    reports it (statx(2) STATX_DIOALIGN, Linux 6.1), or None where it reports none (an older
    kernel, or a file system that does not say). OSError if statx fails."""
    cdef kernel_statx st
    cdef int error = 0
    with nogil:
        if statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &st) < 0:
            error = errno
    if error:
        raise OSError(error, os.strerror(error))
    if not st.stx_mask & STATX_DIOALIGN or st.stx_dio_offset_align == 0:
        return None
    return st.stx_dio_mem_align, st.stx_dio_offset_align


cdef class Uring:
    """A ring for Python callers (tests, set-up): the same calls as the fp_uring_* functions,
    returning their codes unchanged; `handle` is the address kernels pass them. OSError when
    the ring cannot be made. Closing (or dropping) it drains what is outstanding first."""
    # SAFETY: `ring` is NULL or a live handle from fp_uring_create; every method checks which,
    # and only close() destroys it.
    cdef fp_uring *ring

    def __cinit__(self, uint32_t entries=64, uint32_t flags=0):
        cdef int error
        with nogil:
            error = fp_uring_create(entries, flags, &self.ring)
        if error < 0:
            raise OSError(-error, f"io_uring of {entries} entries, flags {flags:#x}: "
                                  f"{os.strerror(-error)}")

    def __dealloc__(self):
        self._close()

    cdef void _close(self) noexcept:
        cdef fp_uring *ring = self.ring
        self.ring = NULL
        with nogil:
            fp_uring_destroy(ring)

    cdef fp_uring *_live(self) except NULL:
        if self.ring == NULL:
            raise ValueError("the ring is closed")
        return self.ring

    def close(self):
        """Drain and free the ring; later calls raise ValueError."""
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._close()

    @property
    def handle(self):
        """Address of the ring, for kernels calling the fp_uring_* functions."""
        return <uintptr_t>self._live()

    @property
    def capacity(self):
        """The most requests outstanding at once (the completion queue's size)."""
        return self._live().capacity

    @property
    def space(self):
        """Requests that may be queued now."""
        return fp_uring_space(self._live())

    @property
    def outstanding(self):
        """Requests queued or in flight whose completions have not been reaped."""
        return fp_uring_outstanding(self._live())

    def readv(self, int fd, uintptr_t iov, uint32_t iovcnt, uint64_t offset,
              uint64_t user_data):
        """Queue a read into the `iovcnt` iovecs at address `iov`: 0 or -EBUSY."""
        return fp_uring_queue_readv(self._live(), fd, <const iovec *>iov, iovcnt, offset,
                                    user_data)

    def writev(self, int fd, uintptr_t iov, uint32_t iovcnt, uint64_t offset,
               uint64_t user_data, uint32_t flags=0):
        """Queue a write from the `iovcnt` iovecs at address `iov` (FP_URING_DATASYNC: durable
        when it completes): 0, -EBUSY or -EINVAL."""
        return fp_uring_queue_writev(self._live(), fd, <const iovec *>iov, iovcnt, offset,
                                     flags, user_data)

    def fsync(self, int fd, uint32_t flags, uint64_t user_data):
        """Queue an fsync (FP_URING_DATASYNC: fdatasync): 0, -EBUSY or -EINVAL."""
        return fp_uring_queue_fsync(self._live(), fd, flags, user_data)

    def fallocate(self, int fd, uint32_t mode, uint64_t offset, uint64_t length,
                  uint64_t user_data):
        """Queue a punch-hole or zero-range (FP_URING_*): 0, -EBUSY or -EINVAL."""
        return fp_uring_queue_fallocate(self._live(), fd, mode, offset, length, user_data)

    def submit(self):
        """Hand what is queued to the kernel: how many it took, or -errno."""
        cdef fp_uring *ring = self._live()
        cdef int taken
        with nogil:
            taken = fp_uring_submit(ring)
        return taken

    def reap(self, uint64_t[::1] user_data, int32_t[::1] results, int64_t wait_ns=0):
        """Reap up to as many completions as both arrays hold, waiting up to `wait_ns` for one
        when there is none: how many, or -errno."""
        cdef fp_uring *ring = self._live()
        cdef uint32_t max_n = min(user_data.shape[0], results.shape[0])
        cdef int got
        if max_n == 0:
            return 0
        with nogil:
            got = fp_uring_reap(ring, &user_data[0], &results[0], max_n, wait_ns)
        return got
