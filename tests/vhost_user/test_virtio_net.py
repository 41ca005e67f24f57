"""The virtio-net device behind the engine, served by the forwarding loop: frames a driver
transmits come back on its receiveq (io, macswap) or are counted and freed (drop), on both
ring types, with and without mergeable buffers; rings the front-end stops are let go."""

import os
import time
from contextlib import contextmanager

import numpy as np
import pytest
from scripted_frontend import F, ScriptedFrontend

from fastpath.devices.net._control import VIRTIO_NET_ERR, VIRTIO_NET_OK
from fastpath.devices.net._device import (
    VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MRG_RXBUF,
    VirtioNet,
)
from fastpath.hv import GuestMemory
from fastpath.pmd import profile_frames
from fastpath.pmd._forwarder import Forwarder
from fastpath.testing.reference.net import NET_HDR_SIZE, header
from fastpath.vhost_user._backend import VHOST_F_LOG_ALL
from fastpath.vhost_user._gate import Gate
from fastpath.vhost_user.wire import U64, LogArea, ProtocolFeature, VringState
from fastpath.vring import PackedDriverQueue, SplitDriverQueue, ring_layout

RX_BUFFERS = 0x200000
TX_BUFFERS = 0x300000
PAGE = 4096
LOG_BYTES = PAGE  # one bit per page: room for 128 MiB, more than the guest has


def frame(n, seed):
    dst, src = bytes([2, 0, 0, 0, 0, seed]), bytes([4, 0, 0, 0, 0, seed])
    return dst + src + bytes((seed + i) & 0xFF for i in range(n - 12))


class Guest:
    """A scripted front-end with a driver on each ring of queue pair 0; with `log`, logging
    dirty pages into a log of its own as a migrating front-end does."""

    def __init__(self, forwarder, packed, mergeable, log=False, log_all=None):
        self.device = VirtioNet(forwarder.gate)
        forwarder.attach(self.device)
        self.fe = ScriptedFrontend(self.device.backend)
        log_all = log if log_all is None else log_all
        features = (1 << VIRTIO_NET_F_MRG_RXBUF if mergeable else 0) | (
            1 << VHOST_F_LOG_ALL if log_all else 0)
        self.fe.handshake(packed, features)
        if log:
            self.log = GuestMemory([(0, LOG_BYTES)])
            self.fe.send(F.SET_PROTOCOL_FEATURES, U64(ProtocolFeature.LOG_SHMFD
                                                      | ProtocolFeature.REPLY_ACK))
            self.fe.send(F.SET_LOG_BASE, LogArea(LOG_BYTES, 0),
                         fds=[os.dup(self.log.regions[0].fd)])
            assert self.fe.reply() == U64(0)
        driver = PackedDriverQueue if packed else SplitDriverQueue
        base = 0x8000 if packed else 0
        # As a real driver does, the rings are laid out before the device is told of them.
        self.rx, self.tx = (driver(self.fe.memory, 256, ring_layout(256, 0x1000 + i * 0x10000,
                                                                   packed)) for i in (0, 1))
        for index in (0, 1):
            self.fe.start_vring(index, 256, packed, base, log)
        self.memory = self.fe.memory

    def post_receive_buffers(self, n, size=2048):
        for k in range(n):
            self.rx.add(writable=[(RX_BUFFERS + k * size, size)])

    def send(self, frames):
        for k, f in enumerate(frames):
            data = header(0) + f
            self.memory.write(TX_BUFFERS + k * 2048, data)
            self.tx.add(readable=[(TX_BUFFERS + k * 2048, len(data))])

    def received(self, expected, timeout=5.0, size=2048):
        got, deadline = [], time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            for buffer_id, n in self.rx.collect():
                got.append(self.memory.read(RX_BUFFERS + buffer_id * size, n))
            time.sleep(0.001)
        return got


@contextmanager
def serving(mode, idle_rounds=100, sleep_ms=5):
    """A forwarding loop running in its thread, stopped at the end."""
    fwd = Forwarder(Gate(), mode, idle_rounds=idle_rounds, sleep_ms=sleep_ms)
    fwd.start()
    try:
        yield fwd
    finally:
        fwd.stop()


@pytest.fixture(params=["io", "macswap", "drop"])
def forwarder(request):
    with serving(request.param) as fwd:
        yield fwd


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
@pytest.mark.parametrize("mergeable", [False, True], ids=["plain", "mergeable"])
def test_frames_go_round_through_the_forwarding_loop(forwarder, packed, mergeable):
    guest = Guest(forwarder, packed, mergeable)
    guest.post_receive_buffers(64)
    frames = [frame(60 + 20 * k, k) for k in range(40)]
    guest.send(frames)
    if forwarder.mode == "drop":
        deadline = time.monotonic() + 5
        while guest.device.counters()[0].rx_frames < 40 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert guest.received(0, timeout=0.05) == []
    else:
        got = guest.received(40)
        expected = [f if forwarder.mode == "io" else f[6:12] + f[:6] + f[12:] for f in frames]
        assert [g[NET_HDR_SIZE:] for g in got] == expected
        assert all(g[:NET_HDR_SIZE] == header(1) for g in got)
    counters = guest.device.counters()[0]
    assert counters.rx_frames == 40 and counters.rx_bytes == sum(map(len, frames))
    assert counters.tx_frames == (0 if forwarder.mode == "drop" else 40)
    guest.fe.backend.close()
    assert guest.device not in forwarder.devices  # let go once the connection closed


@pytest.mark.parametrize("mode", ["io", "macswap"])
def test_frames_without_receive_buffers_are_dropped_and_counted(mode):
    with serving(mode) as forwarder:
        guest = Guest(forwarder, False, False)
        guest.send([frame(64, k) for k in range(10)])
        deadline = time.monotonic() + 5
        while guest.device.counters()[0].rx_frames < 10 and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.05)
        assert forwarder.drops(guest.device)[0] == (10, 0)
        guest.fe.backend.close()


def test_a_stopped_ring_is_let_go_and_its_base_reports_what_was_served():
    with serving("drop") as fwd:
        guest = Guest(fwd, False, False)
        guest.send([frame(64, k) for k in range(5)])
        deadline = time.monotonic() + 5
        while guest.device.counters()[0].rx_frames < 5 and time.monotonic() < deadline:
            time.sleep(0.001)
        guest.fe.send(F.GET_VRING_BASE, VringState(1, 0))
        assert guest.fe.reply() == VringState(1, 5)
        assert guest.device.pairs[0].tx is None
        assert len(fwd._table) == 0
        # A driver that keeps sending into the stopped ring is not served.
        guest.send([frame(64, 9)])
        time.sleep(0.05)
        assert guest.device.counters()[0].rx_frames == 5
        guest.fe.backend.close()


def test_the_kick_wakes_a_sleeping_loop():
    with serving("drop", idle_rounds=1, sleep_ms=2000) as fwd:
        guest = Guest(fwd, False, False)
        time.sleep(0.2)  # the loop is asleep on the kick fd by now
        guest.send([frame(64, 1)])
        assert guest.tx.should_kick()
        os.eventfd_write(guest.fe.backend.vrings[1].kick, 1)
        started = time.monotonic()
        while guest.device.counters()[0].rx_frames < 1 and time.monotonic() - started < 5:
            time.sleep(0.001)
        assert time.monotonic() - started < 1.0
        guest.fe.backend.close()


def dirty_pages(log: GuestMemory) -> set[int]:
    bits = np.unpackbits(log.view(0, LOG_BYTES), bitorder="little")
    return {int(p) for p in np.flatnonzero(bits)}


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_pages_the_device_writes_are_logged_for_migration(packed):
    # vhost-user "Migration": with VHOST_F_LOG_ALL every page written is marked in the log, and
    # so is the used ring of a vring set up with VHOST_VRING_F_LOG.
    with serving("io") as fwd:
        guest = Guest(fwd, packed, True, log=True)
        guest.post_receive_buffers(8, size=PAGE)
        frames = [frame(1000, k) for k in range(3)]
        guest.send(frames)
        assert len(guest.received(3, size=PAGE)) == 3
        pages = dirty_pages(guest.log)
        # The three receive buffers written, one page each, and the used rings.
        assert {RX_BUFFERS // PAGE + k for k in range(3)} <= pages
        assert RX_BUFFERS // PAGE + 3 not in pages   # posted but not written
        assert TX_BUFFERS // PAGE not in pages        # only read
        # Vring 0's areas lie in the 64 KiB from 0x1000, vring 1's in the next.
        rings = [range(0x1000 // PAGE, 0x11000 // PAGE), range(0x11000 // PAGE, 0x21000 // PAGE)]
        assert all(pages & set(r) for r in rings)
        assert len(pages - set(rings[0]) - set(rings[1])) == 3
        guest.fe.backend.close()


def test_a_log_without_log_all_stays_clean():
    with serving("io") as fwd:
        guest = Guest(fwd, False, True, log=True, log_all=False)
        guest.post_receive_buffers(4)
        guest.send([frame(64, 1)])
        assert len(guest.received(1)) == 1
        assert guest.fe.backend.log is not None and dirty_pages(guest.log) == set()
        guest.fe.backend.close()


@pytest.mark.parametrize("mode", ["drop", "io"])
def test_get_vring_base_serves_what_is_left_in_the_transmitq_first(mode):
    # No loop thread runs: only the drain can move these frames.
    fwd = Forwarder(Gate(), mode)
    guest = Guest(fwd, False, False)
    guest.post_receive_buffers(16)
    guest.send([frame(64, k) for k in range(10)])
    guest.fe.send(F.GET_VRING_BASE, VringState(1, 0))
    assert guest.fe.reply() == VringState(1, 10)
    assert guest.device.counters()[0].rx_frames == 10
    assert len(guest.received(10 if mode == "io" else 0, timeout=0.1)) == (
        10 if mode == "io" else 0)
    guest.fe.backend.close()


def test_frames_wait_for_the_receiveq_and_a_disabled_transmitq_is_emptied():
    with serving("io") as fwd:
        guest = Guest(fwd, False, False)
        guest.post_receive_buffers(16)
        guest.fe.send(F.SET_VRING_ENABLE, VringState(0, 0))   # receiveq off: frames wait
        guest.send([frame(64, 1)])
        time.sleep(0.1)
        assert guest.device.counters()[0].rx_frames == 0
        guest.fe.send(F.SET_VRING_ENABLE, VringState(1, 0))   # transmitq off: discarded
        deadline = time.monotonic() + 5
        while guest.device.counters()[0].rx_frames < 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert guest.device.counters()[0].rx_frames == 1
        assert guest.received(1, timeout=0.1) == []
        assert guest.device.counters()[0].rx_discarded == 1
        guest.fe.backend.close()


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.001)
    return condition()


def test_a_disabled_transmitq_discards_its_frames_though_its_receiveq_takes_frames():
    # vhost-user "Ring states": a started but disabled ring is processed without side
    # effects; a net device's transmitq is emptied and its frames dropped, not forwarded.
    with serving("io") as fwd:
        guest = Guest(fwd, False, False)
        guest.post_receive_buffers(16)
        guest.fe.send(F.SET_VRING_ENABLE, VringState(1, 0))
        guest.send([frame(64, k) for k in range(10)])
        assert wait_for(lambda: guest.device.counters()[0].rx_discarded == 10)
        assert guest.received(1, timeout=0.1) == []
        counters = guest.device.counters()[0]
        assert counters.rx_frames == 10 and counters.tx_frames == 0
        assert fwd.drops(guest.device)[0] == (0, 0)
        guest.fe.backend.close()


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_what_a_transmitq_holds_when_it_is_disabled_is_served_first(packed):
    # DPDK's virtio-user disables its rings as it exits: the frames it had made available
    # while the ring was served still go where served frames go. No loop thread runs here:
    # only the drain can move these.
    fwd = Forwarder(Gate(), "io")
    guest = Guest(fwd, packed, False)
    guest.post_receive_buffers(32)
    sent = [frame(60 + k, k) for k in range(10)]
    guest.send(sent)
    guest.fe.send(F.SET_VRING_ENABLE, VringState(1, 0))
    assert [g[NET_HDR_SIZE:] for g in guest.received(10)] == sent
    guest.send([frame(64, 50 + k) for k in range(5)])   # sent while disabled: dropped
    with fwd.gate.control():
        guest.device.service()
    assert guest.received(1, timeout=0.1) == []
    counters = guest.device.counters()[0]
    assert counters.rx_frames == 15 and counters.rx_discarded == 5 and counters.tx_frames == 10
    guest.fe.backend.close()


def control_device(fwd, features):
    """A two-pair device whose front-end passes the control queue on; returns the device, its
    front-end and command(bytes) -> the ack byte the device wrote."""
    device = VirtioNet(fwd.gate, queue_pairs=2)
    fwd.attach(device)
    fe = ScriptedFrontend(device.backend)
    fe.handshake(False, features)
    # §5.1.2: the control queue follows the pairs the driver may use (one without MQ).
    control = 4 if features >> VIRTIO_NET_F_MQ & 1 else 2
    for index in range(control):
        fe.start_vring(index, 64, False)
    ctrl = SplitDriverQueue(fe.memory, 64, fe.start_vring(control, 64, False))

    def command(data: bytes) -> int:
        fe.memory.write(TX_BUFFERS, data)
        ctrl.add(readable=[(TX_BUFFERS, len(data))], writable=[(TX_BUFFERS + 512, 1)])
        deadline = time.monotonic() + 5
        while not (done := ctrl.collect()) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert done == [(done[0][0], 1)]
        return fe.memory.read(TX_BUFFERS + 512, 1)[0]

    return device, fe, command


def test_control_queue_vq_pairs_set_limits_the_pairs_served():
    # §5.1.6.5.5: with MQ negotiated, VQ_PAIRS_SET picks how many pairs the driver uses.
    with serving("drop") as fwd:
        device, fe, command = control_device(fwd, 1 << VIRTIO_NET_F_CTRL_VQ
                                             | 1 << VIRTIO_NET_F_MQ)
        assert len(device.pairs) == 2
        assert command(bytes([4, 0, 1, 0])) == VIRTIO_NET_OK       # MQ VQ_PAIRS_SET 1
        assert len(device.pairs) == 1
        assert command(bytes([4, 0, 3, 0])) == VIRTIO_NET_ERR      # more pairs than offered
        assert command(bytes([4, 0, 0, 0])) == VIRTIO_NET_ERR      # fewer than one
        assert command(bytes([9, 9])) == VIRTIO_NET_ERR            # no such class
        assert command(bytes([0])) == VIRTIO_NET_ERR               # too short
        assert command(bytes([4, 0, 2, 0])) == VIRTIO_NET_OK
        assert len(device.pairs) == 2
        fe.backend.close()


def test_receive_filter_features_are_not_offered():
    # Offered means implemented: the device filters nothing, so it offers no filter classes.
    offered = VirtioNet(Gate()).features
    for bit in (18, 19, 20, 21, 23):   # CTRL_RX, CTRL_VLAN, CTRL_RX_EXTRA, GUEST_ANNOUNCE,
        assert not offered >> bit & 1  # CTRL_MAC_ADDR
    assert offered >> VIRTIO_NET_F_CTRL_VQ & 1 and offered >> VIRTIO_NET_F_MQ & 1


@pytest.mark.parametrize("name, command", [
    ("RX PROMISC on", bytes([0, 0, 1])),
    ("RX ALLMULTI off", bytes([0, 1, 0])),
    ("MAC TABLE_SET, empty tables", bytes([1, 0]) + bytes(8)),
    ("MAC ADDR_SET", bytes([1, 1]) + bytes.fromhex("020000000042")),
    ("VLAN ADD 5", bytes([2, 0, 5, 0])),
    ("VLAN DEL 5", bytes([2, 1, 5, 0])),
    ("ANNOUNCE ACK", bytes([3, 0])),
])
def test_commands_of_classes_not_negotiated_are_refused(name, command):
    # §5.1.6.5: RX and MAC need CTRL_RX, ADDR_SET CTRL_MAC_ADDR, VLAN CTRL_VLAN, ANNOUNCE
    # GUEST_ANNOUNCE; none is offered, so none is acked, and the MAC stays what it was.
    with serving("drop") as fwd:
        device, fe, command_ack = control_device(fwd, 1 << VIRTIO_NET_F_CTRL_VQ
                                                 | 1 << VIRTIO_NET_F_MQ)
        config = device.read_config(0, 12)
        assert command_ack(command) == VIRTIO_NET_ERR, name
        assert device.read_config(0, 12) == config
        fe.backend.close()


def test_vq_pairs_set_is_refused_without_mq():
    with serving("drop") as fwd:
        device, fe, command = control_device(fwd, 1 << VIRTIO_NET_F_CTRL_VQ)
        assert command(bytes([4, 0, 1, 0])) == VIRTIO_NET_ERR
        assert len(device.pairs) == 1
        fe.backend.close()


def test_a_split_ring_restarted_with_base_zero_resumes_from_its_used_index():
    # A front-end that lost its back-end may set a ring in use up again from base 0 (DPDK's
    # virtio-user does after a reconnect); a net device resumes where the used ring says.
    gate = Gate()
    device = VirtioNet(gate)
    fe = ScriptedFrontend(device.backend)
    fe.handshake(False)
    rings = ring_layout(256, 0x1000 + 1 * 0x10000, False)
    fe.memory.view(rings.device + 2, 2).view(np.uint16)[0] = 700
    fe.memory.view(rings.driver + 2, 2).view(np.uint16)[0] = 700
    fe.start_vring(1, 256, False, base=0)
    assert fe.backend.vrings[1].queue.last_avail_idx == 700
    fe.send(F.GET_VRING_BASE, VringState(1, 0))
    assert fe.reply() == VringState(1, 700)
    fe.backend.close()


def test_a_net_device_offers_every_protocol_feature_but_config_and_inflight_tracking():
    from fastpath.vhost_user._device import ENGINE_PROTOCOL_FEATURES

    # Net uses buffers in order and keeps none in flight: it has nothing to track.
    not_net = ProtocolFeature.CONFIG | ProtocolFeature.INFLIGHT_SHMFD
    fe = ScriptedFrontend(VirtioNet(Gate()).backend)
    fe.send(F.GET_PROTOCOL_FEATURES)
    assert fe.reply().value == ENGINE_PROTOCOL_FEATURES & ~not_net
    fe.backend.close()
    # Several pairs too: QEMU 7.2 then sends each region once per pair, and the engine counts
    # the copies (see tests/integration/test_qemu_guest.py for the guests with two pairs).
    fe = ScriptedFrontend(VirtioNet(Gate(), queue_pairs=2).backend)
    fe.send(F.GET_PROTOCOL_FEATURES)
    assert fe.reply().value == ENGINE_PROTOCOL_FEATURES & ~not_net
    fe.backend.close()
    generic = ScriptedFrontend()
    generic.send(F.GET_PROTOCOL_FEATURES)
    assert generic.reply().value == ENGINE_PROTOCOL_FEATURES & ~ProtocolFeature.INFLIGHT_SHMFD
    generic.backend.close()


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_a_busy_polled_transmitq_asks_the_driver_not_to_kick(packed):
    # §2.7.10 / §2.8.10: a device that polls suppresses notifications, sparing the driver a
    # system call per burst.
    with serving("drop", idle_rounds=0) as fwd:
        guest = Guest(fwd, packed, False)
        guest.send([frame(64, 1)])
        assert not guest.tx.should_kick()
        guest.fe.backend.close()


def test_a_disabled_transmitq_the_driver_breaks_is_logged_once_and_left_alone(caplog):
    fwd = Forwarder(Gate(), "io")   # no loop thread: service() runs here
    guest = Guest(fwd, False, False)
    guest.fe.send(F.SET_VRING_ENABLE, VringState(1, 0))
    assert guest.device.wants_service
    # §2.7.13.3: the driver's avail index more than a ring ahead of the device: broken.
    rings = ring_layout(256, 0x1000 + 1 * 0x10000, False)
    guest.memory.view(rings.driver + 2, 2).view(np.uint16)[0] = 300
    with fwd.gate.control():
        guest.device.service()
        guest.device.service()
    assert [r.levelname for r in caplog.records if "broken" in r.getMessage()] == ["ERROR"]
    assert not guest.device.wants_service
    assert guest.device.counters()[0].rx_discarded == 0
    guest.fe.backend.close()


@pytest.mark.parametrize("mode", ["io", "txonly"])
@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_a_busy_polled_receiveq_asks_the_driver_not_to_kick(mode, packed):
    # §2.7.10 / §2.8.10: the receiveq is polled too (for room), so the driver's refills need
    # no kick either.
    with serving(mode, idle_rounds=0) as fwd:
        guest = Guest(fwd, packed, False)
        guest.post_receive_buffers(8)
        assert not guest.rx.should_kick()
        guest.fe.backend.close()


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
@pytest.mark.parametrize("mergeable", [False, True], ids=["plain", "mergeable"])
def test_txonly_fills_every_receive_buffer_with_the_template(packed, mergeable):
    fwd = Forwarder(Gate(), "txonly", size=100, idle_rounds=100, sleep_ms=5)
    fwd.start()
    try:
        guest = Guest(fwd, packed, mergeable)
        guest.post_receive_buffers(40)
        got = guest.received(40)
        expected = profile_frames("udp64", count=1, size=100)[0]
        assert len(got) == 40
        assert all(g == header(1) + expected for g in got)
        assert guest.device.counters()[0].tx_frames == 40
        # What the driver transmits meanwhile is freed, as with drop.
        guest.send([frame(64, k) for k in range(5)])
        deadline = time.monotonic() + 5
        while guest.device.counters()[0].rx_frames < 5 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert guest.device.counters()[0].rx_frames == 5
        guest.fe.backend.close()
    finally:
        fwd.stop()


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_a_sleeping_txonly_loop_asks_for_receiveq_kicks_and_a_kick_wakes_it(packed):
    # The rings are set up before the loop starts: a control request waits for a sleeping
    # loop's timeout, which would make the set-up slow.
    fwd = Forwarder(Gate(), "txonly", idle_rounds=1, sleep_ms=1000)
    guest = Guest(fwd, packed, False)
    fwd.start()
    try:
        time.sleep(0.2)  # no buffers: the loop is asleep on the kick fds, until 1 s is up
        guest.post_receive_buffers(4)
        assert guest.rx.should_kick()
        os.eventfd_write(guest.fe.backend.vrings[0].kick, 1)
        started = time.monotonic()
        assert len(guest.received(4, timeout=5)) == 4
        assert time.monotonic() - started < 0.5   # woken by the kick, not by the timeout
        guest.fe.backend.close()
    finally:
        fwd.stop()
