"""The embedding API, `NetBackend`, with real front-ends: a program's own loop takes every frame
DPDK's virtio-user sends, and echoes fastpath's own front-end's frames back byte for byte."""

import threading
import time

import numpy as np
import pytest

from fastpath.testing import Testpmd
from fastpath.vhost_user import NetBackend, NetFrontend


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


@pytest.mark.skipif(Testpmd.find() is None, reason="dpdk-testpmd is not installed")
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
        loop.stop.set()
        loop.join(5)
        counters = backend.counters()[0]
    assert sent > 10_000
    assert loop.received == counters.rx_frames == sent


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
