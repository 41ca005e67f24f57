"""EPT, guest IA-32e paging and the two-dimensional walk over raw tables in host memory.

The Python entry points take the host memory as a writable uint8 buffer indexed by HPA and
return plain tuples; fastpath.hv.ept and fastpath.hv.paging turn them into results and
exceptions.
"""

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

TLB_ENTRY_SIZE = sizeof(fp_tlb_entry)
TLB_STATS = ("hits", "misses")  # fp_tlb_stats, in order

# Memory types 2, 3 and 7 are reserved in an EPT leaf (hv.md §1.3): bit t of this mask is set
# for a reserved type t.
cdef uint64_t _BAD_MEMORY_TYPES = (1 << 2) | (1 << 3) | (1 << 7)
cdef uint32_t _MAX_LEVELS = 5


cdef inline uint64_t _entry_offset(uint64_t addr, uint32_t level) noexcept nogil:
    # Byte offset of the entry for addr in its level-`level` table: index * 8, where the index
    # is addr bits (12 + 9 * (level - 1)) + 8 : 12 + 9 * (level - 1) (hv.md §0.1).
    return (addr >> (9 * level)) & 0xFF8


cdef inline uint64_t _page_mask(uint32_t level) noexcept nogil:
    return (<uint64_t>1 << (12 + 9 * (level - 1))) - 1


cdef inline void _set_bits(const fp_hostmem *mem, uint64_t hpa, uint64_t bits) noexcept nogil:
    # SAFETY: only called on entry addresses the same walk has just read through fp_read64.
    (<uint64_t *>(mem.base + hpa))[0] |= bits


cdef int fp_ept_prepare(fp_ept *ept, uint64_t eptp, uint64_t caps,
                        uint32_t maxphyaddr) noexcept nogil:
    cdef uint64_t high
    cdef uint32_t level
    ept.levels = <uint32_t>((eptp & EPTP_WALK_LENGTH_MASK) >> EPTP_WALK_LENGTH_SHIFT) + 1
    if ept.levels < 4 or ept.levels > 5 or maxphyaddr < 36 or maxphyaddr > 52:
        return -1
    ept.addr_mask = fp_bits(maxphyaddr - 1, 12)
    ept.root = eptp & ept.addr_mask
    ept.ep4ta = ept.root
    ept.ad = (eptp & EPTP_AD_ENABLE) != 0
    ept.exec_only = caps & 1                              # hv.md §1.2 EXECUTE_ONLY, bit 0
    # hv.md §1.3 reserved masks; H = bits 51:M.
    high = fp_bits(51, maxphyaddr) if maxphyaddr < 52 else 0
    for level in range(4, _MAX_LEVELS + 1):
        ept.rsvd[level][0] = ept.rsvd[level][1] = high | fp_bits(7, 3)
    ept.rsvd[3][0] = ept.rsvd[2][0] = high | fp_bits(6, 3)
    ept.rsvd[3][1] = high | fp_bits(29, 12)
    ept.rsvd[2][1] = high | fp_bits(20, 12)
    ept.rsvd[1][0] = ept.rsvd[1][1] = high
    # A large page the capabilities lack makes its PS bit reserved (cap bits 16 and 17).
    if not (caps >> 16) & 1:
        ept.rsvd[2][1] |= EPT_PAGE_SIZE
    if not (caps >> 17) & 1:
        ept.rsvd[3][1] |= EPT_PAGE_SIZE
    return 0


cdef int fp_guest_prepare(fp_guest *guest, uint64_t cr0, uint64_t cr3, uint64_t cr4,
                          uint64_t efer, uint32_t maxphyaddr) noexcept nogil:
    cdef uint64_t high, xd
    cdef uint32_t level
    if (not (cr0 >> CR0_PG_SHIFT) & 1 or not cr4 & CR4_PAE or not efer & EFER_LMA
            or maxphyaddr < 36 or maxphyaddr > 52):
        return -1
    guest.levels = 5 if cr4 & CR4_LA57 else 4
    guest.addr_mask = fp_bits(maxphyaddr - 1, 12)
    guest.root = cr3 & guest.addr_mask
    guest.wp = (cr0 & CR0_WP) != 0
    guest.nxe = (efer & EFER_NXE) != 0
    guest.smep = (cr4 & CR4_SMEP) != 0
    guest.smap = (cr4 & CR4_SMAP) != 0
    guest.pcid = <uint16_t>(cr3 & 0xFFF) if cr4 & CR4_PCIDE else 0
    # SDM Vol. 3A §4.5 (Tables 4-15..4-20): bits 51:M everywhere; XD is reserved without
    # EFER.NXE; PS is reserved in PML5Es and PML4Es; a large leaf's frame bits below its
    # alignment (above the PAT bit 12) are reserved.
    high = fp_bits(51, maxphyaddr) if maxphyaddr < 52 else 0
    xd = 0 if guest.nxe else <uint64_t>1 << PTE_EXECUTE_DISABLE_SHIFT
    for level in range(1, _MAX_LEVELS + 1):
        guest.rsvd[level][0] = guest.rsvd[level][1] = high | xd
    for level in range(4, _MAX_LEVELS + 1):
        guest.rsvd[level][0] |= PTE_PAGE_SIZE
        guest.rsvd[level][1] |= PTE_PAGE_SIZE
    guest.rsvd[3][1] |= fp_bits(29, 13)
    guest.rsvd[2][1] |= fp_bits(20, 13)
    return 0


cdef inline int _ept_walk(const fp_hostmem *mem, const fp_ept *ept, uint64_t gpa, uint32_t acc,
                          uint32_t flags, fp_walk *w) noexcept nogil:
    # hv.md §1.4, in its order of checks: not present -> violation; XWR 010/110 (or 100
    # without execute-only) -> misconfiguration; reserved bits -> misconfiguration; a leaf's
    # memory type -> misconfiguration; then the access against the AND of every level's XWR.
    # w.nrefs grows by the entries read; with WALK_SET_AD and EPTP[6] a successful walk sets A
    # in every entry used and D in the leaf for writes (§1.7).
    cdef uint32_t level = ept.levels
    cdef uint64_t table = ept.root
    cdef uint64_t comb = EPT_READ | EPT_WRITE | EPT_EXECUTE
    cdef uint64_t entry_addr[6]
    cdef uint64_t addr, e, xwr, mask
    cdef bint leaf
    while True:
        addr = table + _entry_offset(gpa, level)
        if not fp_read64(mem, addr, &e):
            w.fault_addr = addr
            w.code = 0
            return FP_WALK_READ_ERROR
        w.nrefs += 1
        entry_addr[level] = addr
        xwr = e & 7
        if xwr == 0:
            # §1.5, §8 item 1: bits 5:3 AND the non-present entry in, so they are 0.
            w.fault_addr = gpa
            w.code = (acc & 7) | flags & (WALK_GLA_VALID | WALK_GLA_TRANSLATED)
            return FP_WALK_EPT_VIOLATION
        leaf = level == 1 or (level <= 3 and e & EPT_PAGE_SIZE)
        if (xwr == EPT_WRITE or xwr == EPT_WRITE | EPT_EXECUTE
                or (xwr == EPT_EXECUTE and not ept.exec_only)
                or e & ept.rsvd[level][leaf]
                or (leaf and (_BAD_MEMORY_TYPES >> ((e >> EPT_MEMORY_TYPE_SHIFT) & 7)) & 1)):
            # §1.6: one exit for every misconfiguration, qualification 0.
            w.fault_addr = gpa
            w.code = 0
            return FP_WALK_EPT_MISCONFIG
        comb &= xwr
        if leaf:
            break
        table = e & ept.addr_mask
        level -= 1
    if acc & 7 & ~comb:
        w.fault_addr = gpa
        w.code = ((acc & 7) | (comb << QUAL_PROT_SHIFT)
                  | flags & (WALK_GLA_VALID | WALK_GLA_TRANSLATED))
        return FP_WALK_EPT_VIOLATION
    mask = _page_mask(level)
    w.out_addr = (e & ept.addr_mask & ~mask) | (gpa & mask)
    w.gpa = gpa
    w.leaf = e
    w.level = level
    w.perms = <uint32_t>comb
    if flags & WALK_SET_AD and ept.ad:
        _set_bits(mem, entry_addr[level], EPT_DIRTY | EPT_ACCESSED if acc & ACC_WRITE
                  else EPT_ACCESSED)
        for level in range(level + 1, ept.levels + 1):
            _set_bits(mem, entry_addr[level], EPT_ACCESSED)
    return FP_WALK_OK


cdef inline uint64_t _tlb_slot(uint64_t kind, uint64_t vpid, uint64_t pcid, uint64_t ep4ta,
                               uint64_t page, uint64_t mask) noexcept nogil:
    # A multiplicative hash of the whole tag; deterministic, so runs repeat exactly.
    cdef uint64_t h = page ^ (ep4ta * <uint64_t>0x9E3779B97F4A7C15) ^ (vpid << 40)
    h ^= (pcid << 24) ^ (kind << 60)
    return fp_mix64(h) & mask


cdef inline fp_tlb_entry *_tlb_find(fp_tlb *tlb, uint8_t kind, uint16_t vpid, uint16_t pcid,
                                    uint64_t ep4ta, uint64_t page) noexcept nogil:
    # The slot for this tag: a hit if it holds the tag, else the slot a fill would take.
    return &tlb.entries[_tlb_slot(kind, vpid, pcid, ep4ta, page, tlb.mask)]


cdef inline bint _tlb_holds(const fp_tlb_entry *t, uint8_t kind, uint16_t vpid, uint16_t pcid,
                            uint64_t ep4ta, uint64_t page) noexcept nogil:
    return (t.kind == kind and t.page == page and t.ep4ta == ep4ta and t.vpid == vpid
            and t.pcid == pcid)


cdef inline void _tlb_fill(fp_tlb_entry *t, uint8_t kind, uint16_t vpid, uint16_t pcid,
                           uint64_t ep4ta, uint64_t page, const fp_walk *w,
                           uint32_t perms) noexcept nogil:
    t.kind = kind
    t.vpid = vpid
    t.pcid = pcid
    t.ep4ta = ep4ta
    t.page = page
    t.out_page = w.out_addr >> 12 << 12
    t.gpa_page = w.gpa >> 12 << 12
    t.level = <uint8_t>w.level
    t.perms = <uint8_t>perms


cdef int fp_ept_translate(const fp_hostmem *mem, const fp_ept *ept, fp_tlb *tlb, uint64_t gpa,
                          uint32_t acc, uint32_t flags, fp_walk *w) noexcept nogil:
    cdef fp_tlb_entry *t
    cdef int rc
    w.nrefs = 0
    if tlb == NULL:
        return _ept_walk(mem, ept, gpa, acc, flags, w)
    t = _tlb_find(tlb, 1, 0, 0, ept.ep4ta, gpa >> 12)
    # A hit must allow the access (and, when the walk keeps dirty flags, have set D already);
    # anything else walks the tables, which decide (SDM Vol. 3C §28.3.3: a fault re-walks).
    if (_tlb_holds(t, 1, 0, 0, ept.ep4ta, gpa >> 12) and not acc & 7 & ~t.perms
            and not (acc & ACC_WRITE and flags & WALK_SET_AD and ept.ad
                     and not t.perms & TLB_PERM_DIRTY)):
        tlb.stats.hits += 1
        w.out_addr = t.out_page | (gpa & 0xFFF)
        w.gpa = gpa
        w.level = t.level
        w.perms = t.perms & TLB_PERM_EPT_MASK
        w.leaf = 0
        return FP_WALK_OK
    tlb.stats.misses += 1
    rc = _ept_walk(mem, ept, gpa, acc, flags, w)
    if rc == FP_WALK_OK:
        _tlb_fill(t, 1, 0, 0, ept.ep4ta, gpa >> 12, w,
                  w.perms | (TLB_PERM_DIRTY if acc & ACC_WRITE and flags & WALK_SET_AD else 0))
    return rc


cdef inline bint _guest_denies(const fp_guest *guest, uint32_t acc,
                               uint32_t perms) noexcept nogil:
    # SDM Vol. 3A §4.6 for IA-32e paging, over the combined rights (TLB_PERM_GUEST_*): whether
    # the access is refused.
    cdef bint user_page = perms & TLB_PERM_GUEST_USER
    if acc & ACC_USER:
        return (not user_page or (acc & ACC_WRITE and not perms & TLB_PERM_GUEST_WRITE)
                or (acc & ACC_FETCH and perms & TLB_PERM_GUEST_XD))
    if acc & ACC_FETCH:
        return perms & TLB_PERM_GUEST_XD or (user_page and guest.smep)
    if user_page and guest.smap and not acc & ACC_SMAP_AC:
        return True
    return acc & ACC_WRITE and guest.wp and not perms & TLB_PERM_GUEST_WRITE


cdef inline int _page_fault(const fp_guest *guest, uint64_t gva, uint32_t acc, uint64_t bits,
                            fp_walk *w) noexcept nogil:
    # hv.md §1.9 error code: P/RSVD from the cause, W and U from the access, I/D for a fetch
    # when CR4.SMEP or EFER.NXE is on (SDM Vol. 3A §4.7).
    w.fault_addr = gva
    w.code = bits
    if acc & ACC_WRITE:
        w.code |= PF_WRITE
    if acc & ACC_USER:
        w.code |= PF_USER
    if acc & ACC_FETCH and (guest.nxe or guest.smep):
        w.code |= PF_FETCH
    return FP_WALK_PAGE_FAULT


cdef inline int _walk_2d(const fp_hostmem *mem, const fp_ept *ept, const fp_guest *guest,
                         uint64_t gva, uint32_t acc, uint32_t flags, fp_walk *w) noexcept nogil:
    # hv.md §1.10. A guest entry's read is an EPT access with the GLA valid and not yet
    # translated (qualification bit 8 clear); with EPT A/D on it is a write as well (§1.7).
    # With WALK_SET_AD, each EPT access sets its EPT flags once it succeeds, as the CPU does
    # when it makes that access; the guest's flags are set once the whole walk succeeds.
    cdef uint32_t shift = 12 + 9 * guest.levels
    cdef uint32_t level = guest.levels
    cdef uint32_t walk_acc = EPT_READ | (EPT_WRITE if ept.ad else 0)
    cdef uint32_t rights = TLB_PERM_GUEST_WRITE | TLB_PERM_GUEST_USER
    cdef uint32_t ept_flags = flags & WALK_SET_AD
    cdef uint64_t table = guest.root
    cdef uint64_t entry_addr[6]
    cdef uint64_t e, mask, gpa
    cdef uint32_t guest_level
    cdef bint leaf
    cdef int rc
    if <uint64_t>((<int64_t>(gva << (64 - shift))) >> (64 - shift)) != gva:
        w.fault_addr = gva
        w.code = 0
        return FP_WALK_NONCANONICAL
    while True:
        rc = _ept_walk(mem, ept, table + _entry_offset(gva, level), walk_acc,
                       ept_flags | WALK_GLA_VALID, w)
        if rc != FP_WALK_OK:
            return rc
        entry_addr[level] = w.out_addr
        if not fp_read64(mem, w.out_addr, &e):
            w.fault_addr = w.out_addr
            w.code = 0
            return FP_WALK_READ_ERROR
        w.nrefs += 1
        if not e & PTE_PRESENT:
            return _page_fault(guest, gva, acc, 0, w)
        leaf = level == 1 or (level <= 3 and e & PTE_PAGE_SIZE)
        if e & guest.rsvd[level][leaf]:
            return _page_fault(guest, gva, acc, PF_PRESENT | PF_RESERVED, w)
        # R/W and U/S AND over the levels, XD ORs (hv.md §1.9).
        if not e & PTE_WRITABLE:
            rights &= ~TLB_PERM_GUEST_WRITE
        if not e & PTE_USER:
            rights &= ~TLB_PERM_GUEST_USER
        if guest.nxe and e >> PTE_EXECUTE_DISABLE_SHIFT:
            rights |= TLB_PERM_GUEST_XD
        if leaf:
            break
        table = e & guest.addr_mask
        level -= 1
    if e & PTE_GLOBAL:
        rights |= TLB_PERM_GLOBAL
    if _guest_denies(guest, acc, rights):
        return _page_fault(guest, gva, acc, PF_PRESENT, w)
    mask = _page_mask(level)
    gpa = (e & guest.addr_mask & ~mask) | (gva & mask)
    guest_level = level
    rc = _ept_walk(mem, ept, gpa, acc & 7, ept_flags | WALK_GLA_VALID | WALK_GLA_TRANSLATED, w)
    if rc != FP_WALK_OK:
        return rc
    if flags & WALK_SET_AD:
        # SDM Vol. 3A §4.8: A in every guest entry used, D in the leaf for a write.
        _set_bits(mem, entry_addr[guest_level],
                  PTE_ACCESSED | PTE_DIRTY if acc & ACC_WRITE else PTE_ACCESSED)
        for level in range(guest_level + 1, guest.levels + 1):
            _set_bits(mem, entry_addr[level], PTE_ACCESSED)
    if guest_level < w.level:
        w.level = guest_level
    w.leaf = e
    w.perms |= rights
    return FP_WALK_OK


cdef int fp_translate_2d(const fp_hostmem *mem, const fp_ept *ept, const fp_guest *guest,
                         fp_tlb *tlb, uint16_t vpid, uint64_t gva, uint32_t acc,
                         uint32_t flags, fp_walk *w) noexcept nogil:
    cdef fp_tlb_entry *t
    cdef int rc
    w.nrefs = 0
    if tlb == NULL:
        return _walk_2d(mem, ept, guest, gva, acc, flags, w)
    t = _tlb_find(tlb, 2, vpid, guest.pcid, ept.ep4ta, gva >> 12)
    if (_tlb_holds(t, 2, vpid, guest.pcid, ept.ep4ta, gva >> 12)
            and not acc & 7 & ~t.perms and not _guest_denies(guest, acc, t.perms)
            and not (acc & ACC_WRITE and flags & WALK_SET_AD and not t.perms & TLB_PERM_DIRTY)):
        tlb.stats.hits += 1
        w.out_addr = t.out_page | (gva & 0xFFF)
        w.gpa = t.gpa_page | (gva & 0xFFF)
        w.level = t.level
        w.perms = t.perms & ~TLB_PERM_DIRTY
        w.leaf = 0
        return FP_WALK_OK
    tlb.stats.misses += 1
    rc = _walk_2d(mem, ept, guest, gva, acc, flags, w)
    if rc == FP_WALK_OK:
        _tlb_fill(t, 2, vpid, guest.pcid, ept.ep4ta, gva >> 12, w,
                  w.perms | (TLB_PERM_DIRTY if acc & ACC_WRITE and flags & WALK_SET_AD else 0))
    return rc


cdef uint64_t fp_ept_translate_burst(const fp_hostmem *mem, const fp_ept *ept, fp_tlb *tlb,
                                     const uint64_t *addrs, uint64_t n, uint32_t acc,
                                     uint32_t flags, uint64_t *out, uint8_t *codes,
                                     uint64_t *nrefs) noexcept nogil:
    # SAFETY: addrs, out and codes hold n elements each (the Python wrapper checks); every
    # table read inside is bounds-checked by fp_read64.
    cdef fp_walk w
    cdef uint64_t k, done = 0
    cdef int rc
    for k in range(n):
        rc = fp_ept_translate(mem, ept, tlb, addrs[k], acc, flags, &w)
        codes[k] = <uint8_t>rc
        out[k] = w.out_addr if rc == FP_WALK_OK else 0
        nrefs[0] += w.nrefs
        done += rc == FP_WALK_OK
    return done


cdef uint64_t fp_translate_2d_burst(const fp_hostmem *mem, const fp_ept *ept,
                                    const fp_guest *guest, fp_tlb *tlb, uint16_t vpid,
                                    const uint64_t *addrs, uint64_t n, uint32_t acc,
                                    uint32_t flags, uint64_t *out, uint8_t *codes,
                                    uint64_t *nrefs) noexcept nogil:
    # SAFETY: as fp_ept_translate_burst.
    cdef fp_walk w
    cdef uint64_t k, done = 0
    cdef int rc
    for k in range(n):
        rc = fp_translate_2d(mem, ept, guest, tlb, vpid, addrs[k], acc, flags, &w)
        codes[k] = <uint8_t>rc
        out[k] = w.out_addr if rc == FP_WALK_OK else 0
        nrefs[0] += w.nrefs
        done += rc == FP_WALK_OK
    return done


# ---- the Python boundary ----------------------------------------------------------------------

cdef class WalkContext:
    # The C views one call needs: host memory, prepared EPT and guest modes, and the TLB.
    cdef fp_hostmem mem
    cdef fp_ept ept
    cdef fp_guest guest
    cdef fp_tlb tlb
    cdef fp_tlb *tlb_ptr
    cdef uint8_t[::1] _mem_view
    cdef uint8_t[::1] _tlb_view
    cdef uint64_t[::1] _counters

    def __init__(self, uint8_t[::1] mem, uint64_t eptp, uint64_t caps, uint32_t maxphyaddr,
                 tlb_entries, tlb_counters):
        self._mem_view = mem
        self.mem.base = &mem[0] if mem.shape[0] else NULL
        self.mem.size = <uint64_t>mem.shape[0]
        if fp_ept_prepare(&self.ept, eptp, caps, maxphyaddr) != 0:
            raise ValueError(f"EPTP {eptp:#x} or MAXPHYADDR {maxphyaddr} cannot be walked")
        self.tlb_ptr = NULL
        if tlb_entries is not None:
            self._tlb_view = tlb_entries
            self._counters = tlb_counters
            n = self._tlb_view.shape[0] // sizeof(fp_tlb_entry)
            if n == 0 or n & (n - 1) or <size_t>self._counters.shape[0] * 8 < sizeof(fp_tlb_stats):
                raise ValueError("a TLB needs a power-of-two number of entries and its counters")
            self.tlb.entries = <fp_tlb_entry *>&self._tlb_view[0]
            self.tlb.mask = n - 1
            self.tlb.stats = <fp_tlb_stats *>&self._counters[0]
            self.tlb_ptr = &self.tlb

    def set_guest(self, uint64_t cr0, uint64_t cr3, uint64_t cr4, uint64_t efer,
                  uint32_t maxphyaddr):
        if fp_guest_prepare(&self.guest, cr0, cr3, cr4, efer, maxphyaddr) != 0:
            raise ValueError("CR0.PG, CR4.PAE and EFER.LMA must select IA-32e paging")


cdef tuple _result(int rc, const fp_walk *w):
    return (rc, w.out_addr, w.gpa, w.level, w.nrefs, w.leaf, w.perms, w.fault_addr, w.code)


cdef uint64_t _burst_length(const uint64_t[::1] addrs, uint64_t[::1] out,
                            uint8_t[::1] codes) except? 0:
    cdef uint64_t n = <uint64_t>addrs.shape[0]
    if <uint64_t>out.shape[0] < n or <uint64_t>codes.shape[0] < n:
        raise ValueError("out and codes must hold an element per address")
    return n


def ept_translate(WalkContext s, uint64_t gpa, uint32_t acc, uint32_t flags):
    """One EPT translation: (code, hpa, gpa, level, refs, leaf, perms, fault_addr, qual)."""
    cdef fp_walk w
    cdef int rc = fp_ept_translate(&s.mem, &s.ept, s.tlb_ptr, gpa, acc, flags, &w)
    return _result(rc, &w)


def translate_2d(WalkContext s, uint16_t vpid, uint64_t gva, uint32_t acc, uint32_t flags):
    """One 2-D translation, with the guest mode of s.set_guest(); the same tuple."""
    cdef fp_walk w
    cdef int rc = fp_translate_2d(&s.mem, &s.ept, &s.guest, s.tlb_ptr, vpid, gva, acc, flags,
                                  &w)
    return _result(rc, &w)


def ept_translate_burst(WalkContext s, const uint64_t[::1] addrs, uint32_t acc, uint32_t flags,
                        uint64_t[::1] out, uint8_t[::1] codes):
    """Translate every GPA of addrs without the GIL: (succeeded, references)."""
    cdef uint64_t n = _burst_length(addrs, out, codes)
    cdef uint64_t nrefs = 0
    if n:
        with nogil:
            n = fp_ept_translate_burst(&s.mem, &s.ept, s.tlb_ptr, &addrs[0], n, acc, flags,
                                       &out[0], &codes[0], &nrefs)
    return n, nrefs


def translate_2d_burst(WalkContext s, uint16_t vpid, const uint64_t[::1] addrs, uint32_t acc,
                       uint32_t flags, uint64_t[::1] out, uint8_t[::1] codes):
    """Translate every GVA of addrs without the GIL: (succeeded, references)."""
    cdef uint64_t n = _burst_length(addrs, out, codes)
    cdef uint64_t nrefs = 0
    if n:
        with nogil:
            n = fp_translate_2d_burst(&s.mem, &s.ept, &s.guest, s.tlb_ptr, vpid, &addrs[0], n,
                                      acc, flags, &out[0], &codes[0], &nrefs)
    return n, nrefs
