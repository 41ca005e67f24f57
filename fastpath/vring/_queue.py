"""What device and driver queues share: mapping the ring areas and naming the error counters."""

from __future__ import annotations

from fastpath._core import chain as _chain
from fastpath.errors import GuestMemoryError, error_for_code
from fastpath.hv import GuestMemory
from fastpath.vring._layout import (
    PACKED_ALIGN,
    SPLIT_ALIGN,
    RingAddresses,
    check_queue_size,
    packed_area_sizes,
    split_area_sizes,
)


class RingArea:
    """The host addresses of a ring's areas, and handles keeping their regions mapped."""

    def __init__(self, memory: GuestMemory, size: int, addresses: RingAddresses, packed: bool):
        check_queue_size(size, packed)
        sizes = packed_area_sizes(size) if packed else split_area_sizes(size)
        aligns = PACKED_ALIGN if packed else SPLIT_ALIGN
        names = ("descriptor", "driver", "device")
        self.memory = memory
        self.host: list[int] = []
        self.keepalive = []
        for name, gpa, nbytes, align in zip(
            names, (addresses.desc, addresses.driver, addresses.device), sizes, aligns, strict=True
        ):
            if gpa % align:
                raise GuestMemoryError(f"{name} area at {gpa:#x} is not {align}-byte aligned")
            try:
                host = memory.translate(gpa, nbytes)
            except GuestMemoryError as e:
                raise GuestMemoryError(f"{name} area of the ring: {e}") from None
            # A region placed at an odd guest address could leave an aligned gpa misaligned in
            # this process, and the core's atomic index accesses need natural alignment.
            if host % align:
                raise GuestMemoryError(f"{name} area at {gpa:#x} is misaligned in host memory")
            self.host.append(host)
            self.keepalive.append(memory.mapping_at(gpa))


def options(event_idx: bool, indirect: bool) -> int:
    return (_chain.FP_VQ_EVENT_IDX if event_idx else 0) | (_chain.FP_VQ_INDIRECT if indirect else 0)


def named_errors(counts: dict[int, int]) -> dict[str, int]:
    """{exception name: count} from the core's {-code: count}."""
    return {error_for_code(-code).__name__: n for code, n in counts.items()}


