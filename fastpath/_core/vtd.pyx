"""The VT-d DMA-remapping walk (legacy mode) over raw root, context and second-level tables.

The Python entry points take the host memory as a writable uint8 buffer indexed by HPA and
return plain tuples; fastpath.hv.vtd turns them into results, fault records and exceptions.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from fastpath._core.paging cimport fp_bits, fp_mix64, fp_read64

IOTLB_ENTRY_SIZE = sizeof(fp_iotlb_entry)
CONTEXT_CACHE_ENTRY_SIZE = sizeof(fp_context_cache_entry)
VTD_STATS = ("iotlb_hits", "iotlb_misses", "context_hits", "context_misses")  # fp_vtd_stats

# CAP and ECAP fields the walk consults (hv.md §3.1).
cdef uint32_t _CAP_SAGAW_SHIFT = 8          # bits 12:8
cdef uint32_t _CAP_MGAW_SHIFT = 16          # bits 21:16, width - 1
cdef uint32_t _CAP_SLLPS_SHIFT = 34         # bit 34 = 2 MiB, bit 35 = 1 GiB
cdef uint64_t _ECAP_DT = 1 << 2
cdef uint64_t _ECAP_PT = 1 << 6
cdef uint64_t _ECAP_SC = 1 << 7
cdef uint64_t _RTADDR_TTM = 0xC00           # bits 11:10; 0 = legacy
cdef uint32_t _MAX_LEVELS = 5


cdef inline uint64_t _entry_offset(uint64_t addr, uint32_t level) noexcept nogil:
    # Byte offset of addr's entry in its level-`level` table (hv.md §0.1: 9 index bits a level).
    return (addr >> (9 * level)) & 0xFF8


cdef inline uint64_t _page_mask(uint32_t level) noexcept nogil:
    return (<uint64_t>1 << (12 + 9 * (level - 1))) - 1


cdef int fp_vtd_prepare(fp_vtd *u, uint64_t rtaddr, uint64_t cap, uint64_t ecap,
                        uint32_t haw) noexcept nogil:
    cdef uint64_t high, tm, snp
    cdef uint32_t level
    if haw < 36 or haw > 52 or rtaddr & _RTADDR_TTM:
        return -1
    u.addr_mask = fp_bits(haw - 1, 12)
    u.root = rtaddr & u.addr_mask
    u.sagaw = <uint32_t>((cap >> _CAP_SAGAW_SHIFT) & 0x1F)
    u.mgaw = <uint32_t>((cap >> _CAP_MGAW_SHIFT) & 0x3F) + 1
    u.device_tlb = (ecap & _ECAP_DT) != 0
    u.pass_through = (ecap & _ECAP_PT) != 0
    # hv.md §3.2: root lo 11:1 and context lo 11:4 are reserved, as are address bits at and
    # above HAW; a legacy root entry's hi and context hi 63:24 and 7 are reserved.
    high = fp_bits(63, haw)
    u.root_rsvd = fp_bits(11, 1) | high
    u.context_rsvd_lo = fp_bits(11, 4) | high
    u.context_rsvd_hi = fp_bits(63, 24) | 0x80
    # hv.md §3.3, as QEMU's masks: bits 51:HAW; TM (62) outside a leaf or without ECAP.DT; SNP
    # (11) outside a leaf or without ECAP.SC (§8 item 7); PS in SL-PML4E/PML5E and in a
    # large leaf whose size CAP.SLLPS lacks; a large leaf's frame bits below its alignment.
    # Bits 61:52 and 63 are ignored.
    high = fp_bits(51, haw) if haw < 52 else 0
    tm = <uint64_t>1 << SL_TRANSIENT_SHIFT
    snp = SL_SNOOP
    for level in range(1, _MAX_LEVELS + 1):
        u.sl_rsvd[level][0] = high | tm | snp
        u.sl_rsvd[level][1] = (high | (0 if u.device_tlb else tm)
                               | (0 if ecap & _ECAP_SC else snp))
    for level in range(4, _MAX_LEVELS + 1):
        u.sl_rsvd[level][0] |= SL_PAGE_SIZE
    u.sl_rsvd[3][1] |= fp_bits(29, 12) | (0 if (cap >> (_CAP_SLLPS_SHIFT + 1)) & 1
                                          else SL_PAGE_SIZE)
    u.sl_rsvd[2][1] |= fp_bits(20, 12) | (0 if (cap >> _CAP_SLLPS_SHIFT) & 1 else SL_PAGE_SIZE)
    return 0


cdef inline int _fault(fp_dma *d, uint32_t reason, uint64_t iova) noexcept nogil:
    d.reason = reason
    d.fault_addr = iova >> 12 << 12             # FRCD.FI: the faulting page (hv.md §3.5)
    return FP_VTD_FAULT


cdef inline uint64_t _slot(uint64_t tag, uint64_t mask) noexcept nogil:
    return fp_mix64(tag) & mask


cdef inline bint _read128(const fp_hostmem *mem, uint64_t hpa, uint64_t *lo,
                          uint64_t *hi) noexcept nogil:
    # A 128-bit entry, lo at the lower address (hv.md §0.1).
    # (fp_read64 has checked hpa against the memory's size, so hpa + 8 cannot overflow.)
    return fp_read64(mem, hpa, lo) and fp_read64(mem, hpa + 8, hi)


cdef inline int _context_entry(const fp_hostmem *mem, const fp_vtd *u, fp_vtd_caches *caches,
                               uint16_t sid, uint64_t iova, fp_dma *d) noexcept nogil:
    # hv.md §3.4, first half: the root entry for the bus, the context entry for the devfn,
    # their present and reserved bits, then the AW and TT the unit supports. A context-cache
    # hit skips both reads; only valid entries are cached.
    cdef fp_context_cache_entry *c = NULL
    cdef uint64_t lo, hi, tt
    cdef uint32_t aw
    if caches != NULL:
        c = &caches.contexts[_slot(sid, caches.context_mask)]
        if c.valid and c.sid == sid:
            caches.stats.context_hits += 1
            d.context_lo, d.context_hi = c.lo, c.hi
            d.fpd = (c.lo & CONTEXT_FPD) != 0
            return FP_VTD_OK
        caches.stats.context_misses += 1
    if not _read128(mem, u.root + (sid >> 8) * 16, &lo, &hi):
        return _fault(d, FR_ROOT_TABLE_READ, iova)
    d.nrefs += 1
    if not lo & VTD_PRESENT:
        return _fault(d, FR_ROOT_NOT_PRESENT, iova)
    if lo & u.root_rsvd or hi:
        return _fault(d, FR_ROOT_RESERVED, iova)
    if not _read128(mem, (lo & u.addr_mask) + (sid & 0xFF) * 16, &lo, &hi):
        return _fault(d, FR_CONTEXT_TABLE_READ, iova)
    d.nrefs += 1
    d.context_lo, d.context_hi = lo, hi
    # QEMU reads FPD from the entry it fetched, present or not (hv.md §3.5).
    d.fpd = (lo & CONTEXT_FPD) != 0
    if not lo & VTD_PRESENT:
        return _fault(d, FR_CONTEXT_NOT_PRESENT, iova)
    if lo & u.context_rsvd_lo or hi & u.context_rsvd_hi:
        return _fault(d, FR_CONTEXT_RESERVED, iova)
    aw = hi & CONTEXT_AW_MASK
    tt = (lo >> CONTEXT_TT_SHIFT) & 3
    if (aw < 1 or aw > 3 or not (u.sagaw >> aw) & 1 or tt == TT_RESERVED
            or (tt == TT_DEVICE_TLB and not u.device_tlb)
            or (tt == TT_PASS_THROUGH and not u.pass_through)):
        return _fault(d, FR_CONTEXT_INVALID, iova)
    if c != NULL:
        c.lo, c.hi, c.sid = lo, hi, sid
        c.did = <uint16_t>(hi >> CONTEXT_DID_SHIFT)
        c.valid = 1
    return FP_VTD_OK


cdef inline int _walk(const fp_hostmem *mem, const fp_vtd *u, fp_vtd_caches *caches,
                      uint16_t sid, uint64_t iova, uint32_t acc, fp_dma *d) noexcept nogil:
    # hv.md §3.4, in its order of checks (QEMU's: each level's permission before its reserved
    # bits, §8 item 9).
    cdef uint64_t e, table, mask
    cdef uint32_t aw, levels, level, width
    cdef uint32_t need = SL_WRITE if acc & DMA_WRITE else SL_READ
    cdef uint32_t rights = SL_READ | SL_WRITE
    cdef bint leaf
    cdef int rc = _context_entry(mem, u, caches, sid, iova, d)
    if rc != FP_VTD_OK:
        return rc
    aw = d.context_hi & CONTEXT_AW_MASK
    d.tt = (d.context_lo >> CONTEXT_TT_SHIFT) & 3
    d.did = <uint32_t>((d.context_hi >> CONTEXT_DID_SHIFT) & 0xFFFF)
    # §3.7: only a context entry that allows the device TLB answers translation requests
    # (VT-d spec LCT.5; §8 item 10).
    if acc & DMA_TRANSLATION_REQUEST and d.tt != TT_DEVICE_TLB:
        return _fault(d, FR_TRANSLATION_BLOCKED, iova)
    if d.tt == TT_PASS_THROUGH:
        d.out_addr = iova
        d.level = 1
        d.perms = SL_READ | SL_WRITE
        d.leaf = 0
        return FP_VTD_OK
    levels = 2 + aw
    width = 30 + 9 * aw
    if u.mgaw < width:
        width = u.mgaw
    if width < 64 and iova >> width:
        return _fault(d, FR_ADDRESS_BEYOND_MGAW, iova)
    table = d.context_lo & u.addr_mask
    level = levels
    while True:
        if not fp_read64(mem, table + _entry_offset(iova, level), &e):
            return _fault(d, FR_PAGING_ENTRY_READ if level < levels else FR_CONTEXT_INVALID,
                          iova)
        d.nrefs += 1
        rights &= e & (SL_READ | SL_WRITE)
        if not e & need:
            return _fault(d, FR_WRITE if need == SL_WRITE else FR_READ, iova)
        leaf = level == 1 or (level <= 3 and e & SL_PAGE_SIZE)
        if e & u.sl_rsvd[level][leaf]:
            return _fault(d, FR_PAGING_ENTRY_RESERVED, iova)
        if leaf:
            break
        table = e & u.addr_mask
        level -= 1
    mask = _page_mask(level)
    d.out_addr = (e & u.addr_mask & ~mask) | (iova & mask)
    d.level = level
    d.leaf = e
    d.perms = rights
    return FP_VTD_OK


cdef int fp_vtd_translate(const fp_hostmem *mem, const fp_vtd *u, fp_vtd_caches *caches,
                          uint16_t sid, uint64_t iova, uint32_t acc, fp_dma *d) noexcept nogil:
    cdef fp_iotlb_entry *t
    cdef uint32_t want
    cdef int rc
    d.nrefs = 0
    d.reason = 0
    d.fpd = 0
    d.fault_addr = 0
    d.tt = 0
    if caches == NULL:
        return _walk(mem, u, NULL, sid, iova, acc, d)
    t = &caches.iotlb[_slot(iova >> 12 ^ <uint64_t>sid << 48, caches.iotlb_mask)]
    want = (SL_WRITE if acc & DMA_WRITE else SL_READ) | (
        IOTLB_ATS if acc & DMA_TRANSLATION_REQUEST else 0)
    # A hit must allow the access; anything else walks the tables, which decide.
    if t.valid and t.sid == sid and t.page == iova >> 12 and not want & ~t.perms:
        caches.stats.iotlb_hits += 1
        d.out_addr = t.out_page | (iova & 0xFFF)
        d.level = t.level
        d.perms = t.perms & (SL_READ | SL_WRITE)
        d.did = t.did
        d.leaf = 0
        return FP_VTD_OK
    caches.stats.iotlb_misses += 1
    rc = _walk(mem, u, caches, sid, iova, acc, d)
    # Pass-through translations are not cached (hv.md §3.4).
    if rc == FP_VTD_OK and d.tt != TT_PASS_THROUGH:
        t.valid = 1
        t.sid = sid
        t.did = <uint16_t>d.did
        t.page = iova >> 12
        t.out_page = d.out_addr >> 12 << 12
        t.level = <uint8_t>d.level
        t.perms = <uint8_t>(d.perms | (IOTLB_ATS if d.tt == TT_DEVICE_TLB else 0))
    return rc


cdef uint64_t fp_vtd_translate_burst(const fp_hostmem *mem, const fp_vtd *u,
                                     fp_vtd_caches *caches, uint16_t sid,
                                     const uint64_t *iovas, uint64_t n, uint32_t acc,
                                     uint64_t *out, uint8_t *reasons,
                                     uint64_t *nrefs) noexcept nogil:
    # SAFETY: iovas, out and reasons hold n elements each (the Python wrapper checks); every
    # table read inside is bounds-checked by fp_read64.
    cdef fp_dma d
    cdef uint64_t k, done = 0
    cdef int rc
    for k in range(n):
        rc = fp_vtd_translate(mem, u, caches, sid, iovas[k], acc, &d)
        reasons[k] = <uint8_t>d.reason
        out[k] = d.out_addr if rc == FP_VTD_OK else 0
        nrefs[0] += d.nrefs
        done += rc == FP_VTD_OK
    return done


# ---- the Python boundary ----------------------------------------------------------------------

cdef class VtdContext:
    # The C views one call needs: host memory, the prepared unit and its caches.
    cdef fp_hostmem mem
    cdef fp_vtd unit
    cdef fp_vtd_caches caches
    cdef fp_vtd_caches *caches_ptr
    cdef uint8_t[::1] _mem_view
    cdef uint8_t[::1] _iotlb_view
    cdef uint8_t[::1] _context_view
    cdef uint64_t[::1] _counters

    def __init__(self, uint8_t[::1] mem, uint64_t rtaddr, uint64_t cap, uint64_t ecap,
                 uint32_t haw, iotlb_entries, context_entries, counters):
        self._mem_view = mem
        self.mem.base = &mem[0] if mem.shape[0] else NULL
        self.mem.size = <uint64_t>mem.shape[0]
        if fp_vtd_prepare(&self.unit, rtaddr, cap, ecap, haw) != 0:
            raise ValueError(f"RTADDR {rtaddr:#x} or HAW {haw} cannot be walked")
        self.caches_ptr = NULL
        if iotlb_entries is not None:
            self._iotlb_view = iotlb_entries
            self._context_view = context_entries
            self._counters = counters
            n = self._iotlb_view.shape[0] // sizeof(fp_iotlb_entry)
            m = self._context_view.shape[0] // sizeof(fp_context_cache_entry)
            if (n == 0 or n & (n - 1) or m == 0 or m & (m - 1)
                    or <size_t>self._counters.shape[0] * 8 < sizeof(fp_vtd_stats)):
                raise ValueError("caches need power-of-two numbers of entries and counters")
            self.caches.iotlb = <fp_iotlb_entry *>&self._iotlb_view[0]
            self.caches.iotlb_mask = n - 1
            self.caches.contexts = <fp_context_cache_entry *>&self._context_view[0]
            self.caches.context_mask = m - 1
            self.caches.stats = <fp_vtd_stats *>&self._counters[0]
            self.caches_ptr = &self.caches


def translate(VtdContext s, uint16_t sid, uint64_t iova, uint32_t acc):
    """One translation: (code, out_addr, level, refs, perms, did, reason, fault_addr, fpd,
    leaf, tt)."""
    cdef fp_dma d
    cdef int rc = fp_vtd_translate(&s.mem, &s.unit, s.caches_ptr, sid, iova, acc, &d)
    return (rc, d.out_addr, d.level, d.nrefs, d.perms, d.did, d.reason, d.fault_addr, d.fpd,
            d.leaf, d.tt)


def translate_burst(VtdContext s, uint16_t sid, const uint64_t[::1] iovas, uint32_t acc,
                    uint64_t[::1] out, uint8_t[::1] reasons):
    """Translate every IOVA of iovas without the GIL: (succeeded, references)."""
    cdef uint64_t n = <uint64_t>iovas.shape[0]
    cdef uint64_t nrefs = 0
    if <uint64_t>out.shape[0] < n or <uint64_t>reasons.shape[0] < n:
        raise ValueError("out and reasons must hold an element per address")
    if n:
        with nogil:
            n = fp_vtd_translate_burst(&s.mem, &s.unit, s.caches_ptr, sid, &iovas[0], n, acc,
                                       &out[0], &reasons[0], &nrefs)
    return n, nrefs
