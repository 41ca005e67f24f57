"""virtio-net queues (virtio 1.2 §5.1.6) against the plain-Python oracle: frames out of a
transmitq, frames into a receiveq with and without mergeable buffers, on both ring types."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpath.devices.net._queue import HeldFrames, NetQueue
from fastpath.errors import QueueBroken
from fastpath.testing import GuestDriver
from fastpath.testing.reference.net import (
    NET_HDR_SIZE,
    header,
    placed_frames,
    received_frames,
)

STRIDE = 2048
RING_TYPES = pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])


def frame(n: int, seed: int = 0) -> bytes:
    return bytes((seed + i * 7) & 0xFF for i in range(n))


class ReceiveGuest:
    """A driver that posts receive buffers of chosen sizes and reads back what was used."""

    def __init__(self, packed: bool, size: int = 256):
        self.driver = GuestDriver(packed=packed, size=size, buffer_size=8192, buffers=size)
        self.address: dict[int, int] = {}
        self.next_slot = 0

    def post(self, sizes):
        for size in sizes:
            address = self.driver.buffer_address(self.next_slot % self.driver.size)
            self.next_slot += 1
            self.address[self.driver.queue.add(writable=[(address, size)])] = address

    def used(self) -> list[bytes]:
        return [self.driver.memory.read(self.address.pop(i), n)
                for i, n in self.driver.queue.collect()]


def frames_array(frames, stride=STRIDE):
    rows = np.zeros((max(len(frames), 1), stride), dtype=np.uint8)
    lengths = np.zeros(max(len(frames), 1), dtype=np.uint32)
    for k, f in enumerate(frames):
        rows[k, : len(f)] = np.frombuffer(f, dtype=np.uint8) if f else 0
        lengths[k] = len(f)
    return rows, lengths


# --- transmitq: the device receives ---

@RING_TYPES
@pytest.mark.parametrize("pieces", [1, 2, 3], ids=["together", "apart", "three"])
def test_transmitted_packet_reaches_the_device_without_its_header(packed, pieces):
    # §5.1.6.2: the header and the packet may share a descriptor or not.
    guest = GuestDriver(packed=packed)
    sent = [header(0) + frame(n, n) for n in (60, 1514, 13, 0)]
    for data in sent:
        guest.send(data, pieces=min(pieces, max(1, len(data) // NET_HDR_SIZE)))
    q = NetQueue(guest.device())
    rows, lengths = np.zeros((8, STRIDE), np.uint8), np.zeros(8, np.uint32)
    n = q.receive(rows, lengths)
    assert n == 4
    assert [rows[k, : lengths[k]].tobytes() for k in range(n)] == received_frames(sent, STRIDE)
    assert len(guest.collect()) == 4  # every chain goes back, written 0
    assert q.counters["frames"] == 4 and q.counters["bytes"] == 60 + 1514 + 13


@RING_TYPES
def test_chain_without_header_or_too_long_is_dropped_and_the_queue_goes_on(packed):
    guest = GuestDriver(packed=packed, buffer_size=4096)
    sent = [b"short", header(0) + frame(STRIDE + 1), header(0) + frame(64)]
    for data in sent:
        guest.send(data)
    q = NetQueue(guest.device())
    rows, lengths = np.zeros((8, STRIDE), np.uint8), np.zeros(8, np.uint32)
    assert q.receive(rows, lengths) == 1
    assert rows[0, :64].tobytes() == frame(64)
    assert q.counters["dropped"] == 2
    assert len(guest.collect()) == 3


@RING_TYPES
def test_chain_outside_memory_is_dropped(packed):
    guest = GuestDriver(packed=packed)
    guest.queue.add(readable=[(guest.memory.size + 4096, 100)])
    guest.send(header(0) + frame(70))
    q = NetQueue(guest.device())
    rows, lengths = np.zeros((8, STRIDE), np.uint8), np.zeros(8, np.uint32)
    assert q.receive(rows, lengths) == 1 and lengths[0] == 70
    assert q.counters["dropped"] == 1
    assert len(guest.queue.collect()) == 2


def test_receive_takes_no_more_than_the_arrays_hold():
    guest = GuestDriver()
    for k in range(10):
        guest.send(header(0) + frame(64, k))
    q = NetQueue(guest.device(), max_burst=4)
    rows, lengths = np.zeros((3, STRIDE), np.uint8), np.zeros(3, np.uint32)
    assert [q.receive(rows, lengths) for _ in range(5)] == [3, 3, 3, 1, 0]


# --- receiveq: the device transmits ---

@RING_TYPES
@pytest.mark.parametrize("mergeable", [False, True], ids=["plain", "mergeable"])
def test_frames_land_behind_a_header_in_posted_buffers(packed, mergeable):
    guest = ReceiveGuest(packed)
    guest.post([2048] * 4)
    frames = [frame(60, 1), frame(1514, 2), frame(0), frame(1000, 3)]
    q = NetQueue(guest.driver.device(), mergeable=mergeable)
    assert q.transmit(*frames_array(frames), 4) == 4
    assert guest.used() == [header(1) + f for f in frames]


@RING_TYPES
def test_mergeable_frame_spans_buffers_and_counts_them(packed):
    # §5.1.6.4: num_buffers says how many buffers the packet took.
    guest = ReceiveGuest(packed)
    guest.post([512] * 8)
    q = NetQueue(guest.driver.device(), mergeable=True)
    frames = [frame(1514, 5), frame(100, 6)]
    assert q.transmit(*frames_array(frames), 2) == 2
    used = guest.used()
    assert len(used) == 4 and used[0][:NET_HDR_SIZE] == header(3)
    assert b"".join(used[:3])[NET_HDR_SIZE:] == frames[0]
    assert used[3] == header(1) + frames[1]


@RING_TYPES
def test_without_mergeable_a_frame_too_big_for_its_buffer_is_dropped_not_the_buffer(packed):
    guest = ReceiveGuest(packed)
    guest.post([256, 256])
    q = NetQueue(guest.driver.device())
    frames = [frame(1000), frame(200), frame(100)]
    assert q.transmit(*frames_array(frames), 3) == 3
    assert guest.used() == [header(1) + frame(200), header(1) + frame(100)]
    assert q.counters["dropped"] == 1


@RING_TYPES
@pytest.mark.parametrize("mergeable", [False, True], ids=["plain", "mergeable"])
def test_too_few_buffers_leave_the_rest_for_later(packed, mergeable):
    guest = ReceiveGuest(packed)
    guest.post([1024, 1024])
    q = NetQueue(guest.driver.device(), mergeable=mergeable)
    frames = [frame(1000, k) for k in range(3)] if not mergeable else [frame(3000), frame(10)]
    rows, lengths = frames_array(frames, 4096)
    taken = q.transmit(rows, lengths, len(frames))
    assert taken == (2 if not mergeable else 0)
    # The buffers that were popped but not used went back to the ring: nothing is lost.
    guest.post([4096, 4096])
    rest = q.transmit(rows[taken:].copy(), lengths[taken:].copy(), len(frames) - taken)
    assert rest == len(frames) - taken
    used = guest.used()
    if mergeable:
        assert [len(u) for u in used] == [1024, 1024, 964, 22]
        assert b"".join(used[:3])[NET_HDR_SIZE:] == frame(3000)
    else:
        assert used == [header(1) + f for f in frames]


@RING_TYPES
def test_malformed_receive_buffer_goes_back_empty_and_the_frame_takes_the_next(packed):
    guest = ReceiveGuest(packed)
    guest.driver.queue.add(writable=[(guest.driver.memory.size + 4096, 2048)])
    guest.post([2048])
    q = NetQueue(guest.driver.device(), mergeable=True)
    assert q.transmit(*frames_array([frame(64)]), 1) == 1
    lengths = [n for _, n in guest.driver.queue.collect()]
    assert lengths == [0, 76]


@RING_TYPES
def test_broken_ring_raises(packed):
    guest = GuestDriver(packed=packed)
    q = NetQueue(guest.device())
    if packed:
        # A chain that never ends: every slot available, each with NEXT.
        guest.desc["flags"] = 1 | 1 << 7
        guest.desc["len"] = 16
        guest.desc["addr"] = guest.buffer_address(0)
    else:
        guest.avail_ring()[1] = guest.size + 1
    rows, lengths = np.zeros((8, STRIDE), np.uint8), np.zeros(8, np.uint32)
    with pytest.raises(Exception) as raised:
        q.receive(rows, lengths)
    with pytest.raises(QueueBroken):
        q.receive(rows, lengths)
    assert raised.type.__module__ == "fastpath.errors"


@RING_TYPES
def test_call_is_written_when_the_driver_wants_one(packed):
    guest = ReceiveGuest(packed)
    call = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        q = NetQueue(guest.driver.device(), call_fd=call)
        guest.post([2048])
        q.transmit(*frames_array([frame(64)]), 1)
        assert os.eventfd_read(call) == 1 and q.counters["calls"] == 1
    finally:
        os.close(call)


# --- against the oracle ---

@settings(max_examples=150, deadline=None)
@given(packed=st.booleans(), mergeable=st.booleans(),
       buffers=st.lists(st.sampled_from([0, 8, 12, 13, 64, 100, 600, 1600, 2048]), max_size=40),
       lengths=st.lists(st.integers(0, STRIDE + 1), max_size=30))
def test_transmit_matches_the_reference(packed, mergeable, buffers, lengths):
    guest = ReceiveGuest(packed, size=64)
    # Empty buffers are not offered (a driver cannot post a zero-length descriptor chain here).
    sizes = [max(b, 1) for b in buffers]
    guest.post(sizes)
    frames = [frame(n, n) for n in lengths]
    q = NetQueue(guest.driver.device(), mergeable=mergeable)
    rows = np.zeros((max(len(frames), 1), STRIDE + 2), dtype=np.uint8)
    lens = np.zeros(max(len(frames), 1), dtype=np.uint32)
    for k, f in enumerate(frames):
        rows[k, : len(f)] = np.frombuffer(f, np.uint8)
        lens[k] = len(f)
    stride_rows = rows[:, :STRIDE].copy()
    taken = q.transmit(stride_rows, lens, len(frames))
    expected_taken, expected_used = placed_frames(
        [f[:STRIDE] if len(f) <= STRIDE else f for f in frames], sizes, mergeable=mergeable,
        stride=STRIDE)
    assert taken == expected_taken
    assert guest.used() == expected_used


# --- frames held from a transmitq that stopped being served ---

def taken(held: HeldFrames, n: int, stride: int = STRIDE) -> list[bytes]:
    rows, lengths = np.zeros((n, stride), np.uint8), np.zeros(n, np.uint32)
    got = held.take(rows, lengths)
    return [rows[k, : lengths[k]].tobytes() for k in range(got)]


@RING_TYPES
def test_held_frames_come_out_in_order_across_drains_and_partial_takes(packed):
    guest = GuestDriver(packed=packed, size=64, buffers=64)
    held = HeldFrames()
    sent = [frame(60 + k, k) for k in range(100)]
    for f in sent[:50]:
        guest.send(header(0) + f)
    q = NetQueue(guest.device(), max_burst=8)
    assert held.drain(q) == 50 and held.pending == 50
    assert taken(held, 20) == sent[:20]
    assert len(guest.collect()) == 50   # drained chains went back to the driver
    for f in sent[50:]:
        guest.send(header(0) + f)
    assert held.drain(q) == 50          # grows, keeping the 30 not yet taken first
    assert taken(held, 200) == sent[20:]
    assert held.pending == 0 and taken(held, 8) == []
    assert q.counters["frames"] == 100


def test_a_held_frame_longer_than_the_row_it_would_go_into_is_dropped_and_counted():
    guest = GuestDriver(size=16, buffer_size=4096, buffers=16)
    held = HeldFrames()
    sent = [frame(60), frame(1500, 1), frame(70, 2)]
    for f in sent:
        guest.send(header(0) + f)
    assert held.drain(NetQueue(guest.device())) == 3
    assert taken(held, 8, stride=1024) == [sent[0], sent[2]]
    assert held.dropped == 1 and held.pending == 0

