# The platform's address-translation walkers over host physical memory: EPT (GPA -> HPA), guest
# IA-32e paging (GVA -> GPA) and the two-dimensional walk that translates every guest
# paging-structure access through EPT (GVA -> GPA -> HPA), with a TLB tagged by VPID and EPTP.
# Tables are read in their raw architectural formats (Intel SDM Vol. 3A §4.5, Vol. 3C §28.2;
# digest in shared/specs/hv.md §1), so tables built by anyone walk the same.
#
# Contract: every function is `noexcept nogil` and reports through its return code (FP_WALK_*)
# and the fp_walk record; nothing raises, nothing allocates. Walkers are pure (they only read)
# unless FP_WALK_SET_AD asks them to set accessed and dirty flags after a successful walk
# (hv.md §6). Every read is bounds-checked against the host memory: a table outside it is
# FP_WALK_READ_ERROR, never a stray read.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


# hv.md §1.3 (SDM Vol. 3C Table 28-1..28-6): the EPT paging-structure entry, all levels.
cpdef enum EptEntry:
    EPT_READ = 0x1
    EPT_WRITE = 0x2
    EPT_EXECUTE = 0x4
    EPT_MEMORY_TYPE_SHIFT = 3       # bits 5:3, leaf only
    EPT_IGNORE_PAT = 0x40           # leaf only
    EPT_PAGE_SIZE = 0x80            # PDPTE (1 GiB) and PDE (2 MiB): the entry maps a page
    EPT_ACCESSED = 0x100            # with EPTP[6]
    EPT_DIRTY = 0x200               # leaf, with EPTP[6]


# hv.md §1.1: the EPT pointer.
cpdef enum EptPointer:
    EPTP_MEMORY_TYPE_MASK = 0x7     # paging-structure memory type: 0 UC, 6 WB
    EPTP_WALK_LENGTH_SHIFT = 3      # bits 5:3 = page-walk length - 1
    EPTP_WALK_LENGTH_MASK = 0x38
    EPTP_AD_ENABLE = 0x40
    EPTP_SUPERVISOR_SHADOW_STACK = 0x80


# hv.md §1.9 (SDM Vol. 3A §4.5, Tables 4-15..4-20): the IA-32e paging-structure entry.
cpdef enum GuestEntry:
    PTE_PRESENT = 0x1
    PTE_WRITABLE = 0x2
    PTE_USER = 0x4
    PTE_WRITE_THROUGH = 0x8
    PTE_CACHE_DISABLE = 0x10
    PTE_ACCESSED = 0x20
    PTE_DIRTY = 0x40
    PTE_PAGE_SIZE = 0x80            # PDPTE, PDE (PAT in a PTE)
    PTE_GLOBAL = 0x100
    PTE_EXECUTE_DISABLE_SHIFT = 63  # XD, with EFER.NXE; reserved without


# The control-register bits the guest walk reads (SDM Vol. 3A §2.5, §4.1; hv.md §1.9).
cpdef enum ControlBits:
    CR0_WP = 1 << 16
    CR0_PG_SHIFT = 31               # CR0.PG is bit 31 (outside a C int's positive range)
    CR4_PAE = 1 << 5
    CR4_LA57 = 1 << 12
    CR4_PCIDE = 1 << 17
    CR4_SMEP = 1 << 20
    CR4_SMAP = 1 << 21
    EFER_LME = 1 << 8
    EFER_LMA = 1 << 10
    EFER_NXE = 1 << 11


# Accesses (`acc`): the low three bits are the EPT-violation qualification's access bits
# (hv.md §1.5, R 0, W 1, X 2), so a violation ORs them in as they are.
cpdef enum Access:
    ACC_READ = 0x1
    ACC_WRITE = 0x2
    ACC_FETCH = 0x4
    ACC_USER = 0x8                  # a user-mode (CPL 3) access to a linear address
    ACC_SMAP_AC = 0x10              # RFLAGS.AC = 1: SMAP lets supervisor data accesses through


# Walk flags. GLA_VALID and GLA_TRANSLATED are the qualification's bits 7 and 8 (hv.md §1.5).
cpdef enum WalkFlags:
    WALK_SET_AD = 0x1
    WALK_GLA_VALID = 0x80
    WALK_GLA_TRANSLATED = 0x100


# hv.md §1.5, §1.9: the qualification and #PF error-code bits the walkers produce.
cpdef enum FaultBits:
    QUAL_PROT_SHIFT = 3             # bits 5:3: AND of the R/W/X bits of the entries used
    PF_PRESENT = 0x1
    PF_WRITE = 0x2
    PF_USER = 0x4
    PF_RESERVED = 0x8
    PF_FETCH = 0x10


# Return codes (hv.md §6; 4 is the VT-d walker's DMAR fault).
cpdef enum WalkCode:
    FP_WALK_OK = 0
    FP_WALK_EPT_VIOLATION = 1
    FP_WALK_EPT_MISCONFIG = 2
    FP_WALK_PAGE_FAULT = 3
    FP_WALK_READ_ERROR = 5          # a paging structure lies outside host memory
    FP_WALK_NONCANONICAL = 6        # the linear address is not canonical: #GP, not #PF


# Host physical memory: a flat buffer indexed by HPA.
cdef struct fp_hostmem:
    uint8_t *base
    uint64_t size


# Bits high:low set (inclusive).
cdef inline uint64_t fp_bits(uint32_t high, uint32_t low) noexcept nogil:
    return ((<uint64_t>2 << high) - 1) & ~((<uint64_t>1 << low) - 1)


# splitmix64's finaliser: every input bit reaches every output bit, so that a cache indexed by
# the low bits of a hashed tag spreads any tag evenly; deterministic, so runs repeat exactly.
cdef inline uint64_t fp_mix64(uint64_t h) noexcept nogil:
    h = (h ^ (h >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    h = (h ^ (h >> 27)) * <uint64_t>0x94D049BB133111EB
    return h ^ (h >> 31)


# The little-endian u64 at hpa into *value; False, reading nothing, when it lies outside host
# memory. Every walker (EPT, guest paging, VT-d) reads its tables through this.
cdef inline bint fp_read64(const fp_hostmem *mem, uint64_t hpa, uint64_t *value) noexcept nogil:
    # SAFETY: the 8 bytes at hpa are inside the buffer (checked as a difference, so that a
    # guest-controlled hpa cannot overflow the sum); entries are 8-byte aligned by construction
    # (a 4 KiB table plus index * 8), and x86 reads unaligned words anyway.
    if mem.size < 8 or hpa > mem.size - 8:
        return False
    value[0] = (<const uint64_t *>(mem.base + hpa))[0]
    return True


# An EPTP made ready for walking (fp_ept_prepare): the root table and, per level and per
# non-leaf (0) or leaf (1) entry, the bits that must be zero (hv.md §1.3, exactly as KVM's
# __reset_rsvds_bits_mask_ept builds them). Levels are 1..5; row 0 is never read.
cdef struct fp_ept:
    uint64_t root
    uint64_t addr_mask              # bits M-1:12
    uint64_t ep4ta                  # the TLB tag: EPTP[M-1:12]
    uint64_t rsvd[6][2]
    uint32_t levels
    uint32_t ad
    uint32_t exec_only


# The guest's paging mode from CR0, CR3, CR4 and EFER (fp_guest_prepare).
cdef struct fp_guest:
    uint64_t root                   # GPA of the PML4 (or PML5) table
    uint64_t addr_mask
    uint64_t rsvd[6][2]
    uint32_t levels
    uint32_t wp
    uint32_t nxe
    uint32_t smep
    uint32_t smap
    uint16_t pcid


# One TLB entry. kind 0 = empty, 1 = guest-physical (GPA page -> HPA page, tagged by EP4TA),
# 2 = combined (GVA page -> HPA page, tagged by VPID, PCID and EP4TA) (hv.md §2.6). Entries hold
# one 4 KiB page each; `level` is the size of the translation they came from, so that an
# invalidation of any address in a large page drops them.
cdef packed struct fp_tlb_entry:
    uint64_t page                   # input address >> 12
    uint64_t ep4ta
    uint64_t out_page               # HPA of the 4 KiB page
    uint64_t gpa_page               # combined: the GPA of the 4 KiB page
    uint16_t vpid
    uint16_t pcid
    uint8_t kind
    uint8_t level
    uint8_t perms                   # TLB_PERM_* below
    uint8_t pad


cpdef enum TlbPerm:
    TLB_PERM_EPT_MASK = 0x7         # EPT R/W/X granted for the final GPA
    TLB_PERM_GUEST_WRITE = 0x8      # combined: guest R/W AND-ed over the levels
    TLB_PERM_GUEST_USER = 0x10      # combined: guest U/S AND-ed
    TLB_PERM_GUEST_XD = 0x20        # combined: guest XD OR-ed
    TLB_PERM_GLOBAL = 0x40          # combined: the guest leaf's G bit
    TLB_PERM_DIRTY = 0x80           # the walk that filled it set the dirty flags


# The TLB's counters; Python reads them as a uint64 array in this order.
cdef struct fp_tlb_stats:
    uint64_t hits
    uint64_t misses


# A direct-mapped TLB of a power-of-two number of entries (a colliding fill replaces the
# entry: deterministic, hv.md §6). Invalidation happens in Python, over the same array.
cdef struct fp_tlb:
    fp_tlb_entry *entries
    uint64_t mask
    fp_tlb_stats *stats


# What a walk found. On success: out_addr, level (1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB; the smaller
# of the two dimensions for a 2-D walk), leaf, perms. On a fault: fault_addr (the GPA for EPT
# exits, the GVA for #PF and #GP, the HPA for read errors) and code (the EPT-violation exit
# qualification, or the #PF error code; 0 for a misconfiguration). nrefs counts paging-structure
# reads either way (hv.md §0.1, §1.10).
cdef struct fp_walk:
    uint64_t out_addr
    uint64_t gpa                    # the guest-physical address translated
    uint64_t leaf                   # EPT: the EPT leaf; 2-D: the guest leaf; 0 on a TLB hit
    uint64_t fault_addr
    uint64_t code
    uint32_t level
    uint32_t nrefs
    uint32_t perms                  # EPT walk: XWR granted; 2-D walk: TLB_PERM_* bits


# Fill *ept from an EPTP the caller has validated (fastpath.hv.ept.Eptp), the capability word
# (IA32_VMX_EPT_VPID_CAP, hv.md §1.2) and MAXPHYADDR. Returns 0, or -1 for a page-walk length
# other than 4 or 5 or a MAXPHYADDR outside 36..52.
cdef int fp_ept_prepare(fp_ept *ept, uint64_t eptp, uint64_t caps,
                        uint32_t maxphyaddr) noexcept nogil

# Fill *guest from the guest's control registers (IA-32e paging: CR0.PG, CR4.PAE, EFER.LMA).
# Returns 0, or -1 when those do not select IA-32e paging or MAXPHYADDR is outside 36..52.
cdef int fp_guest_prepare(fp_guest *guest, uint64_t cr0, uint64_t cr3, uint64_t cr4,
                          uint64_t efer, uint32_t maxphyaddr) noexcept nogil

# GPA -> HPA through EPT (hv.md §1.4) for an access `acc` (ACC_READ/WRITE/FETCH); flags adds
# WALK_SET_AD and the GLA bits of the qualification. tlb may be NULL. Returns FP_WALK_*.
cdef int fp_ept_translate(const fp_hostmem *mem, const fp_ept *ept, fp_tlb *tlb, uint64_t gpa,
                          uint32_t acc, uint32_t flags, fp_walk *w) noexcept nogil

# GVA -> GPA -> HPA (hv.md §1.10): every guest paging-structure read is an EPT-translated access
# (a write too with EPT A/D on, §1.7). tlb may be NULL; vpid tags its combined entries.
cdef int fp_translate_2d(const fp_hostmem *mem, const fp_ept *ept, const fp_guest *guest,
                         fp_tlb *tlb, uint16_t vpid, uint64_t gva, uint32_t acc,
                         uint32_t flags, fp_walk *w) noexcept nogil

# Bursts: translate addrs[0..n) with one access kind; out[k] is the HPA (0 on a fault) and
# codes[k] the FP_WALK_* code; *nrefs grows by the paging-structure reads of them all.
# Returns how many succeeded.
cdef uint64_t fp_ept_translate_burst(const fp_hostmem *mem, const fp_ept *ept, fp_tlb *tlb,
                                     const uint64_t *addrs, uint64_t n, uint32_t acc,
                                     uint32_t flags, uint64_t *out, uint8_t *codes,
                                     uint64_t *nrefs) noexcept nogil
cdef uint64_t fp_translate_2d_burst(const fp_hostmem *mem, const fp_ept *ept,
                                    const fp_guest *guest, fp_tlb *tlb, uint16_t vpid,
                                    const uint64_t *addrs, uint64_t n, uint32_t acc,
                                    uint32_t flags, uint64_t *out, uint8_t *codes,
                                    uint64_t *nrefs) noexcept nogil
