# The split virtqueue (virtio 1.2 §2.7), device side and driver side.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from fastpath._core.chain cimport (FP_NERRORS, fp_access, fp_chain, fp_driver_chain,
                                   fp_segment, fp_used_elem)
from fastpath._core.memory cimport fp_memory


# virtio 1.2 §2.7.5: a descriptor table entry (16 bytes).
cdef packed struct fp_split_desc:
    uint64_t addr
    uint32_t len
    uint16_t flags
    uint16_t next


cpdef enum:
    FP_SPLIT_DESC_F_NEXT = 1
    FP_SPLIT_DESC_F_WRITE = 2
    FP_SPLIT_DESC_F_INDIRECT = 4
    FP_SPLIT_AVAIL_F_NO_INTERRUPT = 1   # §2.7.7
    FP_SPLIT_USED_F_NO_NOTIFY = 1       # §2.7.10


# The three ring areas as this process sees them. The avail ring is u16 flags, u16 idx,
# u16 ring[size], u16 used_event; the used ring is u16 flags, u16 idx, then size used elements
# and u16 avail_event (§2.7.6, §2.7.8).
cdef struct fp_split_ring:
    fp_split_desc *desc
    uint16_t *avail
    uint16_t *used
    fp_used_elem *used_ring
    uint16_t *used_event
    uint16_t *avail_event
    uint32_t size


# vhost-user "Inflight I/O tracking" (QEMU docs/interop/vhost-user.rst, section of that name):
# a split ring's queue region is a QueueRegionSplit header, then one DescStateSplit per
# descriptor of the table. Natural alignment throughout, as QEMU's C structs have it.
cdef packed struct fp_inflight_split_desc:     # DescStateSplit, 16 bytes
    uint8_t inflight        # 1 while the chain at this head is in flight (heads only)
    uint8_t padding[5]
    uint16_t next           # links the heads of the batches used, newest first
    uint64_t counter        # when the head was popped, from a counter that only goes up


cdef packed struct fp_inflight_split_region:   # QueueRegionSplit, 16 bytes; desc[] follows
    uint64_t features       # 0: no region features are defined
    uint16_t version        # 1; 0 is a region nobody has initialised
    uint16_t desc_num       # entries of desc[]: the inflight description's queue size
    uint16_t last_batch_head
    uint16_t used_idx       # the used ring's idx once the last batch's heads were cleared


# A device queue's record of what it pops, kept in a region the front-end holds across
# back-end restarts. The core writes the region and never reads it: the front-end may
# scribble on it, so what the hot path needs is kept here, checked when it was attached.
cdef struct fp_split_inflight:
    fp_inflight_split_region *region   # NULL: no record is kept
    fp_inflight_split_desc *desc
    uint64_t counter                   # the next pop's counter value
    uint16_t last_batch_head
    const uint16_t *resubmit           # heads in flight before the restart, oldest first
    uint32_t resubmit_count
    uint32_t resubmit_next             # resubmit[resubmit_next:] are still to be popped


cdef struct fp_split_device:
    fp_split_ring ring
    const fp_memory *mem        # guest memory: the dirty log is kept by guest-physical page
    fp_access access            # where buffers are looked up: mem, or an IOTLB
    uint32_t mem_hint
    uint16_t last_avail_idx
    uint16_t used_idx
    uint16_t signalled_used
    uint16_t options
    uint64_t popped
    uint64_t pushed
    uint64_t errors[FP_NERRORS]
    fp_split_inflight inflight


cdef struct fp_split_driver:
    fp_split_ring ring
    const fp_memory *mem
    uint32_t mem_hint
    uint16_t avail_idx
    uint16_t last_used_idx
    uint16_t kicked_avail_idx
    uint32_t num_free
    uint16_t options
    # Free descriptors as a stack, the next one to take at free_stack[num_free - 1]: taking one is
    # a load at an index the burst already knows, where a linked list's head would wait for
    # the previous take's load. Freed chains go on top in chain order, so descriptors are
    # reused most recently freed first, as Linux (and the reference) reuse them.
    uint16_t *free_stack
    uint16_t *next          # private copy of a chain's links, by descriptor: how to free it
    uint16_t *ndesc         # descriptors taken by the chain whose head is i; 0 if i is free
    uint64_t errors[FP_NERRORS]


# Device side. Pops up to max_chains available chains; returns how many, or FP_E_AVAIL_IDX /
# FP_E_BROKEN. A chain that fails validation is still returned (and consumed) with its error set;
# one whose IOVA has no translation yet stops the burst before it (vq.access records the miss).
# With an inflight record, the chains in flight before a restart come first, oldest first, and
# every head taken from the avail ring is recorded in flight.
cdef int fp_split_pop_burst(fp_split_device *vq, fp_chain *chains, uint32_t max_chains,
                            fp_segment *segs, uint32_t max_segs) noexcept nogil
# Pushes chains as used elements of length `written`, in the order given; returns how many.
# With an inflight record, their heads are then recorded no longer in flight.
cdef int fp_split_push_burst(fp_split_device *vq, const fp_chain *chains,
                             uint32_t n) noexcept nogil
# Returns the last n chains popped to the ring unused: the next pop yields them again. Not for
# a queue keeping an inflight record (the pops are recorded there); net's never do.
cdef void fp_split_unpop_burst(fp_split_device *vq, uint32_t n) noexcept nogil
# Whether the driver wants a notification for what was pushed since the last call.
cdef bint fp_split_device_should_notify(fp_split_device *vq) noexcept nogil
# Ask for (or stop asking for) kicks; enabling returns how many chains are already available
# (chains still to pop again after a restart included).
cdef int fp_split_device_set_kicks(fp_split_device *vq, bint enabled) noexcept nogil

# Driver side. Adds chains (sets their ids); returns how many fit.
cdef int fp_split_add_burst(fp_split_driver *vq, fp_driver_chain *chains, uint32_t n,
                            const fp_segment *segs) noexcept nogil
# Whether the device wants a kick for what was added since the last call.
cdef bint fp_split_driver_should_kick(fp_split_driver *vq) noexcept nogil
# Collects up to max_n used elements; returns how many.
cdef int fp_split_collect_burst(fp_split_driver *vq, fp_used_elem *out,
                                uint32_t max_n) noexcept nogil
# Ask for (or stop asking for) used-buffer notifications; enabling returns how many are waiting.
cdef int fp_split_driver_set_calls(fp_split_driver *vq, bint enabled) noexcept nogil
