# The guest memory region table as the core reads it. One row per mapped region; the same bytes
# are a numpy array on the Python side (fastpath.hv.REGION_DTYPE) so Numba kernels read it too.
from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef packed struct fp_region:
    uint64_t guest_phys_addr
    uint64_t size
    uint64_t user_addr      # the front-end's virtual address of the region (vhost-user)
    uint64_t host_addr      # where the region is mapped in this process


cdef struct fp_memory:
    const fp_region *regions
    uint32_t nregions


# Host address of [gpa, gpa + length) if it lies wholly inside one region, else NULL.
# *hint is the caller's last matching region, so that a queue's lookups usually take one compare.
cdef uint8_t *fp_gpa_to_hva(const fp_memory *mem, uint64_t gpa, uint64_t length,
                            uint32_t *hint) noexcept nogil

# The same for a front-end virtual address.
cdef uint8_t *fp_uva_to_hva(const fp_memory *mem, uint64_t uva, uint64_t length,
                            uint32_t *hint) noexcept nogil

# Host address of gpa and, in *chunk, how many of the next `length` bytes lie in its region.
# NULL if gpa is in no region. Buffers that span adjacent regions are walked chunk by chunk.
cdef uint8_t *fp_gpa_chunk(const fp_memory *mem, uint64_t gpa, uint64_t length,
                           uint32_t *hint, uint64_t *chunk) noexcept nogil


cdef class MemoryTable:
    """The core's view of a region table; shared by every queue over the same guest memory."""
    cdef fp_memory mem
    cdef object _table
