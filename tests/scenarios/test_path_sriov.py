"""Path (d), SR-IOV: guests sharing a PF each get back only their own frames (VMDq steering by
the VF MACs), each VF's DMA in its own domain, and a guest's hostile descriptor is a fault the
unit records while the other guests go on."""

import numpy as np

from fastpath.hv.nic import TX_DESC_DTYPE, Reg, TxCmd
from fastpath.hv.vmx import EventKind, event, events
from fastpath.scenarios._io_path import IoWorkload
from fastpath.scenarios._nic_guest import LAYOUT, MMIO_BAR, RAM_SIZE
from fastpath.scenarios._path_sriov import SharedPf, run_sriov


def test_every_frame_reaches_only_its_own_guest():
    workload = IoWorkload(frames=24, burst=8, completion="poll")
    shared = SharedPf(guests=3, poll=True)
    try:
        assert shared.run(workload) == [workload.frames] * 3
        assert shared.steered == {(k, k): workload.frames for k in range(3)}
        assert shared.stray == 0
        for assigned, _ in shared.members:
            assert assigned.nic.counters.rx_frames == workload.frames
    finally:
        shared.close()


def test_the_whole_adds_up_the_guests_and_posted_interrupts_cost_no_exit():
    workload = IoWorkload(frames=16, burst=8, completion="interrupt")
    whole, *each = run_sriov(workload, guests=2)
    assert (whole.variant, [r.variant for r in each]) == ("2 guests", ["guest 0", "guest 1"])
    assert whole.workload.frames == 2 * workload.frames == whole.frames_intact
    assert whole.counters.total_exits == 0
    assert whole.interrupts == 2 * workload.bursts == sum(r.interrupts for r in each)
    assert whole.iommu_walks == sum(r.iommu_walks for r in each) > 0
    assert [r.frames_intact for r in each] == [workload.frames] * 2


def test_a_hostile_descriptor_is_a_recorded_fault_while_another_guest_goes_on():
    workload = IoWorkload(frames=16, burst=8, completion="poll")
    shared = SharedPf(guests=2, poll=True)
    try:
        hostile, driver = shared.members[1]
        desc = np.zeros(1, TX_DESC_DTYPE)
        desc["addr"], desc["length"] = RAM_SIZE + 0x1000, 64    # outside its domain
        desc["cmd"] = TxCmd.EOP | TxCmd.RS
        driver.ram.write(LAYOUT.tx_ring, desc.tobytes())
        hostile.execute(events(event(EventKind.WRITE, MMIO_BAR + Reg.TDT, 4, 1)))
        assert hostile.nic.tx_stopped and hostile.dma.faults == 1
        assert hostile.dma.last_fault.source_id == hostile.vf.rid
        assert sum(shared.platform.faults.recorded.values()) == 1
        assert shared.run(workload) == [workload.frames, 0]
        assert hostile.nic.counters.tx_frames == 0
        assert shared.steered == {(0, 0): workload.frames}
    finally:
        shared.close()
