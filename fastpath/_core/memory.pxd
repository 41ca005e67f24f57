# The guest memory region table as the core reads it. One row per mapped region; the same bytes
# are a numpy array on the Python side (fastpath.hv.REGION_DTYPE) so Numba kernels read it too.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, uintptr_t


cdef packed struct fp_region:
    uint64_t guest_phys_addr
    uint64_t size
    uint64_t user_addr      # the front-end's virtual address of the region (vhost-user)
    uint64_t host_addr      # where the region is mapped in this process


cdef struct fp_memory:
    const fp_region *regions
    uint32_t nregions


# Translations are inline: every burst makes one or more per descriptor, and a call between
# extension modules would go through a function pointer.

cdef inline uint64_t _base(const fp_region *r, bint by_uva) noexcept nogil:
    return r.user_addr if by_uva else r.guest_phys_addr


cdef inline int _find(const fp_memory *mem, uint64_t addr, uint32_t *hint,
                      bint by_uva) noexcept nogil:
    # Index of the region holding addr, or -1. Regions never overlap, so the first hit is the
    # only one; the hinted region is tried first.
    cdef uint32_t i
    cdef const fp_region *r
    if hint[0] < mem.nregions:
        r = &mem.regions[hint[0]]
        if addr >= _base(r, by_uva) and addr - _base(r, by_uva) < r.size:
            return <int>hint[0]
    for i in range(mem.nregions):
        r = &mem.regions[i]
        if addr >= _base(r, by_uva) and addr - _base(r, by_uva) < r.size:
            hint[0] = i
            return <int>i
    return -1


cdef inline uint8_t *_translate(const fp_memory *mem, uint64_t addr, uint64_t length,
                                uint32_t *hint, bint by_uva) noexcept nogil:
    cdef int i = _find(mem, addr, hint, by_uva)
    cdef const fp_region *r
    cdef uint64_t offset
    if i < 0:
        return NULL
    r = &mem.regions[i]
    offset = addr - _base(r, by_uva)
    # Compared as a difference so that no sum overflows: the guest controls addr and length.
    if length > r.size - offset:
        return NULL
    return <uint8_t *>(<uintptr_t>(r.host_addr + offset))


# Host address of [gpa, gpa + length) if it lies wholly inside one region, else NULL.
# *hint is the caller's last matching region, so that a queue's lookups usually take one compare.
cdef inline uint8_t *fp_gpa_to_hva(const fp_memory *mem, uint64_t gpa, uint64_t length,
                                   uint32_t *hint) noexcept nogil:
    return _translate(mem, gpa, length, hint, False)


# The same for a front-end virtual address.
cdef inline uint8_t *fp_uva_to_hva(const fp_memory *mem, uint64_t uva, uint64_t length,
                                   uint32_t *hint) noexcept nogil:
    return _translate(mem, uva, length, hint, True)


# Host address of gpa and, in *chunk, how many of the next `length` bytes lie in its region.
# NULL if gpa is in no region. Buffers that span adjacent regions are walked chunk by chunk.
cdef inline uint8_t *fp_gpa_chunk(const fp_memory *mem, uint64_t gpa, uint64_t length,
                                  uint32_t *hint, uint64_t *chunk) noexcept nogil:
    # SAFETY: the returned address is inside the region that holds gpa, and *chunk never reaches
    # past that region's end.
    cdef int i = _find(mem, gpa, hint, False)
    cdef const fp_region *r
    cdef uint64_t room
    if i < 0:
        return NULL
    r = &mem.regions[i]
    room = r.size - (gpa - r.guest_phys_addr)
    chunk[0] = length if length < room else room
    return <uint8_t *>(<uintptr_t>(r.host_addr + (gpa - r.guest_phys_addr)))


# The guest-physical address of host address hva, or UINT64_MAX outside every region (the
# dirty log is kept by guest page, the data path works in host addresses).
cdef inline uint64_t fp_hva_to_gpa(const fp_memory *mem, uint64_t hva) noexcept nogil:
    cdef uint32_t i
    cdef const fp_region *r
    for i in range(mem.nregions):
        r = &mem.regions[i]
        if hva >= r.host_addr and hva - r.host_addr < r.size:
            return r.guest_phys_addr + (hva - r.host_addr)
    return 0xFFFFFFFFFFFFFFFF


cdef class MemoryTable:
    """The core's view of a region table; shared by every queue over the same guest memory."""
    cdef fp_memory mem
    cdef object _table
    cdef object _previous
