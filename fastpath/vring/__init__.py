"""virtio 1.2 split and packed virtqueues over guest memory, device side and driver side.

A device pops available chains into a `Burst` and pushes them back used; a driver adds buffers,
asks whether to kick, and collects used ones. Numba loops call the same core through a queue's
`handle` and the functions of `fastpath.vring.kernels`.

A device queue can also record what it has in flight in an `InflightRegion`, one queue's part
of a vhost-user inflight area (QEMU docs/interop/vhost-user.rst, "Inflight I/O tracking"):
`DeviceQueue.track_inflight` explains how a queue started after a back-end restart pops the
chains that were in flight first. The region layouts are the `*_INFLIGHT_*_DTYPE`s, and
`inflight_region_size` is the room a queue's region takes.
"""

from fastpath.vring._device import Burst, DeviceQueue, PackedDeviceQueue, SplitDeviceQueue
from fastpath.vring._driver import DriverQueue, PackedDriverQueue, SplitDriverQueue
from fastpath.vring._features import (
    VIRTIO_F_ACCESS_PLATFORM,
    VIRTIO_F_IN_ORDER,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
)
from fastpath.vring._inflight import (
    INFLIGHT_ALIGN,
    INFLIGHT_VERSION,
    PACKED_INFLIGHT_DESC_DTYPE,
    PACKED_INFLIGHT_REGION_DTYPE,
    SPLIT_INFLIGHT_DESC_DTYPE,
    SPLIT_INFLIGHT_REGION_DTYPE,
    BadInflightRegion,
    InflightRegion,
    inflight_region_size,
)
from fastpath.vring._layout import (
    MAX_QUEUE_SIZE,
    PACKED_DESC_DTYPE,
    SPLIT_DESC_DTYPE,
    RingAddresses,
    ring_area_sizes,
    ring_bytes,
    ring_layout,
)
from fastpath.vring._records import (
    CHAIN_DTYPE,
    DRIVER_CHAIN_DTYPE,
    SEG_WRITE,
    SEGMENT_DTYPE,
    USED_ELEM_DTYPE,
)

__all__ = [
    # Feature bits (virtio 1.2 §6).
    "VIRTIO_RING_F_INDIRECT_DESC",
    "VIRTIO_RING_F_EVENT_IDX",
    "VIRTIO_F_VERSION_1",
    "VIRTIO_F_ACCESS_PLATFORM",
    "VIRTIO_F_RING_PACKED",
    "VIRTIO_F_IN_ORDER",
    "Burst",
    "DeviceQueue",
    "SplitDeviceQueue",
    "PackedDeviceQueue",
    "DriverQueue",
    "SplitDriverQueue",
    "PackedDriverQueue",
    "RingAddresses",
    "ring_layout",
    "ring_bytes",
    "ring_area_sizes",
    "MAX_QUEUE_SIZE",
    "SPLIT_DESC_DTYPE",
    "PACKED_DESC_DTYPE",
    "CHAIN_DTYPE",
    "SEGMENT_DTYPE",
    "DRIVER_CHAIN_DTYPE",
    "USED_ELEM_DTYPE",
    "SEG_WRITE",
    # vhost-user inflight tracking.
    "InflightRegion",
    "BadInflightRegion",
    "inflight_region_size",
    "INFLIGHT_ALIGN",
    "INFLIGHT_VERSION",
    "SPLIT_INFLIGHT_REGION_DTYPE",
    "SPLIT_INFLIGHT_DESC_DTYPE",
    "PACKED_INFLIGHT_REGION_DTYPE",
    "PACKED_INFLIGHT_DESC_DTYPE",
]
