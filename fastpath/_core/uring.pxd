# Asynchronous file I/O through io_uring (liburing), for bdevs whose backing store is a file or
# a block device: requests are queued, submitted in a burst with one system call, and their
# completions reaped in a burst, all without the GIL.
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len


# The fields of liburing's ring that the core reads; the header has the rest.
cdef extern from "<liburing.h>" nogil:
    struct io_uring_cq:
        unsigned int ring_entries

    struct io_uring:
        io_uring_cq cq
        unsigned int features


# Flags of fp_uring_queue_fsync and fp_uring_queue_writev.
cpdef enum:
    # fsync: the data and what reading it back needs (fdatasync(2)); writev: the write
    # completes only once so synced (RWF_DSYNC), a write with FUA.
    FP_URING_DATASYNC = 1


# fp_uring_queue_fallocate modes. Both keep the file's size; the range reads back as zeros.
cpdef enum:
    FP_URING_PUNCH_HOLE = 1     # deallocate the range (discard; write-zeroes that may unmap)
    FP_URING_ZERO_RANGE = 2     # zero the range, its blocks left allocated (write-zeroes)


cpdef enum:
    # A reap larger than this is cut to it, so that counts fit the int the functions return.
    FP_URING_MAX_BURST = 1 << 30


# One ring and its bookkeeping. Every request queued produces exactly one completion, which
# the kernel keeps in the completion queue until it is reaped. `outstanding` counts requests
# from queueing until their completion is reaped, and never exceeds `capacity` (the completion
# queue's size), so the completion queue cannot overflow: a queue function refuses a request
# instead (-EBUSY), and the caller keeps it to offer again.
cdef struct fp_uring:
    io_uring ring
    uint32_t capacity
    uint32_t outstanding


# A ring of at least `entries` submission slots (rounded up to a power of two; at most 32768)
# and io_uring_setup(2)'s IORING_SETUP_* `flags`; its handle goes to *ring. Returns 0, or
# -errno: -EINVAL for entries or flags the kernel refuses, -ENOMEM, -EPERM where io_uring is
# disabled (kernel.io_uring_disabled), -ENOSYS where the kernel has no io_uring, -EOPNOTSUPP
# where it lacks timed waits (IORING_FEAT_EXT_ARG, Linux 5.11).
cdef int fp_uring_create(uint32_t entries, uint32_t flags, fp_uring **ring) noexcept nogil
# Submits what is queued, waits for every outstanding request to complete (their completions
# are dropped), so that no I/O touches the callers' buffers afterwards, and frees the ring.
# Blocks as long as the slowest request: queue only I/O that completes (files, block devices).
cdef void fp_uring_destroy(fp_uring *ring) noexcept nogil

# Requests that may be queued now: free submission slots, and room for their completions.
cdef uint32_t fp_uring_space(const fp_uring *ring) noexcept nogil
# Requests queued or in flight whose completions have not been reaped.
cdef uint32_t fp_uring_outstanding(const fp_uring *ring) noexcept nogil

# Queue requests; nothing reaches the kernel before fp_uring_submit (or a waiting reap). Each
# returns 0, or -EBUSY when the ring has no space for it (the caller keeps it), or -EINVAL for
# flags or a mode it does not know. Everything else is the kernel's to check when it runs the
# request, and a fault comes back as the request's completion: -EBADF for a bad fd, -EFAULT
# for an iovec or buffer outside the process's memory, -EINVAL for a misaligned O_DIRECT
# request or an iovcnt above IOV_MAX.
# `iov` is the address of `iovcnt` iovecs; they and the buffers they name stay valid until the
# request completes. `user_data` comes back with the completion.
cdef int fp_uring_queue_readv(fp_uring *ring, int fd, const iovec *iov, uint32_t iovcnt,
                              uint64_t offset, uint64_t user_data) noexcept nogil
# `flags`: 0 or FP_URING_DATASYNC.
cdef int fp_uring_queue_writev(fp_uring *ring, int fd, const iovec *iov, uint32_t iovcnt,
                               uint64_t offset, uint32_t flags, uint64_t user_data) noexcept nogil
# fsync(2) (flags 0) or fdatasync(2) (FP_URING_DATASYNC) of the whole file: a flush.
cdef int fp_uring_queue_fsync(fp_uring *ring, int fd, uint32_t flags,
                              uint64_t user_data) noexcept nogil
# fallocate(2) with FP_URING_PUNCH_HOLE or FP_URING_ZERO_RANGE over [offset, offset + length).
# A file system that does not do the mode completes the request with -EOPNOTSUPP (tmpfs has no
# ZERO_RANGE): the caller's cue to fall back (punch a hole, or write zeros).
cdef int fp_uring_queue_fallocate(fp_uring *ring, int fd, uint32_t mode, uint64_t offset,
                                  uint64_t length, uint64_t user_data) noexcept nogil

# Hands every queued request to the kernel with one system call. Returns how many it took, or
# -errno (-EAGAIN, -ENOMEM: the kernel is short of resources; what it did not take stays queued
# and goes with the next submit).
cdef int fp_uring_submit(fp_uring *ring) noexcept nogil

# Reaps up to max_n completions, oldest first: the k-th one's user_data at user_data[k], its
# result at results[k] (what the system call would return: bytes moved, 0, or -errno). With
# wait_ns > 0 and nothing to reap but requests outstanding, first submits what is queued and
# waits up to wait_ns nanoseconds for a completion. Returns the completions reaped, or -errno
# when the wait fails for a reason other than its timeout or a signal.
cdef int fp_uring_reap(fp_uring *ring, uint64_t *user_data, int32_t *results, uint32_t max_n,
                       int64_t wait_ns) noexcept nogil
