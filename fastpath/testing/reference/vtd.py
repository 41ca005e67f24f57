"""Plain-Python VT-d DMA remapping in legacy mode: the oracle for fastpath.hv.vtd.translate.

Written from the VT-d spec (§3.4, §9.1-9.3, §9.8, fault reasons of §7.1.3) as digested in
shared/specs/hv.md §3.2-3.5, independently of the core: its own bit constants and its own
order of reasoning (each entry is decoded into named fields first, then judged field by
field), so that it catches the core's mistakes rather than repeating them. It has no caches
and records nothing; faults are fastpath.errors.DmaFault with the fields the public walk fills.
"""

from __future__ import annotations

from fastpath.errors import DmaFault

# Fault reasons (hv.md §3.5) and which of them a context entry's FPD may suppress.
ROOT_NOT_PRESENT, CONTEXT_NOT_PRESENT, CONTEXT_INVALID, BEYOND_MGAW = 1, 2, 3, 4
NO_WRITE, NO_READ, PAGING_READ_ERROR, ROOT_READ_ERROR, CONTEXT_READ_ERROR = 5, 6, 7, 8, 9
ROOT_RESERVED, CONTEXT_RESERVED, PAGING_RESERVED, BLOCKED = 0xA, 0xB, 0xC, 0xD
QUALIFIED = {2, 3, 4, 5, 6, 7, 0xC, 0xD}


def _bits(value: int, high: int, low: int) -> int:
    return (value >> low) & ((1 << (high - low + 1)) - 1)


def _reader(mem):
    data = memoryview(getattr(mem, "array", mem)).cast("B")

    def read(hpa: int, size: int) -> int | None:
        if hpa < 0 or hpa + size > len(data):
            return None
        return int.from_bytes(data[hpa : hpa + size], "little")
    return read


def translate(mem, rtaddr: int, source_id: int, iova: int, access: str, *, cap: int, ecap: int,
              haw: int = 46, translation_request: bool = False) -> tuple[int, int, int, str, int]:
    """(hpa, page_size, references, permissions, domain_id) for a DMA request, or DmaFault."""
    read = _reader(mem)
    is_write = access == "w"
    refs = 0

    def fail(reason: int) -> DmaFault:
        # The stateless walk raises even what FPD would suppress (the unit decides).
        return DmaFault(reason, source_id, iova - iova % 4096, not is_write, refs,
                        reason in QUALIFIED)

    sagaw, mgaw = _bits(cap, 12, 8), _bits(cap, 21, 16) + 1
    has_2m, has_1g = bool(cap >> 34 & 1), bool(cap >> 35 & 1)
    has_dt, has_pt, has_sc = bool(ecap >> 2 & 1), bool(ecap >> 6 & 1), bool(ecap >> 7 & 1)
    above_haw = (1 << 64) - (1 << haw)

    # Root entry: indexed by bus.
    bus, devfn = source_id >> 8, source_id & 0xFF
    root_table = rtaddr & ~0xFFF & ((1 << haw) - 1)
    root = read(root_table + 16 * bus, 16)
    if root is None:
        raise fail(ROOT_READ_ERROR)
    refs += 1
    root_lo, root_hi = root & (1 << 64) - 1, root >> 64
    if not root_lo & 1:
        raise fail(ROOT_NOT_PRESENT)
    if _bits(root_lo, 11, 1) or root_lo & above_haw or root_hi:
        raise fail(ROOT_RESERVED)

    # Context entry: indexed by devfn.
    context = read((root_lo & ~0xFFF) + 16 * devfn, 16)
    if context is None:
        raise fail(CONTEXT_READ_ERROR)
    refs += 1
    present = context & 1
    tt = _bits(context, 3, 2)
    slptptr = context & ((1 << 64) - 1) & ~0xFFF
    aw, did = _bits(context, 66, 64), _bits(context, 87, 72)
    if not present:
        raise fail(CONTEXT_NOT_PRESENT)
    if (_bits(context, 11, 4) or slptptr & above_haw or _bits(context, 127, 88)
            or context >> 71 & 1):
        raise fail(CONTEXT_RESERVED)
    tt_ok = {0: True, 1: has_dt, 2: has_pt, 3: False}[tt]
    if aw not in (1, 2, 3) or not sagaw >> aw & 1 or not tt_ok:
        raise fail(CONTEXT_INVALID)
    if translation_request and tt != 1:
        raise fail(BLOCKED)
    if tt == 2:
        return iova, 4096, refs, "rw", did

    levels = aw + 2
    if iova >> min(30 + 9 * aw, mgaw):
        raise fail(BEYOND_MGAW)
    readable = writable = True
    table = slptptr
    for level in range(levels, 0, -1):
        index = _bits(iova, 12 + 9 * level - 1, 12 + 9 * (level - 1))
        entry = read(table + 8 * index, 8)
        if entry is None:
            raise fail(PAGING_READ_ERROR if level != levels else CONTEXT_INVALID)
        refs += 1
        readable = readable and bool(entry & 1)
        writable = writable and bool(entry & 2)
        if (is_write and not entry & 2) or (not is_write and not entry & 1):
            raise fail(NO_WRITE if is_write else NO_READ)
        large = bool(entry >> 7 & 1)
        last = level == 1 or (level in (2, 3) and large)
        bad = bool(_bits(entry, 51, haw)) if haw < 52 else False
        if entry >> 62 & 1 and not (last and has_dt):
            bad = True                              # TM
        if entry >> 11 & 1 and not (last and has_sc):
            bad = True                              # SNP
        if level >= 4 and large:
            bad = True
        if last and level == 3 and (not has_1g or _bits(entry, 29, 12)):
            bad = True
        if last and level == 2 and (not has_2m or _bits(entry, 20, 12)):
            bad = True
        if bad:
            raise fail(PAGING_RESERVED)
        if last:
            size = 1 << (12 + 9 * (level - 1))
            frame = entry & ((1 << haw) - 1) & ~(size - 1)
            perms = ("r" if readable else "") + ("w" if writable else "")
            return frame + iova % size, size, refs, perms, did
        table = entry & ((1 << haw) - 1) & ~0xFFF
    raise AssertionError("a level-1 entry is always the last")
