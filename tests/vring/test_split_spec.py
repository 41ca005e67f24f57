"""Split virtqueues (virtio 1.2 §2.7), device and driver side, clause by clause.

Buffers are offered through `fastpath.testing.GuestDriver` (a real SplitDriverQueue) unless a
clause needs a layout no correct driver writes, in which case the descriptor table and the avail
ring are written raw.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastpath.errors import GuestMemoryError
from fastpath.hv import GuestMemory
from fastpath.testing import GuestDriver
from fastpath.vring import (
    DRIVER_CHAIN_DTYPE,
    SEG_WRITE,
    SEGMENT_DTYPE,
    SPLIT_DESC_DTYPE,
    USED_ELEM_DTYPE,
    RingAddresses,
    SplitDeviceQueue,
    SplitDriverQueue,
    ring_bytes,
    ring_layout,
)

MIB = 1 << 20
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
AVAIL_F_NO_INTERRUPT = USED_F_NO_NOTIFY = 1


def used_elems(g: GuestDriver, n: int) -> list[tuple[int, int]]:
    """The first n used ring elements, raw, as (id, len)."""
    raw = g.used_ring()
    return [(int(raw[2 * i]), int(raw[2 * i + 1])) for i in range(n)]


def used_header(g: GuestDriver) -> tuple[int, int]:
    """(flags, idx) of the used ring."""
    flags, idx = g.memory.view(g.addresses.device, 4).view(np.uint16)
    return int(flags), int(idx)


def avail_event(g: GuestDriver) -> np.ndarray:
    """The avail_event field after the used ring (§2.7.8), as a writable u16 view."""
    return g.memory.view(g.addresses.device + 4 + 8 * g.size, 2).view(np.uint16)


def used_event(g: GuestDriver) -> np.ndarray:
    """The used_event field after the avail ring (§2.7.6), as a writable u16 view."""
    return g.avail_ring()[2 + g.size :]


def writable_bytes(g: GuestDriver, head: int, n: int) -> bytes:
    """The first n bytes of a split chain's device-writable buffers, found as a guest would:
    by walking the descriptor table (and an indirect table) from head."""
    table, i, out = g.desc, head, bytearray()
    while True:
        addr, length, flags, nxt = (int(x) for x in table[i])
        if flags & F_INDIRECT:
            table = np.frombuffer(g.memory.read(addr, length), dtype=SPLIT_DESC_DTYPE)
            i = 0
            continue
        if flags & F_WRITE:
            out += g.memory.read(addr, length)
        if not flags & F_NEXT:
            return bytes(out[:n])
        i = nxt


def queue_pair(memory: GuestMemory, size: int = 16, base: int = 0x1000, **features):
    addresses = ring_layout(size, base, packed=False)
    return (SplitDriverQueue(memory, size, addresses, **features),
            SplitDeviceQueue(memory, size, addresses, **features))


# --- §2.7.5 descriptor table: direct, NEXT and INDIRECT chains ---------------------------------


def test_2_7_5_single_descriptor_is_one_readable_segment():
    g = GuestDriver(size=16)
    dev = g.device()
    burst = dev.new_burst()
    buffer_id = g.send(b"hello")
    assert dev.pop(burst) == 1
    c = burst.chains[0]
    assert (c["id"], c["nseg"], c["nreadable"], c["ndesc"], c["error"]) == (buffer_id, 1, 1, 1, 0)
    assert (c["readable_len"], c["writable_len"]) == (5, 0)
    seg = burst.segments[c["first_seg"]]
    assert seg["addr"] == g.memory.translate(int(g.desc["addr"][buffer_id]), 5)
    assert (seg["len"], seg["flags"]) == (5, 0)
    assert burst.readable(0) == b"hello"
    assert dev.popped == 1


def test_2_7_5_next_chain_is_walked_in_order_readable_before_writable():
    g = GuestDriver(size=16, buffer_size=1024)
    dev = g.device()
    burst = dev.new_burst()
    data = bytes(range(256)) * 10
    buffer_id = g.send(data, pieces=3, writable=2)
    # The driver wrote a NEXT chain of five descriptors, readable ones first (§2.7.4.2).
    i, flags = buffer_id, []
    for _ in range(5):
        flags.append(int(g.desc["flags"][i]))
        i = int(g.desc["next"][i])
    assert flags == [F_NEXT, F_NEXT, F_NEXT, F_NEXT | F_WRITE, F_WRITE]
    assert dev.pop(burst) == 1
    c = burst.chains[0]
    assert (c["nseg"], c["nreadable"], c["ndesc"]) == (5, 3, 1)
    assert (c["readable_len"], c["writable_len"]) == (len(data), 2 * 1024)
    segs = burst.segments[c["first_seg"] : c["first_seg"] + 5]
    assert list(segs["flags"]) == [0, 0, 0, SEG_WRITE, SEG_WRITE]
    assert burst.readable(0) == data
    reply = b"r" * 1500
    assert burst.write(0, reply) == 1500
    assert dev.push(burst) == 1
    assert g.queue.collect() == [(buffer_id, 1500)]
    assert writable_bytes(g, buffer_id, 1500) == reply


def test_2_7_5_write_only_chain_has_no_readable_part():
    g = GuestDriver(size=16)
    dev = g.device()
    burst = dev.new_burst()
    g.offer(pieces=2)
    dev.pop(burst)
    c = burst.chains[0]
    assert (c["nseg"], c["nreadable"], c["readable_len"], c["writable_len"]) == (2, 0, 0, 4096)
    assert burst.readable(0) == b""


def test_2_7_5_3_indirect_table_is_read_as_the_chain():
    g = GuestDriver(size=16, indirect=True)
    dev = g.device()
    burst = dev.new_burst()
    data = b"indirect!" * 300
    buffer_id = g.send(data, pieces=2, writable=1, indirect=True)
    head = g.desc[buffer_id]
    assert (int(head["flags"]), int(head["len"])) == (F_INDIRECT, 3 * 16)
    assert g.queue.num_free == 15  # one ring descriptor for three buffers
    assert dev.pop(burst) == 1
    c = burst.chains[0]
    assert (c["nseg"], c["nreadable"], c["ndesc"], c["error"]) == (3, 2, 1, 0)
    assert burst.readable(0) == data
    burst.write(0, b"via table")
    dev.push(burst)
    assert g.queue.collect() == [(buffer_id, 9)]
    assert writable_bytes(g, buffer_id, 9) == b"via table"
    assert g.queue.num_free == 16


def test_2_7_5_3_indirect_descriptor_may_end_a_direct_chain():
    g = GuestDriver(size=16, indirect=True)
    dev = g.device()
    burst = dev.new_burst()
    buf = [g.buffer_address(k) for k in range(3)]
    g.memory.write(buf[0], b"head|")
    g.memory.write(buf[1], b"table")
    table = g.table_address(0)
    entries = np.array([(buf[1], 5, F_NEXT, 1), (buf[2], 100, F_WRITE, 0)],
                       dtype=SPLIT_DESC_DTYPE)
    g.memory.write(table, entries.tobytes())
    g.desc[3] = (buf[0], 5, F_NEXT, 9)
    g.desc[9] = (table, entries.nbytes, F_INDIRECT, 0)
    g.publish_heads([3])
    assert dev.pop(burst) == 1
    c = burst.chains[0]
    assert (c["id"], c["error"], c["nseg"], c["nreadable"]) == (3, 0, 3, 2)
    assert (c["readable_len"], c["writable_len"]) == (10, 100)
    assert burst.readable(0) == b"head|table"
    assert dev.errors == {}


# --- §2.7.8 used ring: order, lengths ----------------------------------------------------------


def test_2_7_8_in_order_push_fills_the_used_ring_in_pop_order():
    g = GuestDriver(size=16)
    dev = g.device()
    burst = dev.new_burst()
    ids = [g.send(b"x", writable=1) for _ in range(4)]
    assert dev.pop(burst) == 4
    assert list(burst.chains["id"][:4]) == ids
    for i in range(4):
        burst.write(i, bytes([65 + i]) * (i + 1))
    assert dev.push(burst) == 4
    assert used_header(g) == (0, 4)
    assert used_elems(g, 4) == [(ids[i], i + 1) for i in range(4)]
    assert g.queue.collect() == [(ids[i], i + 1) for i in range(4)]
    for i in range(4):
        assert writable_bytes(g, ids[i], i + 1) == bytes([65 + i]) * (i + 1)
    assert dev.pushed == 4


def test_2_7_8_out_of_order_push_returns_buffers_in_push_order():
    g = GuestDriver(size=8)
    dev = g.device()
    burst = dev.new_burst()
    ids = [g.offer(pieces=2) for _ in range(4)]
    assert g.queue.num_free == 0
    dev.pop(burst)
    for i in range(4):
        burst.write(i, f"reply {i}".encode())
    order = [2, 0, 3, 1]
    assert dev.push(burst, order) == 4
    assert [e[0] for e in used_elems(g, 4)] == [ids[i] for i in order]
    assert g.collect() == [(ids[i], f"reply {i}".encode()) for i in order]
    # Every descriptor came back to the driver's free list, whatever the completion order.
    assert g.queue.num_free == 8
    again = [g.offer(pieces=2) for _ in range(4)]
    assert sorted(again) == sorted(ids)
    assert dev.pop(burst) == 4 and all(burst.chains["error"][:4] == 0)


def test_2_7_8_1_used_length_never_exceeds_the_writable_length():
    g = GuestDriver(size=16, buffer_size=512)
    dev = g.device()
    burst = dev.new_burst()
    w = g.offer(pieces=2)
    r = g.send(b"read only")
    dev.pop(burst)
    assert burst.write(0, b"z" * 5000) == 1024  # the copy stops at the writable bytes
    burst.chains["written"][0] = 5000  # a device claiming more than it was offered
    burst.chains["written"][1] = 7  # a device claiming to have written a read-only buffer
    dev.push(burst)
    assert used_elems(g, 2) == [(w, 1024), (r, 0)]


def test_2_7_8_push_of_a_written_chain_reports_its_bytes():
    g = GuestDriver(size=16)
    dev = g.device()
    burst = dev.new_burst()
    g.send(b"ping", writable=1)
    dev.pop(burst)
    burst.write(0, b"pong")
    dev.push(burst)
    assert [n for _, n in used_elems(g, 1)] == [4]


def test_push_with_an_empty_order_pushes_nothing():
    g = GuestDriver(size=8)
    dev = g.device()
    burst = dev.new_burst()
    g.send(b"x")
    dev.pop(burst)
    assert dev.push(burst, []) == 0
    assert dev.push(burst, [0]) == 1


# --- Buffers across adjacent regions -----------------------------------------------------------


def test_buffer_spanning_two_adjacent_regions_comes_back_as_two_segments():
    with GuestMemory([(0, MIB), (MIB, MIB)]) as memory:
        driver, dev = queue_pair(memory)
        data = bytes(range(256)) + bytes(range(44))
        memory.write(MIB - 100, data[:100])
        memory.write(MIB, data[100:])
        buffer_id = driver.add([(MIB - 100, 300)])
        burst = dev.new_burst()
        assert dev.pop(burst) == 1
        c = burst.chains[0]
        assert (c["id"], c["error"], c["nseg"], c["nreadable"]) == (buffer_id, 0, 2, 2)
        assert c["readable_len"] == 300
        segs = burst.segments[:2]
        assert list(segs["len"]) == [100, 200]
        assert segs["addr"][0] == memory.translate(MIB - 100, 100)
        assert segs["addr"][1] == memory.translate(MIB, 200)
        assert burst.readable(0) == data
        assert dev.errors == {}


def test_writable_buffer_spanning_two_adjacent_regions_is_written_across_both():
    with GuestMemory([(0, MIB), (MIB, MIB)]) as memory:
        driver, dev = queue_pair(memory)
        buffer_id = driver.add([(0x8000, 4)], [(MIB - 10, 30)])
        burst = dev.new_burst()
        dev.pop(burst)
        c = burst.chains[0]
        assert (c["nseg"], c["nreadable"], c["writable_len"]) == (3, 1, 30)
        assert list(burst.segments["flags"][1:3]) == [SEG_WRITE, SEG_WRITE]
        reply = bytes(range(100, 130))
        assert burst.write(0, reply) == 30
        dev.push(burst)
        assert memory.read(MIB - 10, 10) + memory.read(MIB, 20) == reply
        assert driver.collect() == [(buffer_id, 30)]


# --- §2.7.7 used buffer notification suppression -----------------------------------------------


def test_2_7_7_no_interrupt_flag_suppresses_notifications_without_event_idx():
    g = GuestDriver(size=16)
    dev = g.device()
    burst = dev.new_burst()

    def round_trip() -> bool:
        g.send(b"x")
        dev.pop(burst)
        dev.push(burst)
        return dev.should_notify()

    assert round_trip() is True
    assert dev.should_notify() is False  # nothing pushed since
    g.queue.disable_calls()
    assert int(g.avail_ring()[0]) == AVAIL_F_NO_INTERRUPT
    assert round_trip() is False
    assert g.queue.enable_calls() == 2  # two used buffers already waiting, not collected
    assert int(g.avail_ring()[0]) == 0
    assert round_trip() is True


def test_2_7_7_used_event_names_the_used_index_that_triggers_a_notification():
    g = GuestDriver(size=16, event_idx=True)
    dev = g.device()
    burst = dev.new_burst()
    for _ in range(6):
        g.send(b"x")
    assert dev.pop(burst) == 6
    used_event(g)[0] = 2  # "notify me when used idx moves past 2"
    notified = []
    for i in range(6):
        dev.push_chains(burst.chains[i : i + 1])
        notified.append(dev.should_notify())
    assert notified == [False, False, True, False, False, False]


def test_2_7_7_one_batch_crossing_used_event_notifies_once():
    g = GuestDriver(size=16, event_idx=True)
    dev = g.device()
    burst = dev.new_burst()
    for _ in range(5):
        g.send(b"x")
    dev.pop(burst)
    used_event(g)[0] = 3
    dev.push_chains(burst.chains[:2])
    assert dev.should_notify() is False
    dev.push_chains(burst.chains[2:5])  # used idx 2 -> 5 passes 3
    assert dev.should_notify() is True


def test_2_7_7_driver_collect_moves_used_event():
    g = GuestDriver(size=16, event_idx=True)
    dev = g.device()
    burst = dev.new_burst()

    def round_trip() -> bool:
        g.send(b"x")
        dev.pop(burst)
        dev.push(burst)
        return dev.should_notify()

    assert round_trip() is True  # used_event starts at 0
    assert round_trip() is False  # the driver has not caught up: no new notification
    assert len(g.collect()) == 2
    assert int(used_event(g)[0]) == 2
    assert round_trip() is True


def test_2_7_7_with_event_idx_the_no_interrupt_flag_is_ignored():
    g = GuestDriver(size=16, event_idx=True)
    dev = g.device()
    burst = dev.new_burst()
    g.avail_ring()[0] = AVAIL_F_NO_INTERRUPT
    g.send(b"x")
    dev.pop(burst)
    dev.push(burst)
    assert dev.should_notify() is True  # used_event 0 was passed


def test_2_7_7_disabled_calls_with_event_idx_stop_moving_used_event():
    g = GuestDriver(size=16, event_idx=True)
    dev = g.device()
    burst = dev.new_burst()
    g.queue.disable_calls()
    for _ in range(3):
        g.send(b"x")
        dev.pop(burst)
        dev.push(burst)
        g.collect()
    assert int(used_event(g)[0]) == 0
    assert g.queue.enable_calls() == 0
    assert int(used_event(g)[0]) == 3


# --- §2.7.10 available buffer notification suppression -----------------------------------------


def test_2_7_10_no_notify_flag_suppresses_kicks_without_event_idx():
    g = GuestDriver(size=16)
    dev = g.device()
    g.send(b"x")
    assert g.queue.should_kick() is True
    assert g.queue.should_kick() is False  # nothing added since
    dev.disable_kicks()
    assert used_header(g)[0] == USED_F_NO_NOTIFY
    g.send(b"x")
    assert g.queue.should_kick() is False
    assert dev.enable_kicks() == 2  # two chains were added and never popped
    assert used_header(g)[0] == 0
    g.send(b"x")
    assert g.queue.should_kick() is True


def test_2_7_10_avail_event_names_the_avail_index_that_triggers_a_kick():
    g = GuestDriver(size=16, event_idx=True)
    dev = g.device()
    burst = dev.new_burst()
    kicks = []
    for _ in range(2):
        g.send(b"x")
        kicks.append(g.queue.should_kick())
    assert kicks == [True, False]  # avail_event 0: kick for index 0 only
    dev.pop(burst)
    assert int(avail_event(g)[0]) == 2  # the device asks for a kick past what it consumed
    avail_event(g)[0] = 4
    kicks = []
    for _ in range(4):
        g.send(b"x")
        kicks.append(g.queue.should_kick())
    assert kicks == [False, False, True, False]


def test_2_7_10_with_event_idx_the_no_notify_flag_is_ignored():
    g = GuestDriver(size=16, event_idx=True)
    g.memory.view(g.addresses.device, 2).view(np.uint16)[0] = USED_F_NO_NOTIFY
    g.send(b"x")
    assert g.queue.should_kick() is True


def test_2_7_10_disabled_kicks_with_event_idx_stop_moving_avail_event():
    g = GuestDriver(size=16, event_idx=True)
    dev = g.device()
    burst = dev.new_burst()
    g.send(b"x")
    dev.pop(burst)
    assert int(avail_event(g)[0]) == 1
    dev.disable_kicks()
    for _ in range(3):
        g.send(b"x")
        g.queue.should_kick()
        dev.pop(burst)
    assert int(avail_event(g)[0]) == 1
    g.send(b"x")
    assert g.queue.should_kick() is False
    assert dev.enable_kicks() == 1  # one chain added while kicks were off
    assert int(avail_event(g)[0]) == 4


# --- §2.7.13 16-bit indices wrap ---------------------------------------------------------------


def test_2_7_13_indices_wrap_modulo_2_16_with_event_idx():
    size = 256
    with GuestMemory([(0, 2 * MIB)]) as memory:
        driver, dev = queue_pair(memory, size, event_idx=True)
        pool = MIB
        chains = np.zeros(size, dtype=DRIVER_CHAIN_DTYPE)
        chains["first_seg"] = np.arange(size)
        chains["nseg"] = 1
        segs = np.zeros(size, dtype=SEGMENT_DTYPE)
        segs["addr"] = pool + 64 * np.arange(size)
        segs["len"] = 64
        segs["flags"] = SEG_WRITE
        burst = dev.new_burst(size)
        used = np.zeros(size, dtype=USED_ELEM_DTYPE)
        rounds = (1 << 16) // size + 3
        for r in range(rounds):
            assert driver.add_burst(chains, size, segs) == size
            assert driver.should_kick() is True
            assert dev.pop(burst) == size
            assert not burst.chains["error"].any()
            burst.chains["written"][:size] = r % 64 + 1
            assert dev.push(burst) == size
            assert dev.should_notify() is True
            assert driver.collect_burst(used) == size
            assert sorted(used["id"]) == list(range(size))
            assert (used["len"] == r % 64 + 1).all()
        assert dev.last_avail_idx == dev.used_idx == (rounds * size) & 0xFFFF
        assert driver.avail_idx == (rounds * size) & 0xFFFF
        assert dev.errors == {} and driver.errors == {}


# --- Ring layout, queue sizes, placement --------------------------------------------------------


def test_2_7_ring_layout_follows_the_alignment_table():
    # §2.7: descriptor table 16-aligned 16*size, avail ring 2-aligned 6+2*size,
    # used ring 4-aligned 6+8*size (with the EVENT_IDX fields).
    assert ring_layout(256, 0, packed=False) == RingAddresses(0, 4096, 4616)
    assert ring_bytes(256, packed=False) == 4616 + 6 + 8 * 256
    assert ring_layout(1, 0x1000, packed=False) == RingAddresses(0x1000, 0x1010, 0x1018)


def test_2_7_used_ring_fields_are_where_the_spec_puts_them():
    g = GuestDriver(size=8, event_idx=True)
    dev = g.device()
    burst = dev.new_burst()
    bid = g.send(b"abc", writable=1)
    dev.pop(burst)
    burst.write(0, b"ok")
    dev.push(burst)
    raw = g.memory.read(g.addresses.device, 6 + 8 * 8)
    assert raw[:4] == (0).to_bytes(2, "little") + (1).to_bytes(2, "little")
    assert raw[4:12] == bid.to_bytes(4, "little") + (2).to_bytes(4, "little")
    assert raw[4 + 64 :] == (1).to_bytes(2, "little")  # avail_event after the last element


@pytest.fixture(scope="module")
def big_memory():
    with GuestMemory([(0, 2 * MIB)]) as memory:
        yield memory


@pytest.mark.parametrize("size", [1 << k for k in range(16)])
def test_2_7_queue_size_may_be_any_power_of_two_up_to_32768(big_memory, size):
    addresses = ring_layout(size, 0x1000, packed=False)
    driver = SplitDriverQueue(big_memory, size, addresses)
    dev = SplitDeviceQueue(big_memory, size, addresses)
    assert driver.size == dev.size == size == driver.num_free


@pytest.mark.parametrize("size", [0, 3, 6, 100, 32767, 32769, 65536, -1])
def test_2_7_queue_size_that_is_not_a_power_of_two_up_to_32768_is_refused(big_memory, size):
    addresses = ring_layout(16, 0x1000, packed=False)
    with pytest.raises(ValueError):
        ring_layout(size, 0x1000, packed=False)
    with pytest.raises(ValueError):
        SplitDeviceQueue(big_memory, size, addresses)
    with pytest.raises(ValueError):
        SplitDriverQueue(big_memory, size, addresses)


@pytest.mark.parametrize(
    "area, offset", [("desc", 8), ("desc", 2), ("driver", 1), ("device", 2), ("device", 1)]
)
def test_2_7_misaligned_ring_area_is_refused(big_memory, area, offset):
    good = ring_layout(16, 0x1000, packed=False)
    fields = {"desc": good.desc, "driver": good.driver, "device": good.device}
    fields[area] += offset
    bad = RingAddresses(**fields)
    with pytest.raises(GuestMemoryError):
        SplitDeviceQueue(big_memory, 16, bad)
    with pytest.raises(GuestMemoryError):
        SplitDriverQueue(big_memory, 16, bad)


@pytest.mark.parametrize(
    "area, gpa",
    [
        ("desc", 3 * MIB),  # in the hole
        ("desc", MIB - 128),  # runs off region 0 into the hole
        ("driver", 4 * MIB - 16),  # starts in the hole, ends in region 1
        ("device", 5 * MIB - 64),  # runs off the end of memory
        ("device", (1 << 64) - 256),  # past 2**64 - 1
        ("driver", (1 << 64) - 2),
    ],
)
def test_2_7_ring_area_outside_guest_memory_is_refused(area, gpa):
    with GuestMemory([(0, MIB), (4 * MIB, MIB)]) as memory:
        good = ring_layout(16, 0x1000, packed=False)
        fields = {"desc": good.desc, "driver": good.driver, "device": good.device}
        fields[area] = gpa
        bad = RingAddresses(**fields)
        with pytest.raises(GuestMemoryError):
            SplitDeviceQueue(memory, 16, bad)
        with pytest.raises(GuestMemoryError):
            SplitDriverQueue(memory, 16, bad)


# --- The guest-driver mock ----------------------------------------------------------------------


def test_guest_driver_never_reuses_the_indirect_table_of_a_buffer_in_flight():
    # A buffer's indirect table belongs to it until the device returns it (§2.7.5.3): offering
    # another buffer must not overwrite it.
    g = GuestDriver(size=8, indirect=True)
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


def test_guest_driver_collect_returns_what_the_device_wrote_not_the_request():
    # GuestDriver.collect promises "bytes the device wrote into the writable pieces".
    g = GuestDriver(size=8)
    dev = g.device()
    burst = dev.new_burst()
    buffer_id = g.send(b"request", writable=1)
    dev.pop(burst)
    burst.write(0, b"reply")
    dev.push(burst)
    assert g.collect() == [(buffer_id, b"reply")]
