"""The feature bits of virtqueues themselves (virtio 1.2 §6, "Reserved Feature Bits"): one home
for the numbers that every device, driver and back-end negotiates."""

VIRTIO_RING_F_INDIRECT_DESC = 28   # §2.7.5.3 / §2.8.19: indirect descriptor tables
VIRTIO_RING_F_EVENT_IDX = 29       # §2.7.7.2 / §2.8.10: used_event and avail_event
VIRTIO_F_VERSION_1 = 32            # virtio 1.x, little-endian rings
VIRTIO_F_ACCESS_PLATFORM = 33      # ring and buffer addresses go through the platform's IOMMU
VIRTIO_F_RING_PACKED = 34          # §2.8: the packed virtqueue layout
VIRTIO_F_IN_ORDER = 35             # §2.7.9 / §2.8.20: buffers used in the order made available
