"""Frame bursts through packet file descriptors (fdio.pxd): read(2) and write(2) in a loop,
without the GIL, for ports whose peer is the kernel (TAP)."""

from libc.errno cimport EAGAIN, EINTR, ENOBUFS, errno
from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t readv(int fd, const iovec *iov, int iovcnt)


cdef extern from "<unistd.h>" nogil:
    ssize_t write(int fd, const void *buf, size_t count)


cpdef enum:
    # Room past a slot for the rest of an over-long frame: more than the longest frame a TAP
    # device delivers (an MTU of 65535 plus the Ethernet header and a VLAN tag).
    FP_FD_SCRATCH = 1 << 17
    # A burst larger than this is cut to it, so that counts fit the int the functions return.
    FP_FD_MAX_BURST = 1 << 30


# Where over-long frames spill. Nothing ever reads it, so threads may share it.
cdef uint8_t _scratch[FP_FD_SCRATCH]


cdef int fp_fd_read_burst(int fd, uint8_t *frames, uint32_t stride, uint32_t room,
                          const uint32_t *slots, uint32_t *lengths, uint32_t max_n,
                          uint64_t *dropped) noexcept nogil:
    # SAFETY: each read may fill exactly its slot's room bytes and then the scratch buffer;
    # only a frame that fitted the slot gets a length, so nothing past a slot is ever counted
    # as frame bytes. The caller provides room bytes at each stride-th byte for each slot it
    # names.
    cdef iovec iov[2]
    cdef uint32_t reads = 0, got = 0, slot
    cdef ssize_t n
    cdef int error
    if max_n > FP_FD_MAX_BURST:
        max_n = FP_FD_MAX_BURST
    iov[1].iov_base = _scratch
    iov[1].iov_len = FP_FD_SCRATCH
    while reads < max_n:
        slot = slots[got] if slots != NULL else got
        iov[0].iov_base = frames + <uint64_t>slot * stride
        iov[0].iov_len = room
        n = readv(fd, iov, 2)
        if n < 0:
            error = errno
            if error == EINTR:
                continue
            if error == EAGAIN or got > 0:
                break
            return -error
        if n == 0:
            break
        reads += 1
        if <size_t>n > room:
            if dropped != NULL:
                dropped[0] += 1
            continue
        lengths[slot] = <uint32_t>n
        got += 1
    return <int>got


cdef int fp_fd_write_burst(int fd, const uint8_t *frames, uint32_t stride, const uint32_t *slots,
                           const uint32_t *lengths, uint32_t n, uint64_t *dropped) noexcept nogil:
    # SAFETY: a write reads only its frame's own slot: a length beyond the stride is dropped
    # unread. The caller provides stride bytes for each slot it names.
    cdef uint32_t taken = 0, slot, length
    cdef ssize_t w
    cdef int error
    if n > FP_FD_MAX_BURST:
        n = FP_FD_MAX_BURST
    while taken < n:
        slot = slots[taken] if slots != NULL else taken
        length = lengths[slot]
        if length > stride:
            if dropped != NULL:
                dropped[0] += 1
            taken += 1
            continue
        w = write(fd, frames + <uint64_t>slot * stride, length)
        if w < 0:
            error = errno
            if error == EINTR:
                continue
            if error == EAGAIN or error == ENOBUFS or taken > 0:
                break
            return -error
        taken += 1
    return <int>taken
