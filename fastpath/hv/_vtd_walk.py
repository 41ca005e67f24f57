"""The Python face of the core's VT-d walk: arguments checked, results named, faults raised."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fastpath._core import vtd as _core
from fastpath._core.vtd import DmaAccess, FaultReason, VtdCode
from fastpath.errors import DmaFault
from fastpath.hv._host_memory import host_buffer
from fastpath.hv._vtd_caches import VtdCaches
from fastpath.hv._vtd_caps import DEFAULT_CAPS, VtdCaps

ACCESS = {"r": DmaAccess.DMA_READ, "w": DmaAccess.DMA_WRITE}

# hv.md §3.5: the reasons a context entry's FPD bit may suppress (QEMU's "qualified" faults).
QUALIFIED_REASONS = frozenset({
    FaultReason.FR_CONTEXT_NOT_PRESENT, FaultReason.FR_CONTEXT_INVALID,
    FaultReason.FR_ADDRESS_BEYOND_MGAW, FaultReason.FR_WRITE, FaultReason.FR_READ,
    FaultReason.FR_PAGING_ENTRY_READ, FaultReason.FR_PAGING_ENTRY_RESERVED,
    FaultReason.FR_TRANSLATION_BLOCKED,
})


class DmaTranslation(NamedTuple):
    """An IOVA's translation: the HPA (for a pass-through context, the IOVA itself), the size
    of the page that maps it, the root/context/second-level reads it took (0 on an IOTLB hit),
    the R/W the second-level entries grant together, and the context entry's domain ID."""

    hpa: int
    page_size: int
    references: int
    permissions: str
    domain_id: int


class DmaBurst(NamedTuple):
    """A burst's translations: hpas[k] for iovas[k] (0 where it faulted), reasons[k] 0 or its
    fault reason, how many translated, and the reads the whole burst made."""

    iovas: np.ndarray
    hpas: np.ndarray
    reasons: np.ndarray
    translated: int
    references: int


def context(mem, rtaddr: int, caps: VtdCaps, caches: VtdCaches | None) -> _core.VtdContext:
    """The core's view of a unit: host memory, RTADDR, CAP/ECAP and the caches (or None)."""
    return _core.VtdContext(host_buffer(mem), rtaddr, caps.cap, caps.ecap, caps.haw,
                            None if caches is None else caches.iotlb_raw,
                            None if caches is None else caches.context_raw,
                            None if caches is None else caches.counters)


def access_bits(access: str, translation_request: bool = False) -> int:
    """The core's DMA_* bits for 'r' or 'w', an ATS translation request if asked."""
    try:
        bits = ACCESS[access]
    except KeyError:
        raise ValueError(f"access is 'r' or 'w', not {access!r}") from None
    return bits | (DmaAccess.DMA_TRANSLATION_REQUEST if translation_request else 0)


def check_source_id(source_id: int) -> None:
    """ValueError unless source_id is a 16-bit bus:devfn."""
    if not 0 <= source_id < 1 << 16:
        raise ValueError(f"source-id {source_id:#x} is not a 16-bit bus:devfn")


def fault(reason: int, source_id: int, address: int, access: str,
          references: int = 0) -> DmaFault:
    """The DmaFault for a walk that stopped with `reason`; `qualified` says whether a context
    entry's FPD bit may suppress its recording (hv.md §3.5)."""
    return DmaFault(reason, source_id, address, access != "w", references,
                    reason in QUALIFIED_REASONS)


def translate_raw(core_context, source_id: int, iova: int, access: str,
                  translation_request: bool = False):
    """One core translation: (DmaTranslation, None) or (None, (reason, fault address,
    references, fpd))."""
    check_source_id(source_id)
    if not 0 <= iova < 1 << 64:
        raise ValueError(f"IOVA {iova:#x} is not a 64-bit address")
    code, out, level, refs, perms, did, reason, fault_addr, fpd, _, _ = _core.translate(
        core_context, source_id, iova, access_bits(access, translation_request))
    if code != VtdCode.FP_VTD_OK:
        return None, (reason, fault_addr, refs, bool(fpd))
    permissions = "".join(c for c, b in (("r", 1), ("w", 2)) if perms & b)
    return DmaTranslation(out, 1 << (12 + 9 * (level - 1)), refs, permissions, did), None


def translate(mem, rtaddr: int, source_id: int, iova: int, access: str, *,
              caps: VtdCaps = DEFAULT_CAPS, caches: VtdCaches | None = None,
              translation_request: bool = False) -> DmaTranslation:
    """Translate a DMA request of `source_id` to `iova` through the legacy-mode root table at
    `rtaddr` in host memory `mem` (hv.md §3.4); `access` is 'r' or 'w'.

    `caps` says what the unit supports; `caches` (a VtdCaches) makes the walk consult and fill
    a context cache and an IOTLB. `translation_request` makes it a device's ATS request, which
    only a device-TLB context entry answers. Raises DmaFault with the fault reason and the
    values a fault record would hold; a fault the context entry's FPD bit suppresses raises
    too, with `qualified` set (a unit records nothing for it). Nothing is recorded here: the
    unit (fastpath.hv.vtd.RemappingUnit) does that.
    """
    result, failure = translate_raw(context(mem, rtaddr, caps, caches), source_id, iova, access,
                                    translation_request)
    if result is not None:
        return result
    reason, address, refs, _ = failure
    raise fault(reason, source_id, address, access, refs)


def translate_burst(mem, rtaddr: int, source_id: int, iovas, access: str, *,
                    caps: VtdCaps = DEFAULT_CAPS, caches: VtdCaches | None = None) -> DmaBurst:
    """Translate an array of IOVAs of one source-id in the core without the GIL."""
    check_source_id(source_id)
    return burst_raw(context(mem, rtaddr, caps, caches), source_id, iovas, access)


def burst_raw(core_context, source_id: int, iovas, access: str) -> DmaBurst:
    """A burst through a prepared core context."""
    iovas = np.ascontiguousarray(iovas, dtype=np.uint64)
    out = np.empty(len(iovas), dtype=np.uint64)
    reasons = np.empty(len(iovas), dtype=np.uint8)
    done, refs = _core.translate_burst(core_context, source_id, iovas, access_bits(access), out,
                                       reasons)
    return DmaBurst(iovas, out, reasons, done, refs)
