"""A DMA-remapping unit as software sees it: the register file at its MMIO offsets, the
command/status handshake, fault recording and the fault event, register-based and queued
invalidation, and DMA requests translated through its caches (hv.md §3.1-3.7).

Interrupts the unit sends (the fault event, the invalidation completion event) are MSIs: it
calls `msi(address, data)`, by default appending to `interrupts`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from fastpath.errors import DmaFault
from fastpath.hv._host_memory import host_buffer
from fastpath.hv._tables import PAGE_4K
from fastpath.hv._vtd_caches import VtdCaches
from fastpath.hv._vtd_caps import DEFAULT_CAPS, VtdCaps
from fastpath.hv._vtd_interrupts import InterruptEntryCache, remap_interrupt
from fastpath.hv._vtd_invalidation import Invalidation, InvalidationListener
from fastpath.hv._vtd_queue import DescriptorType, Granularity
from fastpath.hv._vtd_queue import run as run_queue
from fastpath.hv._vtd_regs import (
    CCMD_CAIG_SHIFT,
    CCMD_CIRG_SHIFT,
    CCMD_ICC,
    EVENT_IM,
    EVENT_IP,
    FRCD_FAULT,
    FSTS_FRI_SHIFT,
    ICS_IWC,
    IOTLB_DID_SHIFT,
    IOTLB_IAIG_SHIFT,
    IOTLB_IIRG_SHIFT,
    IOTLB_IVT,
    VERSION,
    Fsts,
    Gcmd,
    Reg,
    RegisterFile,
)
from fastpath.hv._vtd_walk import DmaBurst, DmaTranslation, burst_raw, context, fault, translate_raw

if TYPE_CHECKING:
    from fastpath.hv._vtd_device_tlb import DeviceTlb

# hv.md §3.4: requests to this range are interrupt requests, never translated.
INTERRUPT_RANGE = range(0xFEE00000, 0xFEF00000)
_PENDING = Fsts.PPF | Fsts.PFO | Fsts.IQE       # a fault event is outstanding (hv.md §3.5)
# The GCMD bits whose status is a level in GSTS (the rest are one-shot commands).
_LEVELS = Gcmd.TE | Gcmd.QIE | Gcmd.IRE | Gcmd.CFI


class RemappingUnit:
    """One VT-d remapping unit over host memory `mem`, with the capabilities `caps`.

    Software programs it through `read(offset, size)` and `write(offset, size, value)` (4- or
    8-byte accesses, naturally aligned; reserved offsets read 0 and ignore writes). Devices
    reach it through `dma()` / `dma_burst()` (their DMA), `translation_request()` (ATS) and
    `remap_interrupt()` (their MSIs). Faults are recorded in the fault recording registers and
    raise (DmaFault, InterruptRemappingFault); a fault suppressed by FPD still raises, with
    nothing recorded. `caches` (a VtdCaches) are the context cache and the IOTLB;
    `interrupt_entries` the interrupt entry cache; `device_tlbs` the ATS caches of devices
    that attached one (fastpath.hv.vtd.DeviceTlb), by source-id. Whatever else caches its
    translations (a vIOMMU's copies in a vhost-user back-end) hears of every invalidation
    through `add_invalidation_listener`.
    """

    def __init__(self, mem, caps: VtdCaps = DEFAULT_CAPS, *, caches: VtdCaches | None = None,
                 msi: Callable[[int, int], None] | None = None):
        self.mem = host_buffer(mem)
        self.caps = caps
        self.caches = caches or VtdCaches()
        self.interrupt_entries = InterruptEntryCache()
        self.device_tlbs: dict[int, DeviceTlb] = {}
        self.interrupts: list[tuple[int, int]] = []
        self.posted_notifications: list[tuple[int, int]] = []
        self._msi = msi or (lambda address, data: self.interrupts.append((address, data)))
        self.regs = RegisterFile(caps.fault_records)
        self.regs.set(Reg.VER, VERSION)
        self.regs.set(Reg.CAP, caps.cap)
        self.regs.set(Reg.ECAP, caps.ecap)
        self.regs.set(Reg.FECTL, EVENT_IM)
        self.regs.set(Reg.IECTL, EVENT_IM)
        self.root_table: int | None = None       # latched by SRTP
        self.interrupt_table: int | None = None  # IRTA, latched by SIRTP
        self._next_record = 0
        self._core = None
        self._listeners: list[InvalidationListener] = []

    # --- the register interface ---

    def read(self, offset: int, size: int) -> int:
        """A model MMIO read of `size` (4 or 8) bytes at `offset`."""
        return self.regs.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        """A model MMIO write: read-only bits keep their value, write-1-to-clear bits clear,
        and commands and doorbells take effect."""
        done = self.regs.write(offset, size, value)
        if done is None:
            return
        register, old, new = done
        handler = {
            Reg.GCMD: self._gcmd, Reg.CCMD: self._ccmd, Reg.IOTLB: self._iotlb_command,
            Reg.FSTS: self._fsts, Reg.FECTL: self._fectl, Reg.ICS: self._ics,
            Reg.IECTL: self._iectl, Reg.IQT: self._iqt,
        }.get(register)
        if handler is not None:
            handler(old, new)
        elif register >= Reg.FRCD and (register - Reg.FRCD) % 16 == 8:
            self._update_ppf()

    def _gcmd(self, _old: int, command: int) -> None:
        # hv.md §3.1: software writes GSTS's levels with one command bit changed; one-shot
        # commands (SRTP, SIRTP) set their status bit when done. GCMD itself reads 0.
        self.regs.set(Reg.GCMD, 0)
        status = self.regs.get(Reg.GSTS)
        if command & Gcmd.SRTP:
            self.root_table = self.regs.get(Reg.RTADDR)
            self._core = None
            status |= Gcmd.SRTP
        if command & Gcmd.SIRTP:
            self.interrupt_table = self.regs.get(Reg.IRTA)
            status |= Gcmd.SIRTP
        if command & Gcmd.QIE and not status & Gcmd.QIE:
            self.regs.set(Reg.IQH, 0)
        elif status & Gcmd.QIE and not command & Gcmd.QIE:
            if self.regs.get(Reg.IQH) != self.regs.get(Reg.IQT):
                command |= Gcmd.QIE          # VT-d §6.5.2: QI stays on until the queue drains
            else:
                self.regs.set(Reg.IQH, 0)
        supported = Gcmd.TE | Gcmd.CFI | (Gcmd.QIE if self.caps.queued_invalidation else 0) | (
            Gcmd.IRE if self.caps.interrupt_remapping else 0)
        status = status & ~_LEVELS | command & _LEVELS & supported
        self.regs.set(Reg.GSTS, status)
        if command & status & Gcmd.QIE:
            self._iqt(0, self.regs.get(Reg.IQT))

    @property
    def enabled(self) -> bool:
        """GSTS.TES: DMA remapping is on."""
        return bool(self.regs.get(Reg.GSTS) & Gcmd.TE)

    @property
    def queued(self) -> bool:
        """GSTS.QIES: queued invalidation is on (and register-based invalidation off)."""
        return bool(self.regs.get(Reg.GSTS) & Gcmd.QIE)

    def _ccmd(self, _old: int, value: int) -> None:
        # hv.md §3.6: CIRG 62:61 asks, CAIG 60:59 answers (0: not done); ICC clears when done.
        if not value & CCMD_ICC:
            return
        granularity = value >> CCMD_CIRG_SHIFT & 3
        done = not self.queued and self.invalidate_context_cache(
            granularity, value & 0xFFFF, value >> 16 & 0xFFFF, value >> 32 & 3)
        value &= ~(CCMD_ICC | 3 << CCMD_CAIG_SHIFT)
        self.regs.set(Reg.CCMD, value | (granularity if done else 0) << CCMD_CAIG_SHIFT)

    def _iotlb_command(self, _old: int, value: int) -> None:
        # IIRG 61:60 asks, IAIG 58:57 answers; a PSI takes its address and mask from IVA.
        if not value & IOTLB_IVT:
            return
        granularity = value >> IOTLB_IIRG_SHIFT & 3
        iva = self.regs.get(Reg.IVA)
        done = not self.queued and self.invalidate_iotlb(
            granularity, value >> IOTLB_DID_SHIFT & 0xFFFF, iva & ~0xFFF, iva & 0x3F)
        value &= ~(IOTLB_IVT | 3 << IOTLB_IAIG_SHIFT)
        self.regs.set(Reg.IOTLB, value | (granularity if done else 0) << IOTLB_IAIG_SHIFT)

    # --- invalidation, shared by the registers and the queue ---

    def add_invalidation_listener(self, listener: InvalidationListener) -> None:
        """Tell `listener` of every context-cache, IOTLB and device-TLB invalidation from now
        on, register-based or queued, as it is carried out: after the unit's own caches
        dropped their entries, before anything queued behind it (a wait descriptor's status
        write and completion event) runs. Listeners are told in the order they were added."""
        self._listeners.append(listener)

    def remove_invalidation_listener(self, listener: InvalidationListener) -> None:
        """Stop telling `listener` (ValueError if it was never added)."""
        self._listeners.remove(listener)

    def _tell(self, invalidation: Invalidation) -> None:
        for listener in tuple(self._listeners):
            listener(invalidation)

    def invalidate_context_cache(self, granularity: int, did: int = 0, sid: int = 0,
                                 function_mask: int = 0) -> bool:
        """Context-cache invalidation, global (1), domain- (2) or device-selective (3), told
        to the invalidation listeners; False (and nothing done) for granularity 0."""
        if granularity == Granularity.GLOBAL:
            self.caches.invalidate_contexts()
        elif granularity == Granularity.DOMAIN:
            self.caches.invalidate_contexts_of_domain(did)
        elif granularity == Granularity.DEVICE_OR_PAGE:
            self.caches.invalidate_context_of_device(sid, function_mask)
        else:
            return False
        self._tell(Invalidation(DescriptorType.CONTEXT_CACHE, Granularity(granularity), did,
                                sid, function_mask))
        return True

    def invalidate_iotlb(self, granularity: int, did: int = 0, address: int = 0,
                         address_mask: int = 0) -> bool:
        """IOTLB invalidation, global (1), domain- (2) or page-selective (3, the 2^AM pages at
        address), told to the invalidation listeners; False (and nothing done) for
        granularity 0 or an AM above CAP.MAMV."""
        size = 0
        if granularity == Granularity.GLOBAL:
            self.caches.invalidate_iotlb()
        elif granularity == Granularity.DOMAIN:
            self.caches.invalidate_iotlb_of_domain(did)
        elif granularity == Granularity.DEVICE_OR_PAGE and address_mask <= self.caps.mamv:
            self.caches.invalidate_iotlb_pages(did, address, address_mask)
            size = PAGE_4K << address_mask
            # hv.md §3.6: ADDR is aligned to the 2^AM pages it names.
            address &= ~(size - 1)
        else:
            return False
        self._tell(Invalidation(DescriptorType.IOTLB, Granularity(granularity), did,
                                address=address, size=size))
        return True

    def invalidate_device_tlb(self, sid: int, address: int, size: int) -> None:
        """Pass a device-TLB invalidation to the device's ATS cache, if it has one, and to
        the listeners."""
        device_tlb = self.device_tlbs.get(sid)
        if device_tlb is not None:
            device_tlb.invalidate(address, size)
        self._tell(Invalidation(DescriptorType.DEVICE_TLB, Granularity.DEVICE_OR_PAGE,
                                source_id=sid, address=address, size=size))

    def invalidate_interrupt_entries(self, index: int | None = None, count: int = 1) -> None:
        """Interrupt-entry-cache invalidation: all entries, or `count` from `index`."""
        self.interrupt_entries.invalidate(index, count)

    # --- queued invalidation ---

    def queue_geometry(self) -> tuple[int, int, int]:
        """(base, descriptor size, entries) from IQA (hv.md §3.6)."""
        iqa = self.regs.get(Reg.IQA)
        wide = iqa >> 11 & 1
        return iqa & ~0xFFF, 16 << wide, (1 << ((iqa & 7) + 8)) >> wide

    def _index_shift(self) -> int:
        return 4 + (self.regs.get(Reg.IQA) >> 11 & 1)

    def queue_head(self) -> int:
        """IQH as a descriptor index."""
        return self.regs.get(Reg.IQH) >> self._index_shift()

    def queue_tail(self) -> int:
        """IQT as a descriptor index."""
        return self.regs.get(Reg.IQT) >> self._index_shift()

    def set_queue_head(self, index: int) -> None:
        """Advance IQH to descriptor `index`."""
        self.regs.set(Reg.IQH, index << self._index_shift())

    def queue_error(self, _index: int) -> None:
        """A descriptor the unit refuses: FSTS.IQE and the fault event; IQH stays on it."""
        self._set_fsts(Fsts.IQE)

    def _iqt(self, _old: int, _new: int) -> None:
        if self.queued and not self.regs.get(Reg.FSTS) & Fsts.IQE:
            run_queue(self)

    def complete_wait(self, status_address: int | None, status_data: int,
                      interrupt: bool) -> bool:
        """An invalidation wait descriptor: write the status, raise the completion event if
        asked; False when the status address is outside host memory."""
        if status_address is not None:
            if not self.write_memory(status_address, 4, status_data):
                return False
        if interrupt and not self.regs.get(Reg.ICS) & ICS_IWC:
            self.regs.set(Reg.ICS, ICS_IWC)
            self._event(Reg.IECTL, Reg.IEADDR, Reg.IEUADDR, Reg.IEDATA)
        return True

    def read_memory(self, hpa: int, size: int) -> int | None:
        """size bytes at hpa, little-endian, or None outside host memory."""
        if not 0 <= hpa <= len(self.mem) - size:
            return None
        return int.from_bytes(self.mem[hpa : hpa + size].tobytes(), "little")

    def write_memory(self, hpa: int, size: int, value: int) -> bool:
        """Store size bytes at hpa; False outside host memory."""
        if not 0 <= hpa <= len(self.mem) - size:
            return False
        self.mem[hpa : hpa + size] = list(value.to_bytes(size, "little"))
        return True

    # --- events ---

    def _event(self, control: int, address: int, upper: int, data: int) -> None:
        # hv.md §3.5: IP set; unless masked, the MSI goes out and IP clears again.
        if self.regs.get(control) & EVENT_IM:
            self.regs.set(control, self.regs.get(control) | EVENT_IP)
            return
        self.regs.set(control, self.regs.get(control) & ~EVENT_IP)
        self._msi(self.regs.get(address) | self.regs.get(upper) << 32, self.regs.get(data))

    def _fault_event(self, pending_before: int) -> None:
        if not pending_before & _PENDING:
            self._event(Reg.FECTL, Reg.FEADDR, Reg.FEUADDR, Reg.FEDATA)

    def _set_fsts(self, bits: int) -> None:
        before = self.regs.get(Reg.FSTS)
        self.regs.set(Reg.FSTS, before | bits)
        self._fault_event(before)

    def _fsts(self, _old: int, new: int) -> None:
        # Clearing the last pending condition clears FECTL.IP (QEMU's vtd_fsts_clear_ip).
        if not new & _PENDING:
            self.regs.set(Reg.FECTL, self.regs.get(Reg.FECTL) & ~EVENT_IP)

    def _fectl(self, old: int, new: int) -> None:
        # Unmasking with an event pending sends it.
        if old & EVENT_IM and not new & EVENT_IM and new & EVENT_IP:
            self._event(Reg.FECTL, Reg.FEADDR, Reg.FEUADDR, Reg.FEDATA)

    def _ics(self, _old: int, new: int) -> None:
        if not new & ICS_IWC:
            self.regs.set(Reg.IECTL, self.regs.get(Reg.IECTL) & ~EVENT_IP)

    def _iectl(self, old: int, new: int) -> None:
        if old & EVENT_IM and not new & EVENT_IM and new & EVENT_IP:
            self._event(Reg.IECTL, Reg.IEADDR, Reg.IEUADDR, Reg.IEDATA)

    # --- fault recording (hv.md §3.5) ---

    def _record_offset(self, index: int) -> int:
        return Reg.FRCD + 16 * index

    def records(self) -> list[tuple[int, int]]:
        """Every fault recording register as (lo, hi), in index order."""
        return [(self.regs.get(self._record_offset(k)), self.regs.get(self._record_offset(k) + 8))
                for k in range(self.caps.fault_records)]

    def _update_ppf(self) -> None:
        fsts = self.regs.get(Reg.FSTS)
        if any(hi & FRCD_FAULT for _, hi in self.records()):
            self.regs.set(Reg.FSTS, fsts | Fsts.PPF)
        else:
            self.regs.set(Reg.FSTS, fsts & ~Fsts.PPF)
            self._fsts(0, fsts & ~Fsts.PPF)

    def record(self, error: DmaFault) -> bool:
        """Record a fault as QEMU's vtd_report_dmar_fault does: dropped while FSTS.PFO is set
        or when a pending record has the same source-id; PFO when the next record is still
        pending; else written round-robin, PPF and FRI updated and the fault event raised.
        Returns whether it was written."""
        fsts = self.regs.get(Reg.FSTS)
        if fsts & Fsts.PFO:
            return False
        if any(hi & FRCD_FAULT and hi & 0xFFFF == error.source_id for _, hi in self.records()):
            return False
        index = self._next_record
        at = self._record_offset(index)
        if self.regs.get(at + 8) & FRCD_FAULT:
            self._set_fsts(Fsts.PFO)
            return False
        lo, hi = error.record
        self.regs.set(at, lo)
        self.regs.set(at + 8, hi)
        self._next_record = (index + 1) % self.caps.fault_records
        if not fsts & Fsts.PPF:
            fri = index << FSTS_FRI_SHIFT
            self.regs.set(Reg.FSTS, fsts & ~(0xFF << FSTS_FRI_SHIFT) | fri | Fsts.PPF)
            self._fault_event(fsts)
        return True

    # --- requests from devices ---

    def _context(self):
        if self._core is None:
            self._core = context(self.mem, self.root_table, self.caps, self.caches)
        return self._core

    def _check_dma(self, iova: int) -> None:
        if iova in INTERRUPT_RANGE:
            raise ValueError(f"{iova:#x} is an interrupt request: remap_interrupt() takes it")

    def dma(self, source_id: int, iova: int, access: str,
            translation_request: bool = False) -> DmaTranslation:
        """Translate a device's DMA request (identity while GSTS.TES is clear); a fault is
        recorded (unless FPD suppresses it) and raised."""
        self._check_dma(iova)
        if not self.enabled or self.root_table is None:
            if translation_request:
                raise ValueError("translation requests need remapping on")
            return DmaTranslation(iova, PAGE_4K, 0, "rw", 0)
        result, failure = translate_raw(self._context(), source_id, iova, access,
                                        translation_request)
        if result is not None:
            return result
        reason, address, refs, fpd = failure
        error = fault(reason, source_id, address, access, refs)
        if not (fpd and error.qualified):
            self.record(error)
        raise error

    def translation_request(self, source_id: int, iova: int, access: str) -> DmaTranslation:
        """A device's ATS translation request (hv.md §3.7): answered only for a context entry
        of translation type 1 (else fault 0xD); faults are recorded as a DMA's are."""
        return self.dma(source_id, iova, access, translation_request=True)

    def dma_burst(self, source_id: int, iovas, access: str) -> DmaBurst:
        """Translate an array of IOVAs of one device in the core without the GIL. Faults are
        left in the burst's reasons, nothing raised; each is then recorded in order (walked
        once more, in Python, for its context entry's FPD bit)."""
        if not self.enabled or self.root_table is None:
            raise ValueError("a burst needs remapping on")
        iovas = np.ascontiguousarray(iovas, dtype=np.uint64)
        if np.any((iovas >= INTERRUPT_RANGE.start) & (iovas < INTERRUPT_RANGE.stop)):
            raise ValueError("a burst holds an interrupt request: remap_interrupt() takes it")
        burst = burst_raw(self._context(), source_id, iovas, access)
        for k in (burst.reasons != 0).nonzero()[0]:
            try:
                self.dma(source_id, int(burst.iovas[k]), access)
            except DmaFault:
                pass
        return burst

    def remap_interrupt(self, source_id: int, address: int, data: int):
        """Remap a device's MSI write (hv.md §3.8); see fastpath.hv.vtd.remap_interrupt."""
        return remap_interrupt(self, source_id, address, data)
