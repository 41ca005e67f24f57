"""The modelled platform. For now: guest memory shared by memfd, and its address translation."""

from fastpath.hv._memory import HUGE_PAGE_SIZE, PAGE_SIZE, REGION_DTYPE, GuestMemory, SharedRegion

__all__ = ["GuestMemory", "SharedRegion", "REGION_DTYPE", "PAGE_SIZE", "HUGE_PAGE_SIZE"]
