"""The Python face of the core's walkers: arguments checked, results named, faults raised."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fastpath._core import paging as _core
from fastpath._core.paging import Access, ControlBits, WalkCode, WalkFlags
from fastpath.errors import (
    EptMisconfig,
    EptViolation,
    GuestPageFault,
    NonCanonicalAddress,
    PagingStructureOutsideMemory,
)
from fastpath.hv._eptp import DEFAULT_CAPS, EptCaps, Eptp
from fastpath.hv._host_memory import host_buffer
from fastpath.hv._tlb import Tlb

ACCESS = {"r": Access.ACC_READ, "w": Access.ACC_WRITE, "x": Access.ACC_FETCH}

# What an EPT access is, for qualification bits 7 and 8 (hv.md §1.5): an access with no
# linear address (e.g. a PDPTE load), the access to the final translation of a linear address,
# or the read of a guest paging-structure entry for one.
GUEST_ACCESS = {
    "physical": 0,
    "final": WalkFlags.WALK_GLA_VALID | WalkFlags.WALK_GLA_TRANSLATED,
    "paging": WalkFlags.WALK_GLA_VALID,
}

# A 64-bit guest with paging as Linux runs one: CR0.PE|WP|PG, CR4.PAE, EFER.LME|LMA|NXE.
DEFAULT_CR0 = 1 | ControlBits.CR0_WP | 1 << ControlBits.CR0_PG_SHIFT
DEFAULT_CR4 = ControlBits.CR4_PAE
DEFAULT_EFER = ControlBits.EFER_LME | ControlBits.EFER_LMA | ControlBits.EFER_NXE


class EptTranslation(NamedTuple):
    """A GPA's translation: the HPA, the size of the page that maps it, the paging-structure
    reads it took (0 on a TLB hit), and the R/W/X the EPT entries grant together."""

    hpa: int
    page_size: int
    references: int
    permissions: str


class Translation(NamedTuple):
    """A GVA's translation through guest paging and EPT: the HPA, the GPA between, the page
    size (the smaller of the guest's and EPT's), and the paging-structure reads it took."""

    hpa: int
    gpa: int
    page_size: int
    references: int


def _permissions(bits: int) -> str:
    return "".join(c for c, b in zip("rwx", (1, 2, 4), strict=True) if bits & b)


def _access(access: str) -> int:
    try:
        return ACCESS[access]
    except KeyError:
        raise ValueError(f"access is 'r', 'w' or 'x', not {access!r}") from None


def _context(mem, eptp: int, caps: EptCaps, tlb: Tlb | None) -> _core.WalkContext:
    Eptp.decode(eptp, caps)
    if tlb is not None and tlb.caps.maxphyaddr != caps.maxphyaddr:
        raise ValueError("the TLB and the walk disagree on MAXPHYADDR")
    return _core.WalkContext(host_buffer(mem), eptp, caps.word, caps.maxphyaddr,
                             None if tlb is None else tlb.raw,
                             None if tlb is None else tlb.counters)


def _raise_fault(code: int, fault_addr: int, qualification: int, references: int,
                 gla: int | None) -> None:
    if code == WalkCode.FP_WALK_EPT_VIOLATION:
        valid = qualification & WalkFlags.WALK_GLA_VALID
        raise EptViolation(qualification, fault_addr, gla if valid else None, references)
    if code == WalkCode.FP_WALK_EPT_MISCONFIG:
        raise EptMisconfig(fault_addr, references)
    if code == WalkCode.FP_WALK_PAGE_FAULT:
        raise GuestPageFault(qualification, fault_addr, references)
    if code == WalkCode.FP_WALK_NONCANONICAL:
        raise NonCanonicalAddress(fault_addr)
    raise PagingStructureOutsideMemory(fault_addr, references)


def ept_walk(mem, eptp: int, gpa: int, access: str, *, caps: EptCaps = DEFAULT_CAPS,
             tlb: Tlb | None = None, set_ad: bool = False, guest_access: str = "physical",
             gla: int | None = None) -> EptTranslation:
    """Translate `gpa` through the EPT tables that `eptp` names in host memory `mem`.

    `access` is 'r', 'w' or 'x'. The walk reads only, unless `set_ad` asks it to set the EPT
    accessed and dirty flags (with EPTP[6], hv.md §1.7). `guest_access` ('physical', 'final',
    'paging') and `gla` fill the qualification's linear-address bits. Raises EptViolation,
    EptMisconfig, PagingStructureOutsideMemory, or InvalidEptp for an EPTP VM entry refuses.
    """
    acc = _access(access)
    if guest_access not in GUEST_ACCESS:
        raise ValueError(f"guest_access is one of {sorted(GUEST_ACCESS)}")
    if not 0 <= gpa < 1 << caps.maxphyaddr:
        raise ValueError(f"GPA {gpa:#x} is beyond MAXPHYADDR ({caps.maxphyaddr} bits)")
    flags = GUEST_ACCESS[guest_access] | (WalkFlags.WALK_SET_AD if set_ad else 0)
    code, hpa, _, level, refs, _, perms, fault, qual = _core.ept_translate(
        _context(mem, eptp, caps, tlb), gpa, acc, flags)
    if code != WalkCode.FP_WALK_OK:
        _raise_fault(code, fault, qual, refs, gla)
    return EptTranslation(hpa, 1 << (12 + 9 * (level - 1)), refs, _permissions(perms))


def walk_2d(mem, eptp: int, cr3: int, gva: int, access: str, *, cr0: int = DEFAULT_CR0,
            cr4: int = DEFAULT_CR4, efer: int = DEFAULT_EFER, user: bool = False,
            smap_ac: bool = False, caps: EptCaps = DEFAULT_CAPS, tlb: Tlb | None = None,
            vpid: int = 1, set_ad: bool = False) -> Translation:
    """Translate `gva` through the guest's IA-32e tables at `cr3` and EPT (hv.md §1.10).

    Every guest paging-structure read is itself an EPT access. `user` makes it a CPL-3 access;
    `smap_ac` is RFLAGS.AC for SMAP. The control registers default to a 64-bit guest with
    CR0.WP and EFER.NXE on (CR4.LA57 selects 5-level paging). Raises GuestPageFault (the
    guest's #PF, with its error code), NonCanonicalAddress (#GP), EptViolation, EptMisconfig
    or PagingStructureOutsideMemory. With `tlb`, combined translations are cached under `vpid`.
    """
    context, acc, flags = _context_2d(mem, eptp, cr3, access, cr0, cr4, efer, user, smap_ac,
                                      caps, tlb, set_ad)
    if not 0 <= gva < 1 << 64:
        raise ValueError(f"GVA {gva:#x} is not a 64-bit address")
    code, hpa, gpa, level, refs, _, _, fault, qual = _core.translate_2d(context, vpid, gva, acc,
                                                                        flags)
    if code != WalkCode.FP_WALK_OK:
        _raise_fault(code, fault, qual, refs, gva)
    return Translation(hpa, gpa, 1 << (12 + 9 * (level - 1)), refs)


def _context_2d(mem, eptp, cr3, access, cr0, cr4, efer, user, smap_ac, caps, tlb, set_ad):
    context = _context(mem, eptp, caps, tlb)
    context.set_guest(cr0, cr3, cr4, efer, caps.maxphyaddr)
    acc = (_access(access) | (Access.ACC_USER if user else 0)
           | (Access.ACC_SMAP_AC if smap_ac else 0))
    return context, acc, WalkFlags.WALK_SET_AD if set_ad else 0


class Burst(NamedTuple):
    """A burst's translations: hpas[k] for the k-th address (0 where it faulted), codes[k] the
    core's code for it (0 translated, 1 EPT violation, 2 EPT misconfiguration, 3 #PF, 5 a table
    outside host memory, 6 non-canonical), how many translated, and the paging-structure reads
    the whole burst made."""

    hpas: np.ndarray
    codes: np.ndarray
    translated: int
    references: int


def _burst_arrays(addrs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    addrs = np.ascontiguousarray(addrs, dtype=np.uint64)
    return addrs, np.empty(len(addrs), dtype=np.uint64), np.empty(len(addrs), dtype=np.uint8)


def ept_walk_burst(mem, eptp: int, gpas, access: str, *, caps: EptCaps = DEFAULT_CAPS,
                   tlb: Tlb | None = None, set_ad: bool = False):
    """Translate an array of GPAs in the core without the GIL; returns a Burst."""
    addrs, out, codes = _burst_arrays(gpas)
    if len(addrs) and int(addrs.max()) >> caps.maxphyaddr:
        raise ValueError(f"a GPA is beyond MAXPHYADDR ({caps.maxphyaddr} bits)")
    flags = WalkFlags.WALK_SET_AD if set_ad else 0
    done, refs = _core.ept_translate_burst(_context(mem, eptp, caps, tlb), addrs,
                                           _access(access), flags, out, codes)
    return Burst(out, codes, done, refs)


def walk_2d_burst(mem, eptp: int, cr3: int, gvas, access: str, *, cr0: int = DEFAULT_CR0,
                  cr4: int = DEFAULT_CR4, efer: int = DEFAULT_EFER, user: bool = False,
                  smap_ac: bool = False, caps: EptCaps = DEFAULT_CAPS, tlb: Tlb | None = None,
                  vpid: int = 1, set_ad: bool = False):
    """walk_2d over an array of GVAs without the GIL; returns a Burst."""
    context, acc, flags = _context_2d(mem, eptp, cr3, access, cr0, cr4, efer, user, smap_ac,
                                      caps, tlb, set_ad)
    addrs, out, codes = _burst_arrays(gvas)
    done, refs = _core.translate_2d_burst(context, vpid, addrs, acc, flags, out, codes)
    return Burst(out, codes, done, refs)
