"""Path (c), an assigned VF: doorbells reach the device without a VM exit, every DMA goes
through the remapping unit (one walk per page first touched, IOTLB hits after), and the
interrupt costs an external-interrupt exit (remapped) or nothing (posted)."""

from fastpath.hv.nic import RX_BUFFER_SIZE
from fastpath.hv.vmx import ExitReason
from fastpath.scenarios._io_path import IoWorkload
from fastpath.scenarios._nic_guest import LAYOUT
from fastpath.scenarios._path_assigned import run_assigned


def _pages_touched(frames: int) -> int:
    # The two ring pages, and the buffer pages of the first `frames` descriptors of each ring.
    per_page = 4096 // RX_BUFFER_SIZE
    buffers = {LAYOUT.tx_buffer(k) // 4096 for k in range(frames)}
    buffers |= {LAYOUT.rx_buffer(k) // 4096 for k in range(frames)}
    assert len(buffers) == 2 * -(-frames // per_page)
    return 2 + len(buffers)


def test_an_assigned_vf_costs_no_exit_and_one_walk_per_new_page():
    workload = IoWorkload(frames=40, size=200, burst=10, completion="poll")
    for result in run_assigned(workload):
        assert result.frames_intact == workload.frames
        assert result.counters.total_exits == 0
        assert result.iommu_walks == _pages_touched(workload.frames)
        assert result.iotlb_hits == result.iotlb_lookups - result.iommu_walks > 0


def test_remapped_interrupts_exit_once_each_and_posted_ones_not_at_all():
    workload = IoWorkload(frames=32, burst=8, completion="interrupt")
    remapped, posted = run_assigned(workload)
    assert (remapped.variant, posted.variant) == ("remapped", "posted")
    for result in (remapped, posted):
        assert result.frames_intact == workload.frames
        assert result.interrupts == workload.bursts
    # Per interrupt: the host vector's exit, and the guest's EOI without APIC virtualization.
    assert remapped.counters.by_reason() == {ExitReason.EXTERNAL_INTERRUPT: workload.bursts,
                                             ExitReason.MSR_WRITE: workload.bursts}
    assert posted.counters.total_exits == 0
    assert posted.counters.progress.posted_notifications == workload.bursts
