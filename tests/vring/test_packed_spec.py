"""Packed virtqueues (virtio 1.2 §2.8), device and driver side, clause by clause.

Buffers are offered through `fastpath.testing.GuestDriver` (a real PackedDriverQueue) unless a
clause needs descriptors no correct driver writes; those are written raw with the AVAIL/USED
bits of the current wrap (§2.8.1).
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from fastpath.errors import GuestMemoryError
from fastpath.hv import GuestMemory
from fastpath.testing import GuestDriver
from fastpath.vring import (
    SEG_WRITE,
    PackedDeviceQueue,
    PackedDriverQueue,
    RingAddresses,
    ring_bytes,
    ring_layout,
)

MIB = 1 << 20
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
F_AVAIL, F_USED = 1 << 7, 1 << 15
EVENT_ENABLE, EVENT_DISABLE, EVENT_DESC = 0, 1, 2
WRAP_BIT = 1 << 15


def avail_bits(wrap: int) -> int:
    """AVAIL/USED bits that make a slot available in a lap whose driver wrap counter is `wrap`."""
    return F_AVAIL if wrap else F_USED


def used_bits(wrap: int) -> int:
    return F_AVAIL | F_USED if wrap else 0


def publish(g: GuestDriver, pos: int, wrap: int, descs: list[tuple[int, int, int, int]]):
    """Write descriptors (addr, len, id, flags) from slot pos as available, the head's flags
    last (§2.8.21); returns the (pos, wrap) after them."""
    head_flags = None
    for k, (addr, length, buffer_id, flags) in enumerate(descs):
        g.desc[pos] = (addr, length, buffer_id, 0 if k == 0 else flags | avail_bits(wrap))
        if k == 0:
            head, head_flags = pos, flags | avail_bits(wrap)
        pos += 1
        if pos == g.size:
            pos, wrap = 0, wrap ^ 1
    g.desc["flags"][head] = head_flags
    return pos, wrap


def event(g: GuestDriver, which: str) -> np.ndarray:
    """A ring's event suppression structure (§2.8.10) as u16 [off_wrap, flags]."""
    gpa = g.addresses.driver if which == "driver" else g.addresses.device
    return g.memory.view(gpa, 4).view(np.uint16)


def queue_pair(memory: GuestMemory, size: int = 16, base: int = 0x1000, **features):
    addresses = ring_layout(size, base, packed=True)
    return (PackedDriverQueue(memory, size, addresses, **features),
            PackedDeviceQueue(memory, size, addresses, **features))


def lap_state(slots: int, size: int) -> tuple[int, int]:
    """(position, wrap counter) after `slots` ring slots from the start (wrap starts at 1)."""
    return slots % size, 1 - (slots // size) % 2


# --- §2.8.1-§2.8.7 descriptors: direct, NEXT, INDIRECT, used descriptors ------------------------


def test_2_8_1_available_descriptor_has_avail_equal_to_wrap_and_used_not():
    g = GuestDriver(packed=True, size=8)
    buffer_id = g.send(b"hello")
    assert int(g.desc["flags"][0]) == F_AVAIL
    assert (int(g.desc["id"][0]), int(g.desc["len"][0])) == (buffer_id, 5)
    dev = g.device()
    burst = dev.new_burst()
    assert dev.pop(burst) == 1
    c = burst.chains[0]
    assert (c["id"], c["nseg"], c["nreadable"], c["ndesc"], c["error"]) == (buffer_id, 1, 1, 1, 0)
    assert burst.readable(0) == b"hello"
    assert burst.segments["addr"][0] == g.memory.translate(int(g.desc["addr"][0]), 5)
    assert dev.pop(burst) == 0  # slot 1 is not available


def test_2_8_2_used_descriptor_has_both_bits_equal_to_the_used_wrap():
    g = GuestDriver(packed=True, size=8)
    dev = g.device()
    burst = dev.new_burst()
    w = g.offer()
    r = g.send(b"read")
    dev.pop(burst)
    burst.write(0, b"written")
    dev.push(burst)
    # §2.8.3: WRITE is set on a used descriptor when the device wrote into the buffer.
    assert list(g.desc[["id", "len", "flags"]][:2].tolist()) == [
        (w, 7, F_AVAIL | F_USED | F_WRITE),
        (r, 0, F_AVAIL | F_USED),
    ]
    assert g.collect() == [(w, b"written"), (r, b"")]


def test_2_8_6_next_chain_takes_consecutive_slots_and_its_used_element_skips_them():
    g = GuestDriver(packed=True, size=16, buffer_size=1024)
    dev = g.device()
    burst = dev.new_burst()
    data = bytes(range(256)) * 10
    first = g.send(data, pieces=3, writable=2)
    flags = [int(f) & ~F_AVAIL for f in g.desc["flags"][:5]]
    assert flags == [F_NEXT, F_NEXT, F_NEXT, F_NEXT | F_WRITE, F_WRITE]
    assert dev.pop(burst) == 1
    c = burst.chains[0]
    assert (c["id"], c["nseg"], c["nreadable"], c["ndesc"]) == (first, 5, 3, 5)
    assert (c["readable_len"], c["writable_len"]) == (len(data), 2048)
    assert list(burst.segments["flags"][:5]) == [0, 0, 0, SEG_WRITE, SEG_WRITE]
    assert burst.readable(0) == data
    burst.write(0, b"x" * 1500)
    dev.push(burst)
    assert dev.used_state == (5, 1)
    assert g.queue.collect() == [(first, 1500)]
    second = g.send(b"second")
    assert int(g.desc["flags"][5]) == F_AVAIL
    assert dev.pop(burst) == 1 and burst.chains["id"][0] == second
    dev.push(burst)
    assert int(g.desc["id"][5]) == second and int(g.desc["flags"][5]) == F_AVAIL | F_USED


def test_2_8_6_buffer_id_is_taken_from_the_last_descriptor_of_a_chain():
    g = GuestDriver(packed=True, size=8)
    dev = g.device()
    burst = dev.new_burst()
    a = g.buffer_address(0)
    publish(g, 0, 1, [(a, 4, 9, F_NEXT), (a, 4, 9, F_NEXT), (a, 4, 3, 0)])
    assert dev.pop(burst) == 1
    assert (burst.chains["id"][0], burst.chains["ndesc"][0]) == (3, 3)
    dev.push(burst)
    assert int(g.desc["id"][0]) == 3


def test_2_8_7_indirect_table_is_read_as_the_chain():
    g = GuestDriver(packed=True, size=8, indirect=True)
    dev = g.device()
    burst = dev.new_burst()
    data = b"indirect!" * 300
    buffer_id = g.offer(pieces=3, indirect=True)
    assert int(g.desc["flags"][0]) == F_INDIRECT | F_AVAIL
    assert int(g.desc["len"][0]) == 3 * 16
    other = g.send(data, pieces=2, indirect=True)
    assert g.queue.num_free == 6
    assert dev.pop(burst) == 2
    c = burst.chains[:2]
    assert list(c["ndesc"]) == [1, 1] and list(c["error"]) == [0, 0]
    assert (c["nseg"][0], c["nreadable"][0], c["writable_len"][0]) == (3, 0, 3 * 2048)
    assert (c["nseg"][1], c["nreadable"][1]) == (2, 2)
    assert burst.readable(1) == data
    burst.write(0, b"via table")
    dev.push(burst)
    assert g.collect() == [(buffer_id, b"via table"), (other, b"")]
    assert g.queue.num_free == 8


# --- §2.8.8/§2.8.9 completion order and lengths ------------------------------------------------


def test_2_8_in_order_push_returns_buffers_in_pop_order():
    g = GuestDriver(packed=True, size=16)
    dev = g.device()
    burst = dev.new_burst()
    ids = [g.offer(pieces=p) for p in (1, 2, 3)]
    assert dev.pop(burst) == 3
    for i in range(3):
        burst.write(i, bytes([65 + i]) * (i + 1))
    assert dev.push(burst) == 3
    assert [int(g.desc["id"][s]) for s in (0, 1, 3)] == ids  # each at its chain's first slot
    assert dev.used_state == (6, 1)
    assert g.collect() == [(ids[i], bytes([65 + i]) * (i + 1)) for i in range(3)]


def test_2_8_out_of_order_push_writes_used_elements_in_push_order():
    g = GuestDriver(packed=True, size=6)
    dev = g.device()
    burst = dev.new_burst()
    ids = [g.offer(pieces=p) for p in (1, 3, 2)]
    assert g.queue.num_free == 0
    dev.pop(burst)
    for i in range(3):
        burst.write(i, f"reply {i}".encode())
    order = [1, 2, 0]
    assert dev.push(burst, order) == 3
    # Used elements go where the device's used index is, moving by each chain's slot count.
    assert [int(g.desc["id"][s]) for s in (0, 3, 5)] == [ids[i] for i in order]
    assert dev.used_state == (0, 0)
    assert g.collect() == [(ids[i], f"reply {i}".encode()) for i in order]
    assert g.queue.num_free == 6
    again = [g.offer(pieces=2) for _ in range(3)]
    assert dev.pop(burst) == 3 and list(burst.chains["id"][:3]) == again


def test_2_8_used_length_never_exceeds_the_writable_length():
    g = GuestDriver(packed=True, size=8, buffer_size=512)
    dev = g.device()
    burst = dev.new_burst()
    w = g.offer(pieces=2)
    r = g.send(b"read only")
    dev.pop(burst)
    assert burst.write(0, b"z" * 5000) == 1024
    burst.chains["written"][0] = 5000
    burst.chains["written"][1] = 7
    dev.push(burst)
    assert int(g.desc["len"][0]) == 1024
    assert int(g.desc["len"][2]) == 0
    assert g.queue.collect() == [(w, 1024), (r, 0)]


# --- Buffers across adjacent regions -----------------------------------------------------------


def test_buffer_spanning_two_adjacent_regions_comes_back_as_two_segments():
    with GuestMemory([(0, MIB), (MIB, MIB)]) as memory:
        driver, dev = queue_pair(memory, size=7)
        data = bytes(range(256)) + bytes(range(44))
        memory.write(MIB - 100, data[:100])
        memory.write(MIB, data[100:])
        buffer_id = driver.add([(MIB - 100, 300)], [(MIB - 10, 30)])
        burst = dev.new_burst()
        assert dev.pop(burst) == 1
        c = burst.chains[0]
        assert (c["id"], c["error"], c["nseg"], c["nreadable"]) == (buffer_id, 0, 4, 2)
        segs = burst.segments[:4]
        assert list(segs["len"]) == [100, 200, 10, 20]
        assert list(segs["flags"]) == [0, 0, SEG_WRITE, SEG_WRITE]
        assert segs["addr"][0] == memory.translate(MIB - 100, 100)
        assert segs["addr"][1] == memory.translate(MIB, 200)
        assert burst.readable(0) == data
        reply = bytes(range(100, 130))
        assert burst.write(0, reply) == 30
        dev.push(burst)
        assert memory.read(MIB - 10, 10) + memory.read(MIB, 20) == reply
        assert driver.collect() == [(buffer_id, 30)]


# --- §2.8.1 wrap counters over several laps ----------------------------------------------------


@pytest.mark.parametrize("size", [1, 3, 5, 7, 31])
def test_2_8_1_wrap_counters_flip_each_lap_with_odd_queue_sizes(size):
    rng = random.Random(size)
    g = GuestDriver(packed=True, size=size, indirect=True, buffer_size=256,
                    buffers=8 * size + 8)
    dev = g.device()
    burst = dev.new_burst(max_chains=size)
    slots = 0
    while slots < 6 * size + 1:
        offered = {}
        while g.queue.num_free and (not offered or rng.random() < 0.8):
            indirect = rng.random() < 0.3
            pieces = rng.randint(1, 3 if indirect else min(3, g.queue.num_free))
            kind = rng.choice(["read", "write"])
            if kind == "read":
                data = rng.randbytes(rng.randint(0, 256 * pieces))
                offered[g.send(data, pieces=pieces, indirect=indirect)] = (kind, data)
            else:
                offered[g.offer(pieces=pieces, indirect=indirect)] = (kind, pieces)
        n = dev.pop(burst)
        assert n == len(offered) and not burst.chains["error"][:n].any()
        replies = {}
        for i in range(n):
            buffer_id = int(burst.chains["id"][i])
            kind, arg = offered[buffer_id]
            if kind == "read":
                assert burst.readable(i) == arg
            else:
                replies[buffer_id] = rng.randbytes(rng.randint(1, 256 * arg))
                burst.write(i, replies[buffer_id])
            slots += int(burst.chains["ndesc"][i])
        order = list(range(n))
        rng.shuffle(order)
        assert dev.push(burst, order) == n
        done = dict(g.collect())
        assert set(done) == set(offered)
        for buffer_id, reply in replies.items():
            assert done[buffer_id] == reply
        assert dev.avail_state == dev.used_state == lap_state(slots, size)
        assert g.queue.avail_state == lap_state(slots, size)
        assert g.queue.num_free == size
    assert dev.errors == {} and g.queue.errors == {}


def test_2_8_1_a_slot_left_from_the_previous_lap_is_not_available():
    g = GuestDriver(packed=True, size=3)
    dev = g.device()
    burst = dev.new_burst()
    for _ in range(3):
        g.send(b"x")
    dev.pop(burst)
    dev.push(burst)
    g.collect()
    assert dev.avail_state == (0, 0)
    # Slot 0 still carries lap 1's AVAIL bit; in lap 2 that reads as "used", not available.
    g.desc["flags"][0] = F_AVAIL
    assert dev.pop(burst) == 0
    g.desc["flags"][0] = F_USED  # lap 2's "available"
    assert dev.pop(burst) == 1


# --- §2.8.10 event suppression, both directions ------------------------------------------------


def test_2_8_10_driver_event_enable_and_disable_decide_notifications():
    g = GuestDriver(packed=True, size=8)
    dev = g.device()
    burst = dev.new_burst()

    def round_trip() -> bool:
        g.send(b"x")
        dev.pop(burst)
        dev.push(burst)
        return dev.should_notify()

    assert list(event(g, "driver")) == [0, EVENT_ENABLE]
    assert round_trip() is True
    assert dev.should_notify() is False  # nothing pushed since
    g.queue.disable_calls()
    assert int(event(g, "driver")[1]) == EVENT_DISABLE
    assert round_trip() is False
    assert g.queue.enable_calls() == 1  # used buffers are waiting
    assert int(event(g, "driver")[1]) == EVENT_ENABLE
    assert round_trip() is True


def test_2_8_10_driver_event_desc_names_the_slot_that_triggers_a_notification():
    g = GuestDriver(packed=True, size=8, event_idx=True)
    dev = g.device()
    burst = dev.new_burst()
    for _ in range(6):
        g.send(b"x")
    dev.pop(burst)
    drv_event = event(g, "driver")
    drv_event[:] = [3 | WRAP_BIT, EVENT_DESC]  # "notify when slot 3 of this lap is used"
    notified = []
    for i in range(6):
        dev.push_chains(burst.chains[i : i + 1])
        notified.append(dev.should_notify())
    assert notified == [False, False, False, True, False, False]


def test_2_8_10_a_lap_or_more_without_a_decision_still_notifies():
    # Regression: the count of slots used since the last decision was 16 bits wide, so after
    # exactly 65536 of them the device decided nothing had happened.
    g = GuestDriver(packed=True, size=8, event_idx=True)
    dev = g.device()
    burst = dev.new_burst(8)
    event(g, "driver")[:] = [3 | WRAP_BIT, EVENT_DESC]
    for _ in range(65536 // 8):
        for _ in range(8):
            g.send(b"x")
        assert dev.pop(burst) == 8
        dev.push(burst)
        g.collect()
    assert dev.should_notify() is True


def test_2_8_10_enable_calls_with_event_idx_asks_for_the_next_used_slot():
    g = GuestDriver(packed=True, size=5, event_idx=True)
    dev = g.device()
    burst = dev.new_burst()
    for _ in range(4):
        g.send(b"x")
    dev.pop(burst)
    dev.push_chains(burst.chains[:1])
    dev.should_notify()
    g.queue.collect()
    assert g.queue.enable_calls() == 0
    assert list(event(g, "driver")) == [1 | WRAP_BIT, EVENT_DESC]
    dev.push_chains(burst.chains[1:2])
    assert dev.should_notify() is True
    dev.push_chains(burst.chains[2:3])
    assert dev.should_notify() is False  # the driver has not asked again


def test_2_8_10_driver_event_desc_in_the_next_lap_with_an_odd_size():
    size = 5
    g = GuestDriver(packed=True, size=size, event_idx=True)
    dev = g.device()
    burst = dev.new_burst(max_chains=1)
    notified = []
    # Ask for slot 2 of the second lap (wrap counter 0): the 8th used slot from the start.
    event(g, "driver")[:] = [2, EVENT_DESC]
    for _ in range(2 * size):
        g.send(b"x")
        dev.pop(burst)
        dev.push(burst)
        notified.append(dev.should_notify())
        g.queue.collect()
    assert [i for i, n in enumerate(notified) if n] == [size + 2]


def test_2_8_10_device_event_passing_a_slot_across_the_lap_end_notifies():
    size = 5
    g = GuestDriver(packed=True, size=size, event_idx=True)
    dev = g.device()
    burst = dev.new_burst()
    for _ in range(4):
        g.send(b"x")
    dev.pop(burst)
    dev.push(burst)
    dev.should_notify()
    g.queue.collect()
    # Used index at slot 4 of lap 1. The driver asks for slot 4 of lap 1; one push of two
    # chains takes the used index to slot 1 of lap 2, past it.
    event(g, "driver")[:] = [4 | WRAP_BIT, EVENT_DESC]
    g.send(b"x")
    g.send(b"x")
    assert dev.pop(burst) == 2
    dev.push(burst)
    assert dev.used_state == (1, 0)
    assert dev.should_notify() is True


def test_2_8_10_device_event_enable_and_disable_decide_kicks():
    g = GuestDriver(packed=True, size=8)
    dev = g.device()
    g.send(b"x")
    assert g.queue.should_kick() is True
    assert g.queue.should_kick() is False
    dev.disable_kicks()
    assert int(event(g, "device")[1]) == EVENT_DISABLE
    g.send(b"x")
    assert g.queue.should_kick() is False
    assert dev.enable_kicks() == 1  # a chain is available and was never popped
    assert int(event(g, "device")[1]) == EVENT_ENABLE
    g.send(b"x")
    assert g.queue.should_kick() is True


def test_2_8_10_device_event_desc_names_the_slot_that_triggers_a_kick():
    size = 7
    g = GuestDriver(packed=True, size=size, event_idx=True)
    dev = g.device()
    burst = dev.new_burst()
    # Kick wanted once the driver makes slot 2 of the second lap available.
    event(g, "device")[:] = [2, EVENT_DESC]
    kicks = []
    for _ in range(2 * size):
        g.send(b"x")
        kicks.append(g.queue.should_kick())
        dev.pop(burst)
        dev.push(burst)
        g.collect()
    assert [i for i, k in enumerate(kicks) if k] == [size + 2]


# --- Queue sizes, layout, placement ------------------------------------------------------------


def test_2_8_ring_layout_follows_the_alignment_rules():
    # Descriptor ring 16-aligned, 16 bytes a slot; the two event structures 4 bytes, 4-aligned.
    assert ring_layout(5, 0, packed=True) == RingAddresses(0, 80, 84)
    assert ring_bytes(5, packed=True) == 88
    assert ring_layout(1, 0x1000, packed=True) == RingAddresses(0x1000, 0x1010, 0x1014)


@pytest.fixture(scope="module")
def big_memory():
    with GuestMemory([(0, 2 * MIB)]) as memory:
        yield memory


@pytest.mark.parametrize("size", [1, 2, 3, 5, 255, 1000, 4097, 32767, 32768])
def test_2_8_queue_size_may_be_anything_from_1_to_32768(big_memory, size):
    addresses = ring_layout(size, 0x1000, packed=True)
    driver = PackedDriverQueue(big_memory, size, addresses)
    dev = PackedDeviceQueue(big_memory, size, addresses)
    assert driver.size == dev.size == size == driver.num_free


@pytest.mark.parametrize("size", [0, 32769, 65536, -1])
def test_2_8_queue_size_outside_1_to_32768_is_refused(big_memory, size):
    addresses = ring_layout(16, 0x1000, packed=True)
    with pytest.raises(ValueError):
        ring_layout(size, 0x1000, packed=True)
    with pytest.raises(ValueError):
        PackedDeviceQueue(big_memory, size, addresses)
    with pytest.raises(ValueError):
        PackedDriverQueue(big_memory, size, addresses)


@pytest.mark.parametrize(
    "area, offset", [("desc", 8), ("desc", 4), ("driver", 2), ("device", 2), ("device", 1)]
)
def test_2_8_misaligned_ring_area_is_refused(big_memory, area, offset):
    good = ring_layout(16, 0x1000, packed=True)
    fields = {"desc": good.desc, "driver": good.driver, "device": good.device}
    fields[area] += offset
    bad = RingAddresses(**fields)
    with pytest.raises(GuestMemoryError):
        PackedDeviceQueue(big_memory, 16, bad)
    with pytest.raises(GuestMemoryError):
        PackedDriverQueue(big_memory, 16, bad)


@pytest.mark.parametrize(
    "area, gpa",
    [
        ("desc", 3 * MIB),  # in the hole
        ("desc", MIB - 128),  # runs off region 0 into the hole
        ("driver", 4 * MIB - 2),  # starts in the hole, ends in region 1
        ("device", 5 * MIB - 2),  # runs off the end of memory
        ("device", (1 << 64) - 4),  # the last bytes below 2**64
        ("desc", (1 << 64) - 128),
    ],
)
def test_2_8_ring_area_outside_guest_memory_is_refused(area, gpa):
    with GuestMemory([(0, MIB), (4 * MIB, MIB)]) as memory:
        good = ring_layout(16, 0x1000, packed=True)
        fields = {"desc": good.desc, "driver": good.driver, "device": good.device}
        fields[area] = gpa
        bad = RingAddresses(**fields)
        with pytest.raises(GuestMemoryError):
            PackedDeviceQueue(memory, 16, bad)
        with pytest.raises(GuestMemoryError):
            PackedDriverQueue(memory, 16, bad)


# --- The guest-driver mock ----------------------------------------------------------------------


def test_guest_driver_never_reuses_the_indirect_table_of_a_buffer_in_flight():
    g = GuestDriver(packed=True, size=8, indirect=True)
    dev = g.device()
    one = dev.new_burst(max_chains=1)
    g.send(b"AAAA", indirect=True)
    g.send(b"BBBB", indirect=True)
    dev.pop(one)
    dev.push(one)
    g.collect()  # A is back; B is still in flight and not yet popped
    g.send(b"CCCC", indirect=True)
    seen = []
    while dev.pop(one):
        seen.append(one.readable(0))
    assert seen == [b"BBBB", b"CCCC"]
