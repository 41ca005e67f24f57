"""The emulated NIC's device model as an SR-IOV VF assigned to a guest through VT-d: what the
assigned path and the SR-IOV path share.

`AssignedPlatform` is the host: one host memory holding each guest's slot (`NicGuest`) and the
VT-d area (root, context and second-level tables, the interrupt remapping table), a
`RemappingUnit` programmed through its registers (`program_unit`, faults serviced at each fault
event as Linux's dmar_fault does), a PF whose VFs are enabled by Linux's sequence with their
register BAR placed in the 64-bit window, and a domain per assigned VF mapping the guest's RAM
(IOVA = GPA, 4 KiB pages, so that the IOTLB caches one entry per page).

`AssignedNic` is one VF given to one guest: EPT maps the guest's NIC BAR read/write onto the
VF's BAR, so register accesses do not exit; the device sees the doorbells the guest retires
(`execute` hands each BAR store and load of the stream to the device in order, as the
hardware would see them). Its DMA is `RemappedDma` under the VF's RID. Its interrupt is an
MSI through its IRTE: "remapped" (the host's vector arrives as an external-interrupt exit and
the VMM injects the guest's vector, KVM's irqfd path) or "posted" (the unit posts the guest's
vector into the vCPU's posted-interrupt descriptor and the notification is processed without
an exit, EOI virtualized too).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fastpath.hv import HostMemory
from fastpath.hv.nic import MMIO_BAR_SIZE, Nic, RemappedDma
from fastpath.hv.sriov import PhysicalFunction, SriovReg, VfBar, VirtualFunction, enable_vfs
from fastpath.hv.vmx import (
    EventKind,
    ExitControls,
    ExitReason,
    Field,
    InterruptionType,
    PinBased,
    ProcBased,
    Secondary,
    event,
    interruption_info,
    pi_control,
)
from fastpath.hv.vtd import (
    PAGE_4K,
    Gcmd,
    PostedInterrupt,
    Reg,
    RemappingUnit,
    RootTable,
    SecondLevelTables,
    VtdCaches,
    irta,
    posted_irte,
    remappable_msi,
    remapped_irte,
    write_irte,
)
from fastpath.scenarios._nic_guest import (
    GUEST_VECTOR,
    MMIO_BAR,
    MSR_BITMAP,
    PI_DESCRIPTOR,
    RAM_SIZE,
    SLOT,
    VIRTUAL_APIC,
    NicGuest,
    Platform,
)
from fastpath.scenarios.vtd import FaultService, command, program_unit

__all__ = ["INTERRUPT_MODES", "AssignedPlatform", "AssignedNic"]

INTERRUPT_MODES = ("remapped", "posted")
PF_RID = 0x3B00
# An 82576-class PF (an 8254x-family NIC with SR-IOV) and its VF device ID (igbvf).
VENDOR_INTEL, VF_DEVICE_82576 = 0x8086, 0x10CA
BAR_WINDOW = 0x38_0000_0000       # where the host places the VF register BARs
HOST_VECTOR = 0x61                # VF k's MSI reaches the host at HOST_VECTOR + k
NOTIFICATION_VECTOR = 0xF2        # the posted-interrupt notification vector (KVM's)
_VTD_AREA = 2 << 20
_IRT_ENTRIES = 256
# An IOTLB large enough that the guest's 512 RAM pages rarely meet in a slot: walks are then
# one per page first touched.
_IOTLB_ENTRIES = 1 << 16

# The vCPU controls of each interrupt mode.
_REMAPPED = {"PIN_BASED_VM_EXEC_CONTROL": PinBased.EXTERNAL_INTERRUPT_EXITING,
             "VM_EXIT_CONTROLS": ExitControls.HOST_ADDRESS_SPACE_SIZE
             | ExitControls.ACK_INTERRUPT_ON_EXIT}
_POSTED = {"PIN_BASED_VM_EXEC_CONTROL": PinBased.EXTERNAL_INTERRUPT_EXITING
           | PinBased.PROCESS_POSTED_INTERRUPTS,
           "CPU_BASED_VM_EXEC_CONTROL": ProcBased.USE_TPR_SHADOW | ProcBased.USE_MSR_BITMAPS,
           "SECONDARY_VM_EXEC_CONTROL": Secondary.VIRTUAL_INTERRUPT_DELIVERY
           | Secondary.VIRTUALIZE_X2APIC_MODE,
           "VM_EXIT_CONTROLS": ExitControls.HOST_ADDRESS_SPACE_SIZE
           | ExitControls.ACK_INTERRUPT_ON_EXIT,
           "MSR_BITMAP": MSR_BITMAP, "VIRTUAL_APIC_PAGE_ADDR": VIRTUAL_APIC,
           "POSTED_INTR_DESC_ADDR": PI_DESCRIPTOR, "POSTED_INTR_NV": NOTIFICATION_VECTOR}


class AssignedPlatform:
    """Host memory for `guests` guests and the VT-d area, the remapping unit, and a PF with
    `guests` VFs enabled."""

    def __init__(self, guests: int):
        vtd = guests * SLOT
        self._irt = vtd + _VTD_AREA - PAGE_4K
        self.host = HostMemory(vtd + _VTD_AREA, table_area=(vtd, self._irt))
        self.root = RootTable(self.host, self.host.frames)
        self.faults = FaultService()
        self.unit = RemappingUnit(self.host, caches=VtdCaches(iotlb_entries=_IOTLB_ENTRIES),
                                  msi=self.faults.msi)
        self.faults.unit = self.unit
        program_unit(self.unit, self.root, interrupt_faults=True)
        self.unit.write(Reg.IRTA, 8, irta(self._irt, _IRT_ENTRIES))
        command(self.unit, Gcmd.SIRTP)
        command(self.unit, Gcmd.IRE)
        self.pf = PhysicalFunction(PF_RID, vendor_id=VENDOR_INTEL, vf_device_id=VF_DEVICE_82576,
                                   total_vfs=max(guests, 8), geometry=(0x80, 2),
                                   bars=[VfBar(MMIO_BAR_SIZE), None])
        # The host places the VF BAR window (64-bit: BAR0 and BAR1), then enables the VFs.
        self.pf.write(SriovReg.VF_BAR0, 4, BAR_WINDOW & 0xFFFF_FFFF)
        self.pf.write(SriovReg.VF_BAR0 + 4, 4, BAR_WINDOW >> 32)
        self.vfs = enable_vfs(self.pf, guests)

    def guest(self, vf: VirtualFunction, interrupts: str) -> NicGuest:
        """The guest VF `vf` is given to, in slot vf.index, with its BAR mapped read/write
        onto the VF's and its DMA domain (domain ID index + 1) mapping all its RAM."""
        if interrupts not in INTERRUPT_MODES:
            raise ValueError(f"interrupts are one of {INTERRUPT_MODES}, not {interrupts!r}")
        fields = _POSTED if interrupts == "posted" else _REMAPPED
        guest = NicGuest(self.host, vf.index, bar_perms="rw", bar_hpa=vf.bars[0][0], **fields)
        tables = SecondLevelTables(self.host, self.host.frames, 4)
        for gpa in range(0, RAM_SIZE, PAGE_4K):
            tables.map(gpa, guest.ram_hpa + gpa, PAGE_4K, "rw")
        self.root.attach(vf.rid, vf.index + 1, tables)
        descriptor = guest.base + PI_DESCRIPTOR
        if interrupts == "posted":
            # The vCPU's descriptor: notifications to it (APIC ID 0) with KVM's vector.
            self.host.write64(descriptor + 32, pi_control(NOTIFICATION_VECTOR, 0))
            entry = posted_irte(GUEST_VECTOR, descriptor)
        else:
            entry = remapped_irte(HOST_VECTOR + vf.index, 0)
        write_irte(self.host, self._irt, vf.index, entry)
        return guest

    def close(self) -> None:
        """Let go of host memory."""
        self.host.close()


class AssignedNic(Platform):
    """VF `vf` assigned to `guest`, its frames handed to `uplink(nic, frames)` (which
    returns them to whichever functions should receive them)."""

    def __init__(self, platform: AssignedPlatform, guest: NicGuest, vf: VirtualFunction,
                 uplink: Callable[[Nic, list[bytes]], None]):
        self.guest, self.vf, self.uplink = guest, vf, uplink
        self.unit = platform.unit
        self.dma = RemappedDma(self.unit, vf.rid)
        self._transmitted: list[bytes] = []
        self._arrivals: list[tuple] = []
        self.nic = Nic(self.dma, self._transmitted.append, self._msi)
        guest.runner.on(ExitReason.EXTERNAL_INTERRUPT, self._irqfd)

    def execute(self, events: np.ndarray) -> list[int]:
        self.guest.runner.run(events)
        kinds, addresses = events["kind"], events["address"]
        at_bar = (((kinds == EventKind.READ) | (kinds == EventKind.WRITE))
                  & (addresses >= MMIO_BAR) & (addresses < MMIO_BAR + MMIO_BAR_SIZE))
        reads = []
        for record in events[at_bar]:
            offset, size = int(record["address"]) - MMIO_BAR, int(record["size"])
            if record["kind"] == EventKind.WRITE:
                self.nic.write(offset, size, int(record["value"]))
            else:
                reads.append(self.nic.read(offset, size))
            if self._transmitted:
                frames, self._transmitted[:] = list(self._transmitted), []
                self.uplink(self.nic, frames)
        return reads

    def arrival(self) -> list[tuple]:
        arrivals, self._arrivals = self._arrivals, []
        return arrivals

    def _msi(self) -> None:
        # The VF's MSI names its IRTE (remappable format, handle = VF index).
        delivered = self.unit.remap_interrupt(self.vf.rid, *remappable_msi(self.vf.index))
        self.pending += 1
        if isinstance(delivered, PostedInterrupt):
            if delivered.notified:
                self._arrivals.append(event(EventKind.EXTINT, delivered.notification_vector))
        else:
            self._arrivals.append(event(EventKind.EXTINT, delivered.vector))

    def _irqfd(self, vcpu, exit_) -> None:
        # The host's handler for the VF's vector signals KVM, which injects the guest's
        # vector at the next VM entry.
        vcpu.vmwrite(Field.VM_ENTRY_INTR_INFO_FIELD,
                     interruption_info(GUEST_VECTOR, InterruptionType.EXTERNAL_INTERRUPT))

    @property
    def interrupts(self) -> int:
        """Interrupts that reached the guest: injected, or delivered as virtual interrupts."""
        progress = self.guest.runner.counters.progress
        return progress.injected + progress.virtual_interrupts + progress.guest_interrupts
