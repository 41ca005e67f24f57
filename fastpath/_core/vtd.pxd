# The VT-d DMA-remapping walker over host physical memory: a request's source-id picks a root
# entry (by bus) and a context entry (by devfn), whose second-level tables translate the IOVA
# (the Intel VT-d spec's legacy-mode formats, digested in shared/specs/hv.md §3.2-3.4).
# Tables are read in their raw architectural formats, so tables built by anyone walk the same.
#
# Contract: every function is `noexcept nogil` and reports through its return code (FP_VTD_*)
# and the fp_dma record; nothing raises, nothing allocates, nothing is written to host memory
# (legacy mode has no accessed/dirty flags). Every read goes through paging.pxd's fp_read64,
# bounds-checked: a table outside host memory is the fault reason the spec gives a read error.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from fastpath._core.paging cimport fp_hostmem


# hv.md §3.2, §3.3: root, context and second-level entry bits (one home for these layouts).
cpdef enum VtdEntry:
    VTD_PRESENT = 0x1               # root and context entries: lo bit 0
    CONTEXT_FPD = 0x2               # context lo bit 1: fault processing disable
    CONTEXT_TT_SHIFT = 2            # context lo bits 3:2: translation type
    CONTEXT_AW_MASK = 0x7           # context hi bits 2:0: address width
    CONTEXT_DID_SHIFT = 8           # context hi bits 23:8: domain ID
    SL_READ = 0x1
    SL_WRITE = 0x2
    SL_PAGE_SIZE = 0x80             # SL-PDPE (1 GiB) and SL-PDE (2 MiB): the entry maps a page
    SL_SNOOP = 0x800                # leaf, with ECAP.SC
    SL_TRANSIENT_SHIFT = 62         # TM: leaf, with ECAP.DT


# Context-entry translation types (hv.md §3.2).
cpdef enum TranslationType:
    TT_SECOND_LEVEL = 0
    TT_DEVICE_TLB = 1               # second level, and device-TLB translation requests allowed
    TT_PASS_THROUGH = 2
    TT_RESERVED = 3


# Fault reasons of the DMA-remapping walk (hv.md §3.5; the spec's LRT/LCT/LSL/LGN).
cpdef enum FaultReason:
    FR_ROOT_NOT_PRESENT = 0x1
    FR_CONTEXT_NOT_PRESENT = 0x2
    FR_CONTEXT_INVALID = 0x3
    FR_ADDRESS_BEYOND_MGAW = 0x4
    FR_WRITE = 0x5
    FR_READ = 0x6
    FR_PAGING_ENTRY_READ = 0x7
    FR_ROOT_TABLE_READ = 0x8
    FR_CONTEXT_TABLE_READ = 0x9
    FR_ROOT_RESERVED = 0xA
    FR_CONTEXT_RESERVED = 0xB
    FR_PAGING_ENTRY_RESERVED = 0xC
    FR_TRANSLATION_BLOCKED = 0xD


# What a request asks for (`acc`). A translation request is a device's ATS request (§3.7): it
# walks as a read or a write would, and only a TT_DEVICE_TLB context entry lets it through.
cpdef enum DmaAccess:
    DMA_READ = 0x1
    DMA_WRITE = 0x2
    DMA_TRANSLATION_REQUEST = 0x4


# Return codes (hv.md §6: 4 is the DMAR fault).
cpdef enum VtdCode:
    FP_VTD_OK = 0
    FP_VTD_FAULT = 4


# A remapping unit made ready for walking (fp_vtd_prepare): the root table, the capabilities
# the walk consults, and, per level and per non-leaf (0) or leaf (1) entry, the second-level
# bits that must be zero. Levels are 1..5; row 0 is never read.
cdef struct fp_vtd:
    uint64_t root
    uint64_t addr_mask              # bits HAW-1:12
    uint64_t root_rsvd              # root entry lo (hi is reserved whole)
    uint64_t context_rsvd_lo
    uint64_t context_rsvd_hi
    uint64_t sl_rsvd[6][2]
    uint32_t sagaw                  # CAP.SAGAW: bit AW set when AW is supported
    uint32_t mgaw                   # CAP.MGAW + 1, in bits
    uint32_t device_tlb             # ECAP.DT
    uint32_t pass_through           # ECAP.PT


# One IOTLB entry: a 4 KiB page of a source-id's translation, tagged by source-id and domain
# ID (hv.md §3.6); `level` is the size of the leaf it came from, so that an invalidation of
# any address of a large page drops it. valid 0 = empty.
cdef packed struct fp_iotlb_entry:
    uint64_t page                   # IOVA >> 12
    uint64_t out_page               # HPA of the 4 KiB page
    uint16_t sid
    uint16_t did
    uint8_t valid
    uint8_t level
    uint8_t perms                   # SL_READ | SL_WRITE granted, IOTLB_ATS if TT allows ATS
    uint8_t pad


cpdef enum IotlbPerm:
    IOTLB_ATS = 0x4


# One context-cache entry: the context entry a source-id's walk found (valid and present).
cdef packed struct fp_context_cache_entry:
    uint64_t lo
    uint64_t hi
    uint16_t sid
    uint16_t did
    uint8_t valid
    uint8_t pad[3]


# The caches' counters; Python reads them as a uint64 array in this order.
cdef struct fp_vtd_stats:
    uint64_t iotlb_hits
    uint64_t iotlb_misses
    uint64_t context_hits
    uint64_t context_misses


# Direct-mapped caches of power-of-two sizes (a colliding fill replaces the entry:
# deterministic, hv.md §6). Invalidation happens in Python, over the same arrays.
cdef struct fp_vtd_caches:
    fp_iotlb_entry *iotlb
    uint64_t iotlb_mask
    fp_context_cache_entry *contexts
    uint64_t context_mask
    fp_vtd_stats *stats


# What a translation found. On success: out_addr, level (1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB),
# perms (SL_READ | SL_WRITE granted over all levels), did. On a fault: reason (FR_*) and
# fault_addr (the faulting page, FRCD.FI), fpd (the context entry's FPD bit when one was read,
# which suppresses the qualified reasons). nrefs counts root, context and second-level entry
# reads either way (a 128-bit entry is one reference; hv.md §3.4: cold = 2 + levels).
cdef struct fp_dma:
    uint64_t out_addr
    uint64_t leaf
    uint64_t fault_addr
    uint64_t context_lo
    uint64_t context_hi
    uint32_t level
    uint32_t nrefs
    uint32_t perms
    uint32_t reason
    uint32_t did
    uint32_t fpd
    uint32_t tt


# Fill *u from RTADDR, CAP, ECAP (hv.md §3.1) and the host address width. Returns 0, or -1 for
# a HAW outside 36..52 or a root table in scalable mode (RTADDR.TTM != 0).
cdef int fp_vtd_prepare(fp_vtd *u, uint64_t rtaddr, uint64_t cap, uint64_t ecap,
                        uint32_t haw) noexcept nogil

# Translate iova for source-id sid (hv.md §3.4) for an access `acc` (DMA_*). caches may be NULL.
# Returns FP_VTD_OK or FP_VTD_FAULT.
cdef int fp_vtd_translate(const fp_hostmem *mem, const fp_vtd *u, fp_vtd_caches *caches,
                          uint16_t sid, uint64_t iova, uint32_t acc, fp_dma *d) noexcept nogil

# Burst: translate iovas[0..n) of one source-id with one access kind; out[k] is the HPA (0 on a
# fault) and reasons[k] 0 or the fault reason; *nrefs grows by the reads of them all.
# Returns how many succeeded.
cdef uint64_t fp_vtd_translate_burst(const fp_hostmem *mem, const fp_vtd *u,
                                     fp_vtd_caches *caches, uint16_t sid,
                                     const uint64_t *iovas, uint64_t n, uint32_t acc,
                                     uint64_t *out, uint8_t *reasons,
                                     uint64_t *nrefs) noexcept nogil
