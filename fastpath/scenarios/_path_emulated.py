"""Path (a): the guest drives an emulated NIC, every register access a VM exit.

The guest's driver (`fastpath.hv.nic.NicDriver`) runs on a modelled vCPU with EPT. Its NIC
is the VMM's device model (`fastpath.hv.nic.Nic`) reaching guest RAM through the VMM's own
view of it (`GuestRam`), as QEMU's e1000 does. Two variants:

* "mmio": the registers are the memory BAR, in pages EPT maps write+execute without read (KVM's
  MMIO trap): every load or store there is an EPT misconfiguration (exit 49) with the address
  in GUEST_PHYSICAL_ADDRESS. The handler finds the register by offset, takes a store's value
  from the instruction (as KVM's emulator decodes it), runs the device, skips the
  instruction, and resumes.
* "port-io": the registers through the I/O BAR's IOADDR/IODATA window with I/O exiting on
  (KVM's unconditional I/O exiting): each access is two I/O-instruction exits (30), the port,
  size and direction in the qualification (SDM Table 28-5), an OUT's value from RAX.

A TDT write's handler runs the device: it transmits the burst onto an `EchoWire` (fastpath
ring ports with a far side that returns every frame), and the frames coming back land in the
receive ring before the handler returns. With interrupts the device's interrupt is injected by
the VMM at that VM entry (an external interrupt through VM_ENTRY_INTR_INFO_FIELD); the guest's
handler reads ICR (an exit), reaps the rings in RAM (no exit), writes RDT (an exit) and ends
with an EOI, a WRMSR of the x2APIC EOI register, which exits too: an emulated device's guest
has no posted interrupts nor APIC virtualization in this model. With polling the guest reads
the DD bits in RAM (no exit) and writes RDT.

Counters cover the workload, not the driver's bring-up.
"""

from __future__ import annotations

import numpy as np

from fastpath.errors import VmxError
from fastpath.hv import HostMemory
from fastpath.hv.nic import IO_BAR_SIZE, MMIO_BAR_SIZE, MmioWindow, Nic, NicDriver, PortIoWindow
from fastpath.hv.vmx import (
    EventKind,
    ExitReason,
    Field,
    InterruptionType,
    ProcBased,
    interruption_info,
    skip_instruction,
)
from fastpath.scenarios._io_path import IoWorkload, PathResult
from fastpath.scenarios._nic_guest import (
    GUEST_VECTOR,
    IO_BAR,
    LAYOUT,
    MMIO_BAR,
    SLOT,
    NicGuest,
    Platform,
    check_workload,
    drive,
)
from fastpath.scenarios._nic_wire import EchoWire

__all__ = ["VARIANTS", "run_emulated"]

VARIANTS = ("mmio", "port-io")


class _EmulatingVmm(Platform):
    """The VMM's side: exit handlers that run the device model, the wire behind it, and
    interrupt injection."""

    def __init__(self, guest: NicGuest, wire: EchoWire):
        self.guest, self.wire = guest, wire
        self._transmitted: list[bytes] = []
        self._inject = False
        self.nic = Nic(guest.ram, self._transmitted.append, self._interrupt)
        self._events: np.ndarray | None = None
        self._reads: list[int] = []
        runner = guest.runner
        runner.on(ExitReason.EPT_MISCONFIG, self._mmio)
        runner.on(ExitReason.IO_INSTRUCTION, self._port_io)

    def execute(self, events: np.ndarray) -> list[int]:
        self._events, self._reads = events, []
        self.guest.runner.run(events)
        return self._reads

    def arrival(self) -> list[tuple]:
        return []  # injected at the VM entry after the exit that raised it

    def _interrupt(self) -> None:
        self.pending += 1
        self._inject = True

    def _mmio(self, vcpu, exit_) -> None:
        gpa = vcpu.vmread(Field.GUEST_PHYSICAL_ADDRESS)
        offset = gpa - MMIO_BAR
        if not 0 <= offset < MMIO_BAR_SIZE:
            raise VmxError(f"an MMIO access at {gpa:#x}, where no device is")
        record = self._events[exit_.event]
        if record["kind"] == EventKind.WRITE:
            self.nic.write(offset, int(record["size"]), int(record["value"]))
        else:
            self._reads.append(self.nic.read(offset, int(record["size"])))
        self._done(vcpu, exit_)

    def _port_io(self, vcpu, exit_) -> None:
        # SDM Table 28-5: size - 1 in bits 2:0, IN in bit 3, the port in bits 31:16.
        qualification = exit_.qualification
        port, size = qualification >> 16, (qualification & 7) + 1
        offset = port - IO_BAR
        if not 0 <= offset < IO_BAR_SIZE:
            raise VmxError(f"an I/O access at port {port:#x}, where no device is")
        if qualification >> 3 & 1:
            self._reads.append(self.nic.io_read(offset, size))
        else:
            self.nic.io_write(offset, size, int(self._events[exit_.event]["value"]))
        self._done(vcpu, exit_)

    def _done(self, vcpu, exit_) -> None:
        skip_instruction(vcpu, exit_)
        if self._transmitted:
            frames, self._transmitted[:] = list(self._transmitted), []
            self.nic.receive(self.wire.carry(frames))
        if self._inject:
            self._inject = False
            vcpu.vmwrite(Field.VM_ENTRY_INTR_INFO_FIELD,
                         interruption_info(GUEST_VECTOR, InterruptionType.EXTERNAL_INTERRUPT))


def _run(workload: IoWorkload, variant: str) -> PathResult:
    host = HostMemory(SLOT)
    wire = EchoWire()
    try:
        io_exiting = ProcBased.UNCONDITIONAL_IO_EXITING if variant == "port-io" else 0
        guest = NicGuest(host, 0, bar_perms="wx", CPU_BASED_VM_EXEC_CONTROL=io_exiting)
        vmm = _EmulatingVmm(guest, wire)
        window = MmioWindow(MMIO_BAR) if variant == "mmio" else PortIoWindow(IO_BAR)
        driver = NicDriver(guest.ram, window, guest.mac, LAYOUT,
                           interrupts=workload.completion == "interrupt")
        intact = drive(workload, driver, vmm, guest.restart_counters)
        counters = guest.runner.counters
        progress = counters.progress
        return PathResult("emulated", variant, workload, intact, counters,
                          interrupts=progress.injected + progress.guest_interrupts)
    finally:
        wire.close()
        host.close()


def run_emulated(workload: IoWorkload) -> list[PathResult]:
    """The workload through the emulated NIC, by MMIO and by port I/O (module docstring)."""
    check_workload(workload)
    return [_run(workload, variant) for variant in VARIANTS]
