"""Queues of the largest size the spec allows (32768), filled to the brim, over several laps."""

import numpy as np
import pytest

from fastpath.errors import RingFull
from fastpath.hv import GuestMemory
from fastpath.vring import (
    DRIVER_CHAIN_DTYPE,
    SEGMENT_DTYPE,
    USED_ELEM_DTYPE,
    PackedDeviceQueue,
    PackedDriverQueue,
    SplitDeviceQueue,
    SplitDriverQueue,
    ring_layout,
)

SIZE = 32768
BUFFERS = 16 << 20


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_2_7_2_8_a_full_32768_entry_ring_goes_round_three_times(packed):
    memory = GuestMemory([(0, 1 << 20), (BUFFERS, SIZE * 64)])
    rings = ring_layout(SIZE, 0x1000, packed)
    driver_class, device_class = (
        (PackedDriverQueue, PackedDeviceQueue) if packed else (SplitDriverQueue, SplitDeviceQueue)
    )
    driver = driver_class(memory, SIZE, rings, event_idx=True)
    device = device_class(memory, SIZE, rings, event_idx=True)
    chains = np.zeros(SIZE, dtype=DRIVER_CHAIN_DTYPE)
    chains["first_seg"] = np.arange(SIZE)
    chains["nseg"] = 1
    segments = np.zeros(SIZE, dtype=SEGMENT_DTYPE)
    segments["addr"] = BUFFERS + 64 * np.arange(SIZE)
    segments["len"] = 64
    memory.view(BUFFERS, SIZE * 64)[:] = np.arange(SIZE * 64, dtype=np.uint64).astype(np.uint8)
    burst = device.new_burst(SIZE)
    used = np.zeros(SIZE, dtype=USED_ELEM_DTYPE)
    for lap in range(3):
        assert driver.add_burst(chains, SIZE, segments) == SIZE, f"lap {lap}"
        assert driver.num_free == 0
        with pytest.raises(RingFull):
            driver.add(readable=[(BUFFERS, 1)])
        assert device.pop(burst) == SIZE
        assert (burst.chains["error"] == 0).all()
        assert (burst.chains["readable_len"] == 64).all()
        # The last chain's bytes arrive intact from the far end of the buffer area.
        assert burst.readable(SIZE - 1) == memory.read(BUFFERS + 64 * (SIZE - 1), 64)
        burst.chains["written"] = 0
        assert device.push(burst) == SIZE
        assert driver.collect_burst(used) == SIZE
        assert driver.num_free == SIZE
    assert device.errors == {} and driver.errors == {}
    memory.close()
