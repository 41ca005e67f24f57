# The packed virtqueue (virtio 1.2 §2.8), device side and driver side.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from fastpath._core.chain cimport (FP_NERRORS, fp_access, fp_chain, fp_driver_chain,
                                   fp_segment, fp_used_elem)
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


# vhost-user "Inflight I/O tracking" (QEMU docs/interop/vhost-user.rst, section of that name):
# a packed ring's queue region is a QueueRegionPacked header, then desc_num DescStatePacked
# entries. Each descriptor popped takes an entry off a free list and keeps a copy of itself
# there (the ring slot is overwritten once any buffer is used); a chain's first entry is its
# head. Natural alignment throughout, as QEMU's C structs have it.
cdef packed struct fp_inflight_packed_desc:    # DescStatePacked, 32 bytes
    uint8_t inflight        # 1 while the chain this entry heads is in flight (heads only)
    uint8_t padding
    uint16_t next           # the next entry of the free list or of the chain
    uint16_t last           # the chain's last entry (heads only)
    uint16_t num            # the chain's descriptors (heads only)
    uint64_t counter        # when the chain was popped, from a counter that only goes up
    uint16_t id             # the descriptor as popped: buffer id, flags, length, address
    uint16_t flags
    uint32_t len
    uint64_t addr


cdef packed struct fp_inflight_packed_region:  # QueueRegionPacked, 32 bytes; desc[] follows
    uint64_t features       # 0: no region features are defined
    uint16_t version        # 1; 0 is a region nobody has initialised
    uint16_t desc_num       # entries of desc[]: the inflight description's queue size
    uint16_t free_head
    uint16_t old_free_head
    uint16_t used_idx       # the device's used position and wrap counter
    uint16_t old_used_idx
    uint8_t used_wrap_counter
    uint8_t old_used_wrap_counter   # old_*: as they were before the step under way
    uint8_t padding[7]
    uint8_t desc_align[3]   # desc[] holds u64 fields: C starts it at the next multiple of 8


# A device queue's record of what it pops, kept in a region the front-end holds across
# back-end restarts. The core writes the region and never reads it: the front-end may
# scribble on it, so the free list and each chain's shape are kept here too, checked when the
# record was attached, and the region gets copies.
cdef struct fp_packed_inflight:
    fp_inflight_packed_region *region  # NULL: no record is kept
    fp_inflight_packed_desc *desc
    uint64_t counter                   # the next pop's counter value
    uint32_t desc_num
    uint32_t free_count                # entries on the free list
    uint16_t free_head
    uint16_t *next                     # [desc_num] the free list's and the chains' links
    uint16_t *last                     # [desc_num] a chain's last entry, by its head
    uint16_t *num                      # [desc_num] a chain's descriptors, by its head
    # [65536] 1 + the head of the chain in flight with that buffer id; 0 for none
    uint16_t *head_of
    const fp_packed_desc *saved        # [desc_num] the descriptors of chains to pop again
    const uint16_t *resubmit           # heads of chains in flight before the restart,
    uint32_t resubmit_count            # oldest first
    uint32_t resubmit_next             # resubmit[resubmit_next:] are still to be popped
    uint64_t untracked                 # chains popped with no free entries left for them


cdef struct fp_packed_device:
    fp_packed_ring ring
    const fp_memory *mem        # guest memory: the dirty log is kept by guest-physical page
    fp_access access            # where buffers are looked up: mem, or an IOTLB
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
    fp_packed_inflight inflight


cdef struct fp_packed_driver:
    fp_packed_ring ring
    const fp_memory *mem
    uint32_t mem_hint
    uint16_t next_avail
    uint16_t last_used
    uint32_t added_since_kick      # ring slots filled since the last kick decision
    uint8_t avail_wrap
    uint8_t used_wrap
    uint32_t num_free       # free ring slots
    uint32_t num_free_ids
    uint16_t options
    # Free buffer ids as a stack, the next one to take at free_ids[num_free_ids - 1]: taking
    # one is a load at an index the burst already knows, where a linked list's head would
    # wait for the previous take's load. Most recently freed first, as the reference.
    uint16_t *free_ids
    uint16_t *ndesc         # ring slots taken by buffer id i; 0 if i is free
    uint64_t errors[FP_NERRORS]


# Device side, as the split ring's (split.pxd): with an inflight record, the chains in flight
# before a restart come first, oldest first, and every chain taken from the ring is recorded.
cdef int fp_packed_pop_burst(fp_packed_device *vq, fp_chain *chains, uint32_t max_chains,
                             fp_segment *segs, uint32_t max_segs) noexcept nogil
# Uses chains in the order given; with an inflight record, the chains' entries go back on the
# free list, one used descriptor after the other.
cdef int fp_packed_push_burst(fp_packed_device *vq, const fp_chain *chains,
                              uint32_t n) noexcept nogil
# Returns chains[0:n], the last chains popped, to the ring unused. Not for a queue keeping an
# inflight record (the pops are recorded there); net's never do.
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
