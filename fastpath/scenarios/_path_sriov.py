"""Path (d): several guests share one PF, each with a VF of its own, received frames steered
to the VFs' pools by VMDq.

One PF enables `guests` VFs; VF k goes to guest k, with its own vCPU, EPT, VT-d domain and
IRTE (`_nic_vf`), and runs the same driver and device model as the assigned path. The VFs
transmit onto the PF's one uplink, an `EchoWire` (fastpath ring ports, a far side that returns
every frame); what comes back is classified by the PF's VMDq registers as its driver sets them
(`fastpath.hv.sriov.steer`; VF k's MAC in pool k, the PF in the pool after) and lands in the
receive ring of the VF whose pool it is. The guests take turns burst by burst, each running
the whole workload.

Results: first the whole, variant "N guests", its counters summed over the vCPUs, its IOMMU
counts and interrupts over the VFs, and its workload the guests' frames together (N times the
workload's, so that per-frame figures divide right); then one result per guest, variant
"guest k", with the workload as given.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from fastpath.hv.nic import MmioWindow, Nic, NicDriver
from fastpath.hv.sriov import mac_to_u64, steer
from fastpath.hv.vmx import VmxCounters
from fastpath.scenarios._io_path import IoWorkload, PathResult
from fastpath.scenarios._nic_guest import LAYOUT, MMIO_BAR, bring_up, bursts, check_workload
from fastpath.scenarios._nic_vf import AssignedNic, AssignedPlatform
from fastpath.scenarios._nic_wire import EchoWire
from fastpath.scenarios._vmdq_pools import vmdq_registers

__all__ = ["SharedPf", "run_sriov"]

MAX_GUESTS = 8


def summed(counters: list[VmxCounters]) -> VmxCounters:
    """Several vCPUs' counters as one: exits, entries and progress added up."""
    total = VmxCounters()
    for c in counters:
        total.exits += c.exits
        total.entries += c.entries
        total.entry_failures += c.entry_failures
        for f in dataclasses.fields(total.progress):
            if f.name != "run_left":
                setattr(total.progress, f.name,
                        getattr(total.progress, f.name) + getattr(c.progress, f.name))
    return total


class SharedPf:
    """A PF shared by `guests` guests, each with a VF and a driver whose interrupts are
    `interrupts` ("remapped" or "posted") or polled (`poll`). `steered` counts the frames
    that came back by (sending guest, pool) and `stray` those no VF's pool took. Close it
    when done."""

    def __init__(self, guests: int, interrupts: str = "posted", poll: bool = False):
        if not 1 <= guests <= MAX_GUESTS:
            raise ValueError(f"1 to {MAX_GUESTS} guests share the PF")
        self.platform = AssignedPlatform(guests)
        self.wire = EchoWire()
        self.regs, self.pf_pool = vmdq_registers(guests)
        self.steered: Counter[tuple[int, int]] = Counter()
        self.stray = 0
        self.members: list[tuple[AssignedNic, NicDriver]] = []
        self._by_nic: dict[int, int] = {}
        for vf in self.platform.vfs:
            guest = self.platform.guest(vf, interrupts)
            assigned = AssignedNic(self.platform, guest, vf, self._uplink)
            driver = NicDriver(guest.ram, MmioWindow(MMIO_BAR), guest.mac, LAYOUT,
                               interrupts=not poll)
            self._by_nic[id(assigned.nic)] = vf.index
            self.members.append((assigned, driver))
            bring_up(driver, assigned, guest.restart_counters)

    def _uplink(self, sender: Nic, frames: list[bytes]) -> None:
        back = self.wire.carry(frames)
        if not back:
            return
        macs = mac_to_u64(np.frombuffer(b"".join(f[:6] for f in back), np.uint8).reshape(-1, 6))
        steering = steer(self.regs, macs, np.full(len(back), -1),
                         np.zeros(len(back), np.uint32))
        source = self._by_nic[id(sender)]
        for pool in range(len(self.members)):
            mine = (steering.pools >> np.uint64(pool) & np.uint64(1)) != 0
            if mine.any():
                self.steered[source, pool] += int(mine.sum())
                self.members[pool][0].nic.receive([back[k] for k in np.flatnonzero(mine)])
        vf_pools = np.uint64((1 << len(self.members)) - 1)
        self.stray += int(np.count_nonzero(steering.pools & vf_pools == 0))

    def run(self, workload: IoWorkload) -> list[int]:
        """Every guest runs the workload, taking turns burst by burst; returns the frames
        each got back intact."""
        steps = [bursts(workload, driver, assigned, guest=k)
                 for k, (assigned, driver) in enumerate(self.members)]
        intact = [0] * len(steps)
        for _ in range(workload.bursts):
            for k, step in enumerate(steps):
                intact[k] += next(step)
        return intact

    def close(self) -> None:
        """Close the wire and let go of host memory."""
        self.wire.close()
        self.platform.close()


def _result(variant: str, workload: IoWorkload, intact: int, members) -> PathResult:
    dmas = [assigned.dma for assigned, _ in members]
    return PathResult("sriov", variant, workload, intact,
                      summed([assigned.guest.runner.counters for assigned, _ in members]),
                      iommu_walks=sum(d.walks for d in dmas),
                      iotlb_hits=sum(d.iotlb_hits for d in dmas),
                      iotlb_lookups=sum(d.lookups for d in dmas),
                      interrupts=sum(assigned.interrupts for assigned, _ in members))


def run_sriov(workload: IoWorkload, guests: int = 4,
              interrupts: str = "posted") -> list[PathResult]:
    """The workload in each of `guests` guests sharing a PF through SR-IOV VFs (module
    docstring): the whole first, then each guest."""
    check_workload(workload)
    shared = SharedPf(guests, interrupts, poll=workload.completion == "poll")
    try:
        intact = shared.run(workload)
        whole = dataclasses.replace(workload, frames=workload.frames * guests)
        results = [_result(f"{guests} guests", whole, sum(intact), shared.members)]
        results += [_result(f"guest {k}", workload, intact[k], [member])
                    for k, member in enumerate(shared.members)]
        return results
    finally:
        shared.close()
