# fastpath's shared-memory frame ring, format version 1: one producer and one consumer, usually
# in two processes, pass frames through fixed-size slots in a file both of them map.
from libc.stdint cimport uint8_t, uint32_t, uint64_t


# The file's first FP_RING_HEADER_SIZE bytes, slots after them. Each side writes only its own
# cache line (its index and its drop count), so neither side's stores steal the line the other
# polls. The indices count frames since the ring was formatted and wrap at 2**32; frame i sits
# in slot i & (slots - 1). A slot is slot_stride bytes: the frame's length (u32), then its bytes.
cdef struct fp_ring_header:
    uint64_t magic              # FP_RING_MAGIC, "fastring" in ASCII
    uint32_t version            # FP_RING_VERSION
    uint32_t slots              # a power of two
    uint32_t slot_size          # the longest frame a slot holds
    uint32_t slot_stride        # 4 + slot_size, rounded up to 64
    uint8_t line0_pad[40]
    uint32_t producer           # written by the producer alone (release)
    uint32_t producer_pad
    uint64_t too_long           # frames the producer dropped: longer than slot_size
    uint8_t line1_pad[48]
    uint32_t consumer           # written by the consumer alone (release)
    uint32_t consumer_pad
    uint64_t rx_dropped         # frames the consumer dropped: too long for its buffers
    uint8_t line2_pad[48]


# A process's own view of an attached ring. The geometry is copied out of the header once it
# has been checked against the mapping, so a peer that rewrites the header later cannot send
# an index outside the file.
cdef struct fp_ring:
    fp_ring_header *header
    uint8_t *slots              # slot 0
    uint32_t mask               # slots - 1
    uint32_t slot_size
    uint32_t slot_stride


# Frames cross in slots of `stride` bytes, as in net.pxd: the k-th frame of a burst is in slot
# s = slots[k] (s = k when slots is NULL), at frames + s * stride, its length at lengths[s].

# Producer: copies frames of the first n slots into the ring, in order, and publishes them.
# Returns how many it took: enqueued, or dropped because they are longer than a ring slot
# (counted in the header's too_long); it stops early when the ring is full. Returns FP_E_BROKEN
# when the indices are inconsistent (the consumer index ran past the producer's).
cdef int fp_ring_enqueue(fp_ring *ring, const uint8_t *frames, uint32_t stride,
                         const uint32_t *slots, const uint32_t *lengths,
                         uint32_t n) noexcept nogil
# Consumer: copies up to max_n frames out of the ring into the burst's slots (`room` <= stride
# bytes each, from the slot's first) and releases their ring slots. Returns the frames placed;
# a frame longer than `room` (or than a ring slot, which only a broken producer writes) is
# released unread and counted in the header's rx_dropped. Returns FP_E_BROKEN when the indices
# are inconsistent.
cdef int fp_ring_dequeue(fp_ring *ring, uint8_t *frames, uint32_t stride, uint32_t room,
                         const uint32_t *slots, uint32_t *lengths, uint32_t max_n) noexcept nogil
