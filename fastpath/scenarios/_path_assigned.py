"""Path (c): the emulated NIC's device model as a VF assigned to the guest through VT-d.

The guest runs the same driver as on the emulated path (`fastpath.hv.nic.NicDriver`, by
MMIO), but its NIC is a VF of an SR-IOV PF (`fastpath.hv.sriov`, its RID the source-id of its
DMA): EPT maps the VF's register BAR into the guest, so no doorbell exits, and the device sees
each doorbell the guest retires. Its DMA (descriptor fetches, buffer reads and writes, status
write-backs) goes through the `RemappingUnit` in the VF's domain, which maps the guest's RAM:
one walk per page first touched, IOTLB hits after. Frames go out on an `EchoWire` (fastpath
ring ports, a far side that returns every frame) and come back into the VF's receive ring.

Variants, by how the VF's MSI reaches the guest (`_nic_vf`): "remapped" (through a remapped
IRTE to a host vector: an external-interrupt exit, then the VMM injects the guest's vector;
the guest's EOI exits too, without APIC virtualization) and "posted" (through a posted IRTE
into the vCPU's posted-interrupt descriptor: no exit at all, EOI virtualized). With polling
the two differ in nothing but their controls.

Counters cover the workload, not the driver's bring-up (which makes no DMA).
"""

from __future__ import annotations

from fastpath.hv.nic import MmioWindow, Nic, NicDriver
from fastpath.scenarios._io_path import IoWorkload, PathResult
from fastpath.scenarios._nic_guest import LAYOUT, MMIO_BAR, check_workload, drive
from fastpath.scenarios._nic_vf import INTERRUPT_MODES, AssignedNic, AssignedPlatform
from fastpath.scenarios._nic_wire import EchoWire

__all__ = ["run_assigned"]


def _run(workload: IoWorkload, interrupts: str) -> PathResult:
    platform = AssignedPlatform(guests=1)
    wire = EchoWire()
    try:
        vf = platform.vfs[0]
        guest = platform.guest(vf, interrupts)

        def uplink(nic: Nic, frames: list[bytes]) -> None:
            nic.receive(wire.carry(frames))

        assigned = AssignedNic(platform, guest, vf, uplink)
        driver = NicDriver(guest.ram, MmioWindow(MMIO_BAR), guest.mac, LAYOUT,
                           interrupts=workload.completion == "interrupt")
        intact = drive(workload, driver, assigned, guest.restart_counters)
        dma = assigned.dma
        return PathResult("assigned", interrupts, workload, intact, guest.runner.counters,
                          iommu_walks=dma.walks, iotlb_hits=dma.iotlb_hits,
                          iotlb_lookups=dma.lookups, interrupts=assigned.interrupts)
    finally:
        wire.close()
        platform.close()


def run_assigned(workload: IoWorkload) -> list[PathResult]:
    """The workload through an assigned VF, interrupts remapped and posted (module
    docstring)."""
    check_workload(workload)
    return [_run(workload, interrupts) for interrupts in INTERRUPT_MODES]
