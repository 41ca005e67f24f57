# The packed virtqueue (virtio 1.2 §2.8), device side and driver side.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from fastpath._core.chain cimport (FP_NERRORS, fp_chain, fp_driver_chain, fp_segment,
                                   fp_used_elem)
from fastpath._core.memory cimport fp_memory


# virtio 1.2 §2.8.13: a packed descriptor (16 bytes).
cdef packed struct fp_packed_desc:
    uint64_t addr
    uint32_t len
    uint16_t id
    uint16_t flags


# virtio 1.2 §2.8.14: an event suppression structure (4 bytes).
cdef packed struct fp_packed_event:
    uint16_t off_wrap
    uint16_t flags


cpdef enum:
    FP_PACKED_DESC_F_NEXT = 1
    FP_PACKED_DESC_F_WRITE = 2
    FP_PACKED_DESC_F_INDIRECT = 4
    FP_PACKED_DESC_F_AVAIL = 1 << 7
    FP_PACKED_DESC_F_USED = 1 << 15
    FP_PACKED_EVENT_ENABLE = 0
    FP_PACKED_EVENT_DISABLE = 1
    FP_PACKED_EVENT_DESC = 2
    FP_PACKED_WRAP_BIT = 1 << 15


cdef struct fp_packed_ring:
    fp_packed_desc *desc
    fp_packed_event *driver_event     # written by the driver, read by the device
    fp_packed_event *device_event     # written by the device, read by the driver
    uint32_t size


cdef struct fp_packed_device:
    fp_packed_ring ring
    const fp_memory *mem
    uint32_t mem_hint
    uint16_t next_avail
    uint16_t next_used
    uint32_t used_since_notify     # ring slots used since the last notification decision
    uint8_t avail_wrap
    uint8_t used_wrap
    uint16_t options
    uint64_t popped
    uint64_t pushed
    uint64_t errors[FP_NERRORS]


cdef struct fp_packed_driver:
    fp_packed_ring ring
    const fp_memory *mem
    uint32_t mem_hint
    uint16_t next_avail
    uint16_t last_used
    uint32_t added_since_kick      # ring slots filled since the last kick decision
    uint8_t avail_wrap
    uint8_t used_wrap
    uint32_t num_free
    uint16_t free_id
    uint16_t options
    uint16_t *next_id       # free buffer ids, as a list
    uint16_t *ndesc         # ring slots taken by buffer id i; 0 if i is free
    uint64_t errors[FP_NERRORS]


cdef int fp_packed_pop_burst(fp_packed_device *vq, fp_chain *chains, uint32_t max_chains,
                             fp_segment *segs, uint32_t max_segs) noexcept nogil
cdef int fp_packed_push_burst(fp_packed_device *vq, const fp_chain *chains,
                              uint32_t n) noexcept nogil
# Returns chains[0:n], the last chains popped, to the ring unused.
cdef void fp_packed_unpop_burst(fp_packed_device *vq, const fp_chain *chains,
                                uint32_t n) noexcept nogil
cdef bint fp_packed_device_should_notify(fp_packed_device *vq) noexcept nogil
cdef int fp_packed_device_set_kicks(fp_packed_device *vq, bint enabled) noexcept nogil

cdef int fp_packed_add_burst(fp_packed_driver *vq, fp_driver_chain *chains, uint32_t n,
                             const fp_segment *segs) noexcept nogil
cdef bint fp_packed_driver_should_kick(fp_packed_driver *vq) noexcept nogil
cdef int fp_packed_collect_burst(fp_packed_driver *vq, fp_used_elem *out,
                                 uint32_t max_n) noexcept nogil
cdef int fp_packed_driver_set_calls(fp_packed_driver *vq, bint enabled) noexcept nogil
