"""Plain-Python EPT and guest IA-32e walks: the oracle for fastpath.hv.ept and fastpath.hv.paging.

Written from the Intel SDM (Vol. 3A §4.5-4.7, Vol. 3C §28.2) as digested in shared/specs/hv.md
§1, independently of the core: its own bit constants, its own order of reasoning (entries are
decoded into fields first, then judged), so that it catches the core's mistakes rather than
repeating them. It never sets accessed or dirty flags and has no TLB. Faults are the same
fastpath.errors classes the public walkers raise, with the same fields.
"""

from __future__ import annotations

from fastpath.errors import (
    EptMisconfig,
    EptViolation,
    GuestPageFault,
    NonCanonicalAddress,
    PagingStructureOutsideMemory,
)

READ, WRITE, FETCH = 1, 2, 4
_ACCESS = {"r": READ, "w": WRITE, "x": FETCH}
GLA_VALID, GLA_TRANSLATED = 1 << 7, 1 << 8
PAGE_SIZE_OF_LEVEL = {1: 1 << 12, 2: 1 << 21, 3: 1 << 30}


def _bytes(mem) -> memoryview:
    # Any byte buffer, or fastpath.hv.HostMemory through its array.
    return memoryview(getattr(mem, "array", mem)).cast("B")


def _read_entry(mem: memoryview, hpa: int, refs: int) -> int:
    if hpa < 0 or hpa + 8 > len(mem):
        raise PagingStructureOutsideMemory(hpa, refs)
    return int.from_bytes(mem[hpa : hpa + 8], "little")


def _field(value: int, high: int, low: int) -> int:
    return (value >> low) & ((1 << (high - low + 1)) - 1)


def _ept_entry_is_misconfigured(entry: int, level: int, is_leaf: bool, caps_word: int,
                                maxphyaddr: int) -> bool:
    # SDM Vol. 3C §28.2.3.1.
    xwr = entry & 7
    if xwr in (0b010, 0b110):
        return True
    if xwr == 0b100 and not caps_word & 1:
        return True
    if maxphyaddr < 52 and _field(entry, 51, maxphyaddr):
        return True
    if level >= 4:
        return bool(_field(entry, 7, 3))          # PML4E/PML5E: bits 7:3 reserved
    if not is_leaf:
        return bool(_field(entry, 6, 3))          # non-leaf PDPTE/PDE: bits 6:3 reserved
    if level == 3 and (not caps_word >> 17 & 1 or _field(entry, 29, 12)):
        return True
    if level == 2 and (not caps_word >> 16 & 1 or _field(entry, 20, 12)):
        return True
    return _field(entry, 5, 3) in (2, 3, 7)


def ept_walk(mem, eptp: int, gpa: int, access: str, *, caps_word: int, maxphyaddr: int = 46,
             guest_access: str = "physical", gla: int | None = None,
             refs: int = 0) -> tuple[int, int, int]:
    """(hpa, page_size, references) for gpa, or the EPT fault the walk ends in.

    guest_access is 'physical', 'final' or 'paging' (qualification bits 7 and 8); `access` is
    'r', 'w' or 'x', or a set of those letters (a guest paging access with EPT A/D on is 'rw').
    `refs` counts reads made before this walk (a 2-D walk's), so faults carry the total.
    """
    mem = _bytes(mem)
    wanted = sum(_ACCESS[a] for a in set(access))
    extra = {"physical": 0, "final": GLA_VALID | GLA_TRANSLATED, "paging": GLA_VALID}[guest_access]
    levels = _field(eptp, 5, 3) + 1
    address_bits = (1 << maxphyaddr) - 1
    table = eptp & address_bits & ~0xFFF
    allowed = 0b111
    level = levels
    while True:
        index = _field(gpa, 12 + 9 * level - 1, 12 + 9 * (level - 1))
        entry = _read_entry(mem, table + 8 * index, refs)
        refs += 1
        if entry & 7 == 0:
            raise EptViolation(wanted | extra, gpa, gla if extra else None, refs)
        is_leaf = level == 1 or (level in (2, 3) and bool(entry >> 7 & 1))
        if _ept_entry_is_misconfigured(entry, level, is_leaf, caps_word, maxphyaddr):
            raise EptMisconfig(gpa, refs)
        allowed &= entry & 7
        if is_leaf:
            break
        table = entry & address_bits & ~0xFFF
        level -= 1
    if wanted & allowed != wanted:
        raise EptViolation(wanted | allowed << 3 | extra, gpa, gla if extra else None, refs)
    size = PAGE_SIZE_OF_LEVEL[level]
    return (entry & address_bits & ~(size - 1)) + gpa % size, size, refs


def walk_2d(mem, eptp: int, cr3: int, gva: int, access: str, *, cr0: int, cr4: int, efer: int,
            user: bool = False, smap_ac: bool = False, caps_word: int,
            maxphyaddr: int = 46) -> tuple[int, int, int, int]:
    """(hpa, gpa, page_size, references) for gva through guest IA-32e paging and EPT.

    Raises NonCanonicalAddress, GuestPageFault, or the EPT faults of the walk they happen in.
    """
    mem = _bytes(mem)
    la57 = bool(cr4 >> 12 & 1)
    nxe = bool(efer >> 11 & 1)
    wp, smep, smap = bool(cr0 >> 16 & 1), bool(cr4 >> 20 & 1), bool(cr4 >> 21 & 1)
    levels = 5 if la57 else 4
    width = 12 + 9 * levels
    sign = gva >> (width - 1)
    if sign not in (0, (1 << (64 - width + 1)) - 1):
        raise NonCanonicalAddress(gva)
    ept_ad = bool(eptp >> 6 & 1)
    # SDM Vol. 3C §28.2.3.2: with EPT A/D on, guest paging-structure reads count as writes.
    table_access = "rw" if ept_ad else "r"
    address_bits = (1 << maxphyaddr) - 1

    def fault(present: bool, reserved: bool = False) -> GuestPageFault:
        code = (int(present) | int(access == "w") << 1 | int(user) << 2 | int(reserved) << 3
                | int(access == "x" and (nxe or smep)) << 4)
        return GuestPageFault(code, gva, refs)

    refs = 0
    table = cr3 & address_bits & ~0xFFF
    writable = user_ok = True
    no_execute = False
    level = levels
    while True:
        index = _field(gva, 12 + 9 * level - 1, 12 + 9 * (level - 1))
        entry_hpa, _, refs = ept_walk(mem, eptp, table + 8 * index, table_access,
                                      caps_word=caps_word, maxphyaddr=maxphyaddr,
                                      guest_access="paging", gla=gva, refs=refs)
        entry = _read_entry(mem, entry_hpa, refs)
        refs += 1
        if not entry & 1:
            raise fault(present=False)
        big = bool(entry >> 7 & 1)
        is_leaf = level == 1 or (level in (2, 3) and big)
        reserved = (maxphyaddr < 52 and _field(entry, 51, maxphyaddr) != 0) or (
            not nxe and entry >> 63)
        if level >= 4 and big:
            reserved = True
        if is_leaf and level == 3 and _field(entry, 29, 13):
            reserved = True
        if is_leaf and level == 2 and _field(entry, 20, 13):
            reserved = True
        if reserved:
            raise fault(present=True, reserved=True)
        writable = writable and bool(entry & 2)
        user_ok = user_ok and bool(entry & 4)
        no_execute = no_execute or (nxe and bool(entry >> 63))
        if is_leaf:
            break
        table = entry & address_bits & ~0xFFF
        level -= 1
    # SDM Vol. 3A §4.6.
    if user:
        refused = (not user_ok or (access == "w" and not writable)
                   or (access == "x" and no_execute))
    elif access == "x":
        refused = no_execute or (user_ok and smep)
    else:
        refused = (user_ok and smap and not smap_ac) or (access == "w" and wp and not writable)
    if refused:
        raise fault(present=True)
    size = PAGE_SIZE_OF_LEVEL[level]
    gpa = (entry & address_bits & ~(size - 1)) + gva % size
    hpa, ept_size, refs = ept_walk(mem, eptp, gpa, access, caps_word=caps_word,
                                   maxphyaddr=maxphyaddr, guest_access="final", gla=gva,
                                   refs=refs)
    return hpa, gpa, min(size, ept_size), refs
