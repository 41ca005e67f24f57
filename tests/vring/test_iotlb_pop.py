"""Device pops through an IOTLB (VIRTIO_F_ACCESS_PLATFORM, hv.md §5.4), on both ring types:
buffers are looked up by IOVA in the table for their access; a chain with an IOVA the IOTLB
lacks stays in the ring, the chains before it are taken, and the pop says what is missing; a
buffer mapped without the access it needs, or wrapping past 2**64, is refused as today."""

import pytest

from fastpath.errors import DescriptorOutsideMemory
from fastpath.hv import GuestMemory
from fastpath.vhost_user._iotlb import Iotlb
from fastpath.vhost_user.wire import IotlbAccess, IotlbMessage, IotlbType
from fastpath.vring import (
    PackedDeviceQueue,
    PackedDriverQueue,
    SplitDeviceQueue,
    SplitDriverQueue,
    ring_layout,
)

PAGE = 4096
OFFSET = 0x10_0000_0000   # IOVA = GPA + OFFSET
BUFFERS = 0x100000
READ, WRITE, RW = IotlbAccess.READ, IotlbAccess.WRITE, IotlbAccess.READ_WRITE


class Rings:
    """A driver and a device over one ring whose device looks buffers up in `iotlb`."""

    def __init__(self, packed):
        self.memory = GuestMemory([(0, 2 << 20)])
        layout = ring_layout(64, 0x1000, packed)
        driver, device = ((PackedDriverQueue, PackedDeviceQueue) if packed
                          else (SplitDriverQueue, SplitDeviceQueue))
        self.driver = driver(self.memory, 64, layout, indirect=True)
        self.device = device(self.memory, 64, layout, indirect=True)
        if packed:
            self.device.avail_state = (0, 1)
            self.device.used_state = (0, 1)
        self.iotlb = Iotlb()
        self.device.use_iotlb(self.iotlb.readable, self.iotlb.writable)
        self.burst = self.device.new_burst()

    def map(self, gpa, perm=RW, size=PAGE):
        self.iotlb.update(IotlbMessage(gpa + OFFSET, size, self.memory.guest_to_user(gpa),
                                       perm, IotlbType.UPDATE), self.memory)

    def pop(self):
        return self.device.pop(self.burst)


RING_TYPES = pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])


@RING_TYPES
def test_a_chain_waits_for_its_translation_behind_those_that_have_one(packed):
    rings = Rings(packed)
    rings.map(BUFFERS)
    rings.driver.add(readable=[(BUFFERS + OFFSET, 100)])
    rings.driver.add(readable=[(BUFFERS + OFFSET, 100)],
                     writable=[(BUFFERS + 0x1000 + OFFSET, 100)])
    rings.driver.add(readable=[(BUFFERS + OFFSET, 100)])
    assert rings.pop() == 1
    assert rings.device.take_miss() == (BUFFERS + 0x1000 + OFFSET, WRITE)
    assert rings.device.take_miss() is None          # taken once
    assert rings.pop() == 0                           # still waiting, nothing consumed
    rings.map(BUFFERS + 0x1000, WRITE)
    assert rings.pop() == 2
    assert rings.burst.error(0) is None and rings.burst.error(1) is None
    assert rings.device.errors == {}


@RING_TYPES
def test_a_buffer_across_two_mappings_translates_piece_by_piece(packed):
    rings = Rings(packed)
    rings.map(BUFFERS)
    rings.map(BUFFERS + PAGE)
    rings.driver.add(writable=[(BUFFERS + PAGE - 10 + OFFSET, 20)])
    assert rings.pop() == 1
    rings.burst.write(0, bytes(range(20)))
    assert rings.memory.read(BUFFERS + PAGE - 10, 20) == bytes(range(20))


@RING_TYPES
def test_a_missing_indirect_table_is_a_miss_for_reading(packed):
    rings = Rings(packed)
    rings.map(BUFFERS)
    table = BUFFERS + 0x4000
    rings.driver.add(readable=[(BUFFERS + OFFSET, 8)], writable=[(BUFFERS + OFFSET + 64, 8)],
                     indirect_table=table)
    # The driver wrote the table at its guest address; the ring's first descriptor (split
    # and packed alike: the address comes first) is to name its IOVA.
    rings.memory.view(0x1000, 16).view("<u8")[0] += OFFSET
    assert rings.pop() == 0
    assert rings.device.take_miss() == (table + OFFSET, READ)
    rings.map(table, READ)
    assert rings.pop() == 1 and rings.burst.error(0) is None


@RING_TYPES
def test_a_buffer_mapped_without_the_access_it_needs_is_refused(packed):
    rings = Rings(packed)
    rings.map(BUFFERS, READ)
    rings.driver.add(writable=[(BUFFERS + OFFSET, 64)])
    assert rings.pop() == 1
    assert rings.burst.error(0) is DescriptorOutsideMemory
    assert rings.device.take_miss() is None


@RING_TYPES
def test_a_buffer_wrapping_past_the_top_of_the_address_space_is_refused(packed):
    rings = Rings(packed)
    rings.driver.add(readable=[((1 << 64) - 16, 64)])
    assert rings.pop() == 1
    assert rings.burst.error(0) is DescriptorOutsideMemory
    assert rings.device.take_miss() is None

