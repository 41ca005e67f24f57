"""Guest-physical and front-end-virtual address translation over a region table."""

from libc.stdint cimport uint32_t, uint64_t, uintptr_t

REGION_SIZE = sizeof(fp_region)


cdef class MemoryTable:
    """Holds a region table (a numpy array of REGION_SIZE-byte rows) for the core.

    `update()` swaps in a new table; queues built on this object see it at their next burst.
    """

    def __cinit__(self):
        self.mem.regions = NULL
        self.mem.nregions = 0
        self._table = None
        self._previous = None

    def update(self, table):
        """Point the core at `table`, a C-contiguous numpy array of region rows.

        The table before this one stays alive until the next update, so that a burst that read
        the old pointer just before the swap still reads valid rows. Callers still change
        memory only while its queues are stopped.
        """
        if table.dtype.itemsize != sizeof(fp_region) or not table.flags.c_contiguous:
            raise ValueError("region table rows must be contiguous and match the core's layout")
        self._previous = self._table
        self._table = table
        self.mem.regions = <const fp_region *>(<uintptr_t>table.ctypes.data) if len(table) else NULL
        self.mem.nregions = <uint32_t>len(table)

    def gpa_to_hva(self, uint64_t gpa, uint64_t length):
        """Host address of a guest-physical range inside one region, or 0."""
        cdef uint32_t hint = 0
        return <uintptr_t>fp_gpa_to_hva(&self.mem, gpa, length, &hint)

    def uva_to_hva(self, uint64_t uva, uint64_t length):
        """Host address of a front-end virtual range inside one region, or 0."""
        cdef uint32_t hint = 0
        return <uintptr_t>fp_uva_to_hva(&self.mem, uva, length, &hint)
