"""What the NIC paths share: a guest with the NIC driver on a modelled vCPU, and the workload
loop that drives it.

A `NicGuest` owns a slot of host memory. The model's vCPU keeps its VMXON region and VMCS at
fixed addresses (`ready_vcpu`), so each guest's vCPU sees its slot as its host memory,
addressed from the slot's start: VMXON 0x1000, VMCS 0x2000, MSR bitmap 0x3000, virtual-APIC
page 0x4000, posted-interrupt descriptor 0x5000, EPT tables in [1 MiB, 2 MiB), guest RAM from
2 MiB. EPT maps RAM with 2 MiB pages and the NIC's memory BAR with 4 KiB pages as the path asks
(write+execute without read: KVM's MMIO trap; or read/write onto a VF's BAR). The IOMMU and
the device see the whole host memory, where the slot's RAM sits at `ram_hpa`.

`drive` is the workload: bring the device up, then per burst send the frames, take the
completion by interrupt (the path's interrupt arrival, the handler's ICR read, the reaping)
or by polling the descriptors' DD bits, and compare what came back with what was sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from fastpath.hv import FrameAllocator, HostMemory
from fastpath.hv.ept import PAGE_2M, PAGE_4K, EptTables
from fastpath.hv.ept import walk as ept_walk
from fastpath.hv.nic import MMIO_BAR_SIZE, RX_BUFFER_SIZE, GuestRam, NicDriver, NicLayout
from fastpath.hv.vmx import (
    EVENT_DTYPE,
    GuestRunner,
    ProcBased,
    Secondary,
    VmxCounters,
    ready_vcpu,
)
from fastpath.scenarios._io_path import IoWorkload
from fastpath.scenarios._vmdq_pools import VF_MAC_BASE

__all__ = ["SLOT", "RAM_SIZE", "MMIO_BAR", "IO_BAR", "GUEST_VECTOR", "MSR_BITMAP",
           "VIRTUAL_APIC", "PI_DESCRIPTOR", "LAYOUT", "NicGuest", "Platform", "drive",
           "bring_up", "bursts", "guest_mac", "workload_frames", "check_workload"]

SLOT = 4 << 20
_EPT_TABLES = (1 << 20, 2 << 20)
_RAM_OFFSET, RAM_SIZE = 2 << 20, 2 << 20
MSR_BITMAP, VIRTUAL_APIC, PI_DESCRIPTOR = 0x3000, 0x4000, 0x5000
# Where the guest finds its NIC: the memory BAR where QEMU's PC machine usually puts an e1000's
# BAR0, and the I/O BAR at the first port the BIOS hands out above the legacy range.
MMIO_BAR, IO_BAR = 0xFEBC_0000, 0xC000
GUEST_VECTOR = 0x41      # the vector the guest gave its NIC's interrupt
RFLAGS_IF = 0x202        # the guest runs with interrupts enabled
LAYOUT = NicLayout()
# Rounds of reaping a burst may take before it counts as lost (the model's device completes
# within the doorbell, so one round finds everything; more means frames went missing).
_REAP_ROUNDS = 4


def guest_mac(index: int) -> bytes:
    """Guest `index`'s MAC: that of the VF the PF driver gives pool `index`
    (02:00:00:00:01:index), whichever path the guest is on."""
    return (VF_MAC_BASE + index).to_bytes(6, "big")


def workload_frames(workload: IoWorkload, mac: bytes, guest: int = 0) -> list[bytes]:
    """The workload's frames for one guest: to its own MAC (the far side returns them, so
    they come home), from 02:00:00:00:00:01, a local experimental EtherType (0x88B5), then
    the guest and frame numbers and a pattern of the frame's own."""
    frames = []
    for number in range(workload.frames):
        header = mac + bytes([2, 0, 0, 0, 0, 1, 0x88, 0xB5, guest, number >> 8 & 0xFF,
                              number & 0xFF])
        frames.append(header + bytes((number + guest + i) & 0xFF
                                     for i in range(workload.size - len(header))))
    return frames


def check_workload(workload: IoWorkload) -> None:
    """ValueError for a workload the NIC paths cannot run: a burst must fit a ring (less the
    descriptor that tells full from empty) and a frame one buffer."""
    if workload.burst > LAYOUT.ring_size - 1:
        raise ValueError(f"a burst is at most {LAYOUT.ring_size - 1} frames on the NIC")
    if workload.size > RX_BUFFER_SIZE:
        raise ValueError(f"a frame is at most {RX_BUFFER_SIZE} bytes on the NIC")


class NicGuest:
    """Guest `index`'s slot of `host`: EPT, a vCPU made ready with `fields` (Field names;
    EPT is always on) and its runner, and the guest's RAM. `bar_perms` are the EPT
    permissions of the NIC's BAR pages and `bar_hpa` where they lead."""

    def __init__(self, host: HostMemory, index: int, bar_perms: str, bar_hpa: int = 0,
                 **fields: int):
        self.index = index
        self.base = index * SLOT
        self.memory = host.array[self.base:self.base + SLOT]
        frames = FrameAllocator(*_EPT_TABLES, self._zero)
        tables = EptTables(self.memory, frames)
        for gpa in range(0, RAM_SIZE, PAGE_2M):
            tables.map(gpa, _RAM_OFFSET + gpa, PAGE_2M, "rwx")
        # A trapping BAR (no read permission) needs no frame: no access ever reaches one.
        for offset in range(0, MMIO_BAR_SIZE, PAGE_4K):
            tables.map(MMIO_BAR + offset, bar_hpa + offset if bar_hpa else 0, PAGE_4K,
                       bar_perms)
        proc = fields.pop("CPU_BASED_VM_EXEC_CONTROL", 0) | ProcBased.ACTIVATE_SECONDARY_CONTROLS
        secondary = fields.pop("SECONDARY_VM_EXEC_CONTROL", 0) | Secondary.ENABLE_EPT
        vcpu = ready_vcpu(self.memory, CPU_BASED_VM_EXEC_CONTROL=proc,
                          SECONDARY_VM_EXEC_CONTROL=secondary, EPT_POINTER=tables.eptp(),
                          GUEST_RFLAGS=RFLAGS_IF, **fields)
        memory = self.memory
        self.runner = GuestRunner(vcpu, lambda eptp, gpa, access: ept_walk(memory, eptp, gpa,
                                                                           access))
        self.ram_hpa = self.base + _RAM_OFFSET
        self.ram = GuestRam(host, self.ram_hpa, RAM_SIZE)
        self.mac = guest_mac(index)

    def _zero(self, address: int) -> None:
        self.memory[address:address + PAGE_4K] = 0

    def restart_counters(self) -> None:
        """Count from here on (the driver's bring-up is not the workload's)."""
        self.runner.counters = VmxCounters()


class Platform:
    """How a path runs a guest's events. `execute(events)` runs them on the guest's vCPU (and
    whatever the path does beside: the device seeing the doorbells) and returns the values its
    register reads returned, in order; `arrival()` is what a pending interrupt from the NIC
    puts before the guest's handler (nothing when the VMM injects it at a VM entry; an
    external interrupt when it comes from the host's interrupt controller), and `pending` how
    many interrupts the guest has not handled yet."""

    pending = 0

    def execute(self, events: np.ndarray) -> list[int]:
        raise NotImplementedError

    def arrival(self) -> list[tuple]:
        raise NotImplementedError


def bring_up(driver: NicDriver, platform: Platform, restart: Callable[[], None]) -> None:
    """The driver's bring-up on `platform`; `restart` is called after it, so that counts
    cover the workload alone."""
    platform.execute(driver.bring_up())
    restart()


def bursts(workload: IoWorkload, driver: NicDriver, platform: Platform,
           guest: int = 0) -> Iterator[int]:
    """Run the workload's bursts through a driver that is up, one per step; each step yields
    the frames of its burst that came back byte for byte."""
    sent = workload_frames(workload, driver.mac, guest)
    for first in range(0, workload.frames, workload.burst):
        chunk = sent[first:first + workload.burst]
        platform.execute(driver.send(chunk))
        got: list[bytes] = []
        for _ in range(_REAP_ROUNDS):
            if driver.interrupts:
                if not platform.pending:
                    break
                platform.pending -= 1
                handler = np.concatenate([np.array(platform.arrival(), EVENT_DTYPE),
                                          driver.acknowledge()])
                driver.note_icr(platform.execute(handler)[-1])
            records, frames = driver.reap()
            platform.execute(records)
            got += frames
            if len(got) >= len(chunk):
                break
        yield sum(a == b for a, b in zip(got, chunk, strict=False))


def drive(workload: IoWorkload, driver: NicDriver, platform: Platform,
          restart: Callable[[], None], guest: int = 0) -> int:
    """Bring the driver up and run the whole workload; returns the frames that came back
    byte for byte."""
    bring_up(driver, platform, restart)
    return sum(bursts(workload, driver, platform, guest))
