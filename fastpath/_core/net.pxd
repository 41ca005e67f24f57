# virtio-net's device side (virtio 1.2 §5.1): frames out of a transmitq and into a receiveq,
# through the header every packet carries, with mergeable receive buffers.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from fastpath._core.chain cimport fp_chain, fp_segment
from fastpath._core.dirty_log cimport fp_dirty_log


# virtio 1.2 §5.1.6: struct virtio_net_hdr, before every packet both ways (12 bytes with
# VERSION_1, whether or not MRG_RXBUF is negotiated).
cdef packed struct fp_net_hdr:
    uint8_t flags
    uint8_t gso_type
    uint16_t hdr_len
    uint16_t gso_size
    uint16_t csum_start
    uint16_t csum_offset
    uint16_t num_buffers


# One virtqueue of a net device as its data plane serves it: the ring, the scratch records a
# burst pops into, the call eventfd and counters.
cdef struct fp_net_queue:
    void *vq                # fp_split_device * or fp_packed_device *
    uint32_t packed
    uint32_t mergeable      # VIRTIO_NET_F_MRG_RXBUF: a frame may span receive buffers
    int call_fd             # -1: the driver takes no calls
    uint32_t max_chains
    uint32_t max_segs
    uint32_t chain_segs     # segment room one chain may need (a full indirect table)
    fp_chain *chains
    fp_segment *segs
    uint64_t frames         # frames moved (received from a transmitq, delivered to a receiveq)
    uint64_t bytes          # their bytes, headers excluded
    uint64_t dropped        # frames lost here: a bad chain, no header, too big for its room
    uint64_t calls          # call eventfd writes
    # Live migration: while `log.bitmap` is set, every guest page written is logged, and so
    # is [used_log_gpa, + used_log_len), the ring area pushes write (VHOST_VRING_F_LOG).
    fp_dirty_log log
    uint64_t used_log_gpa
    uint32_t used_log_len


# Frames cross in slots of `stride` bytes: the k-th frame of a burst sits in slot s = slots[k]
# (s = k when slots is NULL), at frames + s * stride, and its length is lengths[s]. With slots,
# a burst can land in the scattered buffers of an mbuf pool.

# Transmitq: pops up to max_n chains and copies each frame (after its header) into the next
# slot (`room` <= stride bytes, from the slot's first; a longer frame is dropped), its length
# into that slot's length; pushes the chains back and calls the driver if it
# asked. Returns the frames copied, or an FP_E_* code when the ring is broken.
cdef int fp_net_receive(fp_net_queue *q, uint8_t *frames, uint32_t stride, uint32_t room,
                        const uint32_t *slots, uint32_t *lengths, uint32_t max_n) noexcept nogil
# Receiveq: how many frames (at most max_n) its posted buffers take now without one of them
# waiting for an IOTLB translation, so that a forwarding loop takes no more than that from a
# transmitq and a frame waits in its transmitq, not lost, while a translation is missing. It
# counts buffers, one per frame: with MRG_RXBUF a long frame may still need one that waits.
# Without an IOTLB, max_n. Returns an FP_E_* code when the ring is broken.
cdef int fp_net_room(fp_net_queue *q, uint32_t max_n) noexcept nogil
# Receiveq: copies the frames of the first n slots into receive buffers behind a header, in
# order, and calls the driver if it asked. Returns how many frames it took: placed, or dropped
# (counted) because no buffer could ever hold them; it stops early when the driver has too few
# buffers posted. Returns an FP_E_* code when the ring is broken.
cdef int fp_net_transmit(fp_net_queue *q, const uint8_t *frames, uint32_t stride,
                         const uint32_t *slots, const uint32_t *lengths,
                         uint32_t n) noexcept nogil
