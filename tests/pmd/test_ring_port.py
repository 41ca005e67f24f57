"""The ring port: frames through a shared-memory ring, in one process and between two, with a
pure-Python model of what the ring must do, and files that are not rings refused.

The ring file's layout (fastpath/_core/ring.pxd, format version 1) is restated here where a test
writes a header itself: the magic "fastring", then version, slots, slot size and slot stride
(u32 each) from byte 8; the producer index at byte 64, the consumer index at byte 128.

The file is also the producer's entry point in the two-process test: `python this_file.py NAME
COUNT` attaches to ring NAME and sends COUNT numbered frames.
"""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
import time
import uuid
from collections import deque

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule
from port_helpers import send_once

from fastpath.pmd import MbufPool, open_port
from fastpath.pmd._ring import RingPort, ring_path

MAGIC = b"fastring"
PRODUCER_AT, CONSUMER_AT = 64, 128
HEADER = 192


def new_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def name():
    ring = new_name()
    yield ring
    RingPort.remove(ring)


def receive(port, pool, max_n=32) -> list[bytes]:
    """One rx_burst of up to max_n frames, their bytes; the mbufs go back."""
    mbufs = pool.burst(max_n)
    n = port.rx_burst(0, mbufs, max_n)
    frames = [pool.frame(m) for m in mbufs[:n]]
    pool.release(mbufs, n)
    return frames


def header(slots=8, slot_size=64, stride=128, version=1, producer=0, consumer=0,
           magic=MAGIC) -> bytes:
    head = magic + struct.pack("<4I", version, slots, slot_size, stride)
    head = head.ljust(PRODUCER_AT, b"\0") + struct.pack("<I", producer)
    head = head.ljust(CONSUMER_AT, b"\0") + struct.pack("<I", consumer)
    return head.ljust(HEADER, b"\0")


def test_frames_loop_back_byte_for_byte(name):
    pool = MbufPool(256)
    frames = [bytes((k * 7 + i) % 256 for i in range(length))
              for k, length in enumerate([60, 64, 65, 127, 1500, 1514, 2000, 2048, 1])]
    with RingPort(name, pool, slots=16) as port:
        assert port.created and (port.slots, port.slot_size) == (16, 2048)
        assert send_once(port, pool, frames) == len(frames)
        assert port.pending == len(frames)
        assert receive(port, pool) == frames
        assert receive(port, pool) == []
        counters = port.counters()
        assert counters.tx_frames == counters.rx_frames == len(frames)
        assert counters.rx_bytes == counters.tx_bytes == sum(map(len, frames))
        assert counters.errors == 0
    assert pool.in_use == 0


def test_one_port_sends_and_another_receives_in_its_geometry(name):
    pool = MbufPool(256)
    with RingPort(name, pool, slots=32, slot_size=512, create=True) as sender, \
            RingPort(name, pool, slots=1024, create=False) as receiver:
        assert sender.created and not receiver.created
        assert (receiver.slots, receiver.slot_size) == (32, 512)
        frames = [bytes([k]) * (60 + k) for k in range(100)]
        got = []
        for first in range(0, 100, 20):
            assert send_once(sender, pool, frames[first:first + 20]) == 20
            got += receive(receiver, pool)
        assert got == frames
        assert receive(sender, pool) == []
    assert pool.in_use == 0


def test_open_port_names_a_ring(name):
    pool = MbufPool(64)
    with open_port(f"ring:{name},slots=64,slot_size=256", pool) as port:
        assert isinstance(port, RingPort)
        assert (port.slots, port.slot_size) == (64, 256)


def test_a_full_ring_takes_fewer_and_then_more_as_it_drains(name):
    pool = MbufPool(256)
    frames = [bytes([k]) * 64 for k in range(20)]
    with RingPort(name, pool, slots=8) as port:
        assert send_once(port, pool, frames) == 8
        assert send_once(port, pool, frames[8:]) == 0
        assert receive(port, pool, 3) == frames[:3]
        assert send_once(port, pool, frames[8:]) == 3
        assert receive(port, pool) == frames[:8][3:] + frames[8:11]
        assert port.counters().errors == 0
    assert pool.in_use == 0


def test_indices_wrap_at_two_to_the_32(name):
    pool = MbufPool(256)
    with RingPort(name, pool, slots=8) as port:
        start = struct.pack("<I", 2**32 - 5)
        with open(ring_path(name), "r+b") as file:
            os.pwrite(file.fileno(), start, PRODUCER_AT)
            os.pwrite(file.fileno(), start, CONSUMER_AT)
        frames = [bytes([k]) * (60 + k) for k in range(40)]
        got = []
        for first in range(0, 40, 5):
            assert send_once(port, pool, frames[first:first + 5]) == 5
            got += receive(port, pool)
        assert got == frames
    assert pool.in_use == 0


def test_a_frame_longer_than_a_slot_is_dropped_and_counted(name):
    pool = MbufPool(64)
    with RingPort(name, pool, slots=8, slot_size=128) as port:
        frames = [b"a" * 100, b"b" * 129, b"c" * 128]
        assert send_once(port, pool, frames) == 3
        assert port.too_long == 1 and port.counters().errors == 1
        assert receive(port, pool) == [frames[0], frames[2]]
    assert pool.in_use == 0


def test_a_frame_too_long_for_the_receivers_mbufs_is_dropped_and_counted(name):
    big, small = MbufPool(64, room=2048), MbufPool(64, room=128)
    with RingPort(name, big) as sender, RingPort(name, small) as receiver:
        frames = [b"a" * 100, b"b" * 200, b"c" * 128]
        assert send_once(sender, big, frames) == 3
        assert receive(receiver, small) == [frames[0], frames[2]]
        assert receiver.rx_dropped == 1 and receiver.counters().errors == 1
        assert receiver.counters().rx_frames == 2
    assert big.in_use == small.in_use == 0


def test_the_last_port_to_close_removes_the_file(name):
    pool = MbufPool(64)
    first = RingPort(name, pool)
    second = RingPort(name, pool)
    first.close()
    assert os.path.exists(ring_path(name))
    assert send_once(second, pool, [b"x" * 60]) == 1
    second.close()
    second.close()
    assert not os.path.exists(ring_path(name))


def test_a_ring_left_behind_is_formatted_afresh(name):
    with open(ring_path(name), "wb") as file:
        file.write(header(slots=8, slot_size=64, producer=5, consumer=2))
        file.write(bytes(8 * 128))
    pool = MbufPool(64)
    with RingPort(name, pool, slots=16, slot_size=256) as port:
        assert port.created and (port.slots, port.slot_size) == (16, 256)
        assert port.pending == 0 and receive(port, pool) == []


def test_remove_deletes_a_file_left_behind(name):
    with open(ring_path(name), "wb") as file:
        file.write(header())
    assert RingPort.remove(name)
    assert not RingPort.remove(name)


def test_create_true_refuses_a_ring_in_use_and_create_false_a_missing_one(name):
    pool = MbufPool(64)
    with pytest.raises(FileNotFoundError):
        RingPort(name, pool, create=False)
    with RingPort(name, pool):
        with pytest.raises(FileExistsError, match="another port has this ring open"):
            RingPort(name, pool, create=True)


@pytest.mark.parametrize("bad", ["", "a/b", "..", ".", "x y", "ring:x", "é", "x" * 201])
def test_bad_names_are_refused(bad):
    with pytest.raises(ValueError, match="a ring name is"):
        RingPort(bad, MbufPool(64))


@pytest.mark.parametrize("slots, slot_size", [(3, 2048), (0, 2048), (2**25, 64), (8, 63),
                                              (8, 65537)])
def test_impossible_geometries_are_refused(name, slots, slot_size):
    with pytest.raises(ValueError, match="a ring has a power of two slots|a ring slot holds"):
        RingPort(name, MbufPool(64), slots=slots, slot_size=slot_size)
    assert not os.path.exists(ring_path(name))


def test_a_foreign_file_is_refused_and_left_alone(name):
    content = b"not a ring at all, " * 100
    with open(ring_path(name), "wb") as file:
        file.write(content)
    for create in (None, False, True):
        with pytest.raises(ValueError, match="not a fastpath ring"):
            RingPort(name, MbufPool(64), create=create)
    with open(ring_path(name), "rb") as file:
        assert file.read() == content


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (MAGIC + b"\1\0", "cannot hold a ring header"),
    (header(version=2), "format version 2"),
    (header(slots=3) + bytes(3 * 128), "power of two slots"),
    (header(slots=2**25), "power of two slots"),
    (header(slot_size=16, stride=64), "a ring slot holds"),
    (header(stride=64) + bytes(8 * 128), "not 64"),
    (header(slots=8) + bytes(7 * 128), "needs 1216 bytes, and only 1088"),
    (header(producer=100, consumer=50) + bytes(8 * 128), "inconsistent ring indices"),
], ids=["empty", "short", "version", "slots", "huge", "slot-size", "stride", "truncated",
        "indices"])
def test_an_impossible_header_is_refused_and_left_alone(name, content, message):
    with open(ring_path(name), "wb") as file:
        file.write(content)
    with pytest.raises(ValueError, match=message):
        RingPort(name, MbufPool(64), create=False)
    with open(ring_path(name), "rb") as file:
        assert file.read() == content


def test_a_header_corrupted_under_an_open_port_is_refused_to_the_next(name):
    pool = MbufPool(64)
    with RingPort(name, pool, slots=8) as port:
        with open(ring_path(name), "r+b") as file:
            os.pwrite(file.fileno(), struct.pack("<I", 6), 12)
        with pytest.raises(ValueError, match="power of two slots, 1 to .*, not 6"):
            RingPort(name, pool)
        # The open port kept its own geometry.
        assert send_once(port, pool, [b"y" * 64] * 8) == 8
        assert receive(port, pool) == [b"y" * 64] * 8


def test_a_ring_whose_peer_wrote_an_impossible_index_is_given_up(name, caplog):
    pool = MbufPool(64)
    with RingPort(name, pool, slots=8) as port:
        with open(ring_path(name), "r+b") as file:
            os.pwrite(file.fileno(), struct.pack("<I", 1000), PRODUCER_AT)
        with caplog.at_level(logging.ERROR, logger="fastpath.pmd"):
            assert receive(port, pool) == []
            assert send_once(port, pool, [b"z" * 64]) == 0
            assert receive(port, pool) == []
        assert port.counters().errors == 2
        assert "indices are inconsistent" in caplog.text
    assert pool.in_use == 0


# -- a model: a bounded FIFO of frames; frames longer than a slot are taken and vanish --------

SLOTS, SLOT_SIZE = 8, 128


class RingMachine(RuleBasedStateMachine):
    """Random bursts in and out of a loopback ring, against a deque."""

    @initialize(first_index=st.sampled_from([0, 2**32 - 3]))
    def start(self, first_index):
        self.name = new_name()
        self.pool = MbufPool(64, room=256)
        self.port = RingPort(self.name, self.pool, slots=SLOTS, slot_size=SLOT_SIZE)
        index = struct.pack("<I", first_index)
        with open(ring_path(self.name), "r+b") as file:
            os.pwrite(file.fileno(), index, PRODUCER_AT)
            os.pwrite(file.fileno(), index, CONSUMER_AT)
        self.model: deque[bytes] = deque()
        self.too_long = 0
        self.serial = 0

    @rule(lengths=st.lists(st.integers(1, 256), max_size=20))
    def send_once(self, lengths):
        frames = []
        for length in lengths:
            self.serial += 1
            frames.append(self.serial.to_bytes(4, "little")[:length].ljust(length, b"."))
        expected = 0
        for frame in frames:
            if len(frame) > SLOT_SIZE:
                self.too_long += 1
            elif len(self.model) == SLOTS:
                break
            else:
                self.model.append(frame)
            expected += 1
        assert send_once(self.port, self.pool, frames) == expected

    @rule(max_n=st.integers(0, 12))
    def receive(self, max_n):
        expected = [self.model.popleft() for _ in range(min(max_n, len(self.model)))]
        assert receive(self.port, self.pool, max_n) == expected

    @rule()
    def check_counts(self):
        assert self.port.pending == len(self.model)
        assert self.port.too_long == self.too_long == self.port.counters().errors
        assert self.pool.in_use == 0

    def teardown(self):
        if hasattr(self, "port"):
            self.port.close()
            assert not os.path.exists(ring_path(self.name))


RingMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
test_ring_against_a_deque = RingMachine.TestCase


# -- two processes -------------------------------------------------------------------------

COUNT = 100_000
BURST = 32
TIMEOUT = 60.0


def frame_length(seq: int) -> int:
    return 60 + seq % 200


def produce(name: str, count: int) -> None:
    """Send frames 0..count-1 on ring `name`: each its number (u64), then its low byte repeated,
    frame_length(seq) bytes in all. Retries what a full ring refuses."""
    pool = MbufPool(4 * BURST)
    mbufs = pool.burst(BURST)
    deadline = time.monotonic() + TIMEOUT
    with RingPort(name, pool, create=False) as port:
        for first in range(0, count, BURST):
            n = min(BURST, count - first)
            assert pool.alloc(mbufs, n) == n
            for k in range(n):
                seq = first + k
                length = frame_length(seq)
                row = pool.data[mbufs[k]]
                row[:8] = np.frombuffer(seq.to_bytes(8, "little"), dtype=np.uint8)
                row[8:length] = seq & 0xFF
                pool.length[mbufs[k]] = length
            sent = 0
            while sent < n:
                assert time.monotonic() < deadline, "the consumer stopped taking frames"
                sent += port.tx_burst(0, mbufs[sent:], n - sent)
        assert port.counters().tx_frames == count


def test_two_processes_pass_frames_in_order_without_loss(name):
    pool = MbufPool(4 * BURST)
    mbufs = pool.burst(BURST)
    with RingPort(name, pool, slots=256, create=True) as port:
        child = subprocess.Popen([sys.executable, __file__, name, str(COUNT)])
        try:
            expected = 0
            deadline = time.monotonic() + TIMEOUT
            while expected < COUNT:
                assert time.monotonic() < deadline, f"only {expected} frames arrived"
                assert child.poll() in (None, 0), "the producer failed"
                n = port.rx_burst(0, mbufs, BURST)
                for m in mbufs[:n]:
                    length = int(pool.length[m])
                    row = pool.data[m]
                    seq = int.from_bytes(row[:8].tobytes(), "little")
                    assert seq == expected, f"frame {seq} arrived when {expected} was due"
                    assert length == frame_length(seq)
                    assert (row[8:length] == seq & 0xFF).all(), f"frame {seq} is damaged"
                    expected += 1
                pool.release(mbufs, n)
            assert child.wait(TIMEOUT) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert receive(port, pool) == []
        counters = port.counters()
        assert counters.rx_frames == COUNT and counters.errors == 0
        assert counters.rx_bytes == sum(frame_length(s) for s in range(COUNT))
    assert not os.path.exists(ring_path(name))
    assert pool.in_use == 0


if __name__ == "__main__":
    produce(sys.argv[1], int(sys.argv[2]))
