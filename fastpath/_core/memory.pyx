"""Guest-physical and front-end-virtual address translation over a region table."""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, uintptr_t

REGION_SIZE = sizeof(fp_region)


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


cdef uint8_t *fp_gpa_to_hva(const fp_memory *mem, uint64_t gpa, uint64_t length,
                            uint32_t *hint) noexcept nogil:
    return _translate(mem, gpa, length, hint, False)


cdef uint8_t *fp_uva_to_hva(const fp_memory *mem, uint64_t uva, uint64_t length,
                            uint32_t *hint) noexcept nogil:
    return _translate(mem, uva, length, hint, True)


cdef uint8_t *fp_gpa_chunk(const fp_memory *mem, uint64_t gpa, uint64_t length,
                           uint32_t *hint, uint64_t *chunk) noexcept nogil:
    cdef int i = _find(mem, gpa, hint, False)
    cdef const fp_region *r
    cdef uint64_t room
    if i < 0:
        return NULL
    r = &mem.regions[i]
    room = r.size - (gpa - r.guest_phys_addr)
    chunk[0] = length if length < room else room
    return <uint8_t *>(<uintptr_t>(r.host_addr + (gpa - r.guest_phys_addr)))


cdef class MemoryTable:
    """Holds a region table (a numpy array of REGION_SIZE-byte rows) for the core.

    `update()` swaps in a new table; queues built on this object see it at their next burst.
    """

    def __cinit__(self):
        self.mem.regions = NULL
        self.mem.nregions = 0
        self._table = None

    def update(self, table):
        """Point the core at `table`, a C-contiguous numpy array of region rows."""
        if table.dtype.itemsize != sizeof(fp_region) or not table.flags.c_contiguous:
            raise ValueError("region table rows must be contiguous and match the core's layout")
        self._table = table
        self.mem.nregions = <uint32_t>len(table)
        self.mem.regions = <const fp_region *>(<uintptr_t>table.ctypes.data) if len(table) else NULL

    def gpa_to_hva(self, uint64_t gpa, uint64_t length):
        """Host address of a guest-physical range inside one region, or 0."""
        cdef uint32_t hint = 0
        return <uintptr_t>fp_gpa_to_hva(&self.mem, gpa, length, &hint)

    def uva_to_hva(self, uint64_t uva, uint64_t length):
        """Host address of a front-end virtual range inside one region, or 0."""
        cdef uint32_t hint = 0
        return <uintptr_t>fp_uva_to_hva(&self.mem, uva, length, &hint)
