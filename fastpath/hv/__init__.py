"""The modelled platform: guest memory shared by memfd and its address translation; host
physical memory holding raw paging structures, walked by `fastpath.hv.ept` (GPA -> HPA) and
`fastpath.hv.paging` (GVA -> GPA -> HPA), and by `fastpath.hv.vtd` (VT-d remapping of device DMA,
IOVA -> HPA, with its remapping unit); the VMX model, `fastpath.hv.vmx` (VMCS, VM entries and
exits, a vCPU running a guest's event stream); `fastpath.hv.sriov` (a PF's SR-IOV capability
and its VFs, VMDq steering of received frames to pools and queues, VF DMA through VT-d);
`fastpath.hv.nic` (an emulated 8254x-style NIC, registers and descriptor rings in guest memory,
its DMA through the VMM's view of guest RAM or through VT-d, and the guest driver that runs
it)."""

from fastpath.hv._host_memory import FrameAllocator, HostMemory
from fastpath.hv._memory import HUGE_PAGE_SIZE, PAGE_SIZE, REGION_DTYPE, GuestMemory, SharedRegion

__all__ = ["GuestMemory", "SharedRegion", "REGION_DTYPE", "PAGE_SIZE", "HUGE_PAGE_SIZE",
           "HostMemory", "FrameAllocator"]
