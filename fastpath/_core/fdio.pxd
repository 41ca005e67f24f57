# Frames through a file descriptor that yields one frame per read and takes one per write (a
# TAP device, a packet or datagram socket), a burst per call, without the GIL.
from libc.stdint cimport uint8_t, uint32_t, uint64_t


# Frames cross in slots of `stride` bytes, as in net.pxd: the k-th frame of a burst is in slot
# s = slots[k] (s = k when slots is NULL), at frames + s * stride, its length at lengths[s].

# Reads (the fd non-blocking) until it has nothing more (EAGAIN), reaches end of file or has
# made max_n reads; places each frame in the next slot (`room` <= stride bytes, from the slot's
# first). A frame longer than `room` is read past the slot into a scratch buffer and dropped:
# *dropped (when not NULL) counts it, and it used up one of the max_n reads. Returns the frames
# placed, or -errno when the first read fails with a real error (a later one ends the burst
# and is met again on the next call).
cdef int fp_fd_read_burst(int fd, uint8_t *frames, uint32_t stride, uint32_t room,
                          const uint32_t *slots, uint32_t *lengths, uint32_t max_n,
                          uint64_t *dropped) noexcept nogil
# Writes the frames of the first n slots, one write each, in order, until the fd is full
# (EAGAIN or ENOBUFS). A length beyond `stride` is dropped unread and counted in *dropped (when
# not NULL). Returns how many frames it took (written or dropped), or -errno when the first
# write fails with a real error (a later one ends the burst).
cdef int fp_fd_write_burst(int fd, const uint8_t *frames, uint32_t stride, const uint32_t *slots,
                           const uint32_t *lengths, uint32_t n, uint64_t *dropped) noexcept nogil
