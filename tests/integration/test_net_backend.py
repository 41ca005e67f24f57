"""The embedding API, `NetBackend`, with real front-ends: a program's own loop takes every frame
DPDK's virtio-user sends, and echoes fastpath's own front-end's frames back byte for byte;
frames a driver leaves in a transmitq that it disables and stops reach the program after, and
frames it sends into a disabled one are discarded; a driver's kicks can go through a hook of its
own (a modelled guest's doorbell), and the program finds the kick eventfd they belong in."""

import os
import select
import threading
import time

import numpy as np
import pytest

from fastpath.devices.net import NetBackend, NetFrontend
from fastpath.testing import Testpmd
from fastpath.vhost_user.wire import FrontendRequest, VringState
from fastpath.vring import VIRTIO_RING_F_EVENT_IDX


class EchoLoop(threading.Thread):
    """A program's poll loop: every frame received on pair 0 goes back (or is only counted)."""

    def __init__(self, backend: NetBackend, echo: bool):
        super().__init__(daemon=True)
        self.backend, self.echo = backend, echo
        self.received = 0
        self.stop = threading.Event()

    def run(self):
        frames = np.zeros((32, 2048), dtype=np.uint8)
        lengths = np.zeros(32, dtype=np.uint32)
        while not self.stop.is_set():
            n = self.backend.rx_burst(0, frames, lengths)
            self.received += n
            if n and self.echo:
                sent = 0
                while sent < n and not self.stop.is_set():
                    sent += self.backend.tx_burst(0, frames[sent:], lengths[sent:], n - sent)
            elif not n:
                time.sleep(0.0001)


@pytest.mark.peer("dpdk")
def test_a_program_loop_takes_every_frame_testpmd_sends(tmp_path):
    sock = str(tmp_path / "vhost.sock")
    with NetBackend(sock) as backend:
        loop = EchoLoop(backend, echo=False)
        loop.start()
        with Testpmd.virtio_user(sock, forward="txonly") as peer:
            assert backend.wait_ready(10)
            time.sleep(1.5)
            peer.stop()
            sent = peer.final_totals()["tx_packets"]
        # On exit testpmd disables its rings and stops them: what it had sent last waits in
        # the pair's held frames for the loop, which goes on polling.
        deadline = time.monotonic() + 5
        while loop.received < sent and time.monotonic() < deadline:
            time.sleep(0.01)
        loop.stop.set()
        loop.join(5)
        counters = backend.counters()[0]
    assert sent > 10_000
    assert loop.received == counters.rx_frames == sent
    assert counters.rx_discarded == 0


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_a_program_loop_echoes_frames_byte_for_byte(tmp_path, packed):
    sock = str(tmp_path / "vhost.sock")
    with NetBackend(sock) as backend:
        loop = EchoLoop(backend, echo=True)
        loop.start()
        with NetFrontend(sock, packed=packed) as fe:
            assert backend.wait_ready(10)
            sent = [bytes([k & 0xFF]) * (60 + 13 * k) for k in range(100)]
            got, offered = [], 0
            while offered < len(sent):
                offered += fe.send(sent[offered:offered + 32])
                got += fe.receive(offered - len(got), timeout=5)
        loop.stop.set()
        loop.join(5)
    assert got == sent
    assert backend.counters()[0].tx_frames == len(sent)


def take_all(backend: NetBackend, pair: int = 0) -> list[bytes]:
    frames = np.zeros((16, 2048), dtype=np.uint8)
    lengths = np.zeros(16, dtype=np.uint32)
    got = []
    while n := backend.rx_burst(pair, frames, lengths):
        got += [frames[k, :lengths[k]].tobytes() for k in range(n)]
    return got


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_frames_left_in_a_stopped_transmitq_reach_the_program_after(tmp_path, packed):
    # The driver disables its transmitq and stops it (GET_VRING_BASE) before the program
    # polled: the device drains the ring into the pair's held frames, the base covers them,
    # and rx_burst gives them out in order, after the front-end has gone too.
    sock = str(tmp_path / "vhost.sock")
    sent = [bytes([k]) * (60 + 5 * k) for k in range(100)]
    with NetBackend(sock) as backend:
        with NetFrontend(sock, packed=packed) as fe:
            assert backend.wait_ready(10)
            assert fe.send(sent) == len(sent)
            base = fe.frontend.stop_vring(1)
        assert base & 0x7FFF == len(sent)
        assert take_all(backend) == sent
        counters = backend.counters()[0]
    assert counters.rx_frames == len(sent) and counters.rx_discarded == 0


def test_a_disabled_transmitq_discards_what_the_driver_sends_into_it(tmp_path):
    sock = str(tmp_path / "vhost.sock")
    with NetBackend(sock) as backend, NetFrontend(sock) as fe:
        assert backend.wait_ready(10)
        fe.frontend.request(FrontendRequest.SET_VRING_ENABLE, VringState(1, 0))
        assert fe.send([bytes([k]) * 64 for k in range(10)]) == 10
        deadline = time.monotonic() + 5
        while backend.counters()[0].rx_discarded < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert backend.counters()[0].rx_discarded == 10
        assert take_all(backend) == []
        assert not backend.ready()


def test_kicks_go_through_the_driver_s_notify_hook_into_the_back_end_s_kick_eventfd(tmp_path):
    sock = str(tmp_path / "vhost.sock")
    with NetBackend(sock) as backend:
        notified = []
        with NetFrontend(sock, event_idx=False, notify=notified.append) as fe:
            assert backend.wait_ready(10)
            assert not fe.features >> VIRTIO_RING_F_EVENT_IDX & 1
            # The receive buffers posted at start, then one frame: each ring asked for its
            # kick (no EVENT_IDX, no NO_NOTIFY), and the hook took it instead of the eventfd.
            fe.send([bytes(60)])
            assert notified == [0, 1]
            kick = backend.kick_fd(0)
            assert select.select([kick], [], [], 0)[0] == []
            fe.tx_vring.kick_backend()
            assert select.select([kick], [], [], 1)[0] == [kick]
            assert os.eventfd_read(kick) == 1
