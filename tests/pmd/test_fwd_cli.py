"""`fastpath fwd` as a user runs it: help, refusals, frames between two processes through
a shared-memory ring, and a pcap file through a vhost-user loopback and back byte for byte."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scapy.utils import rdpcap

from fastpath.testing import Testpmd, VhostNetProcess

FASTPATH = [str(Path(sys.executable).parent / "fastpath")]


def fwd(*args, timeout=120):
    return subprocess.run(FASTPATH + ["fwd", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_teaches_ports_and_modes():
    result = fwd("--help")
    assert result.returncode == 0
    for text in ("vhost:SOCKET", "virtio-user:SOCKET", "ring:NAME", "tap:NAME", "pcap[:FILE]",
                 "macswap", "txonly", "flowgen", "csum", "examples"):
        assert text in result.stdout


@pytest.mark.parametrize("args, message", [
    (["warp:x"], "unknown port kind"),
    (["null", "--burst", "0"], "--burst"),
    (["null", "--fwd", "teleport"], "invalid choice"),
])
def test_bad_arguments_are_refused_with_the_reason(args, message):
    result = fwd(*args)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.release_pass
def test_txonly_into_a_ring_reaches_another_process(tmp_path):
    name = f"fwd-test-{tmp_path.name}"
    receiver = subprocess.Popen(
        FASTPATH + ["fwd", f"ring:{name},tx=0", "null", "--fwd", "rxonly",
                    "--duration", "8", "-q", "--json", str(tmp_path / "rx.json")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(3)  # the receiver has attached (a ring goes when its last user closes)
    sender = fwd(f"ring:{name},rx=0", "--fwd", "txonly", "--profile", "tcp", "--duration", "1",
                 "-q", "--json", str(tmp_path / "tx.json"))
    output, _ = receiver.communicate(timeout=60)
    assert sender.returncode == 0, sender.stderr
    assert receiver.returncode == 0, output
    sent = json.loads((tmp_path / "tx.json").read_text())["ports"][0]["tx_frames"]
    received = json.loads((tmp_path / "rx.json").read_text())["ports"][0]["rx_frames"]
    assert sent > 1000
    assert received == sent


def looping_back_end(kind, sock):
    """A back-end that sends every frame back: fastpath vhost-net, or DPDK's vhost PMD."""
    if kind == "dpdk":
        return Testpmd.vhost(sock, forward="io", cpu=0)
    return VhostNetProcess(sock, fwd="io", cpu=None)


@pytest.mark.parametrize("back_end", [
    "fastpath",
    pytest.param("dpdk", marks=pytest.mark.peer("dpdk"))])
@pytest.mark.release_pass
def test_a_pcap_comes_back_byte_for_byte_through_a_vhost_user_loopback(tmp_path, back_end):
    replayed, captured = tmp_path / "imix.pcap", tmp_path / "back.pcap"
    made = subprocess.run(FASTPATH + ["gen", "--profile", "imix", "--count", "600",
                                      "-o", str(replayed)], capture_output=True, text=True,
                          timeout=120)
    assert made.returncode == 0, made.stderr
    sock = str(tmp_path / "vhost.sock")
    with looping_back_end(back_end, sock):
        # Paced, and with rings deep enough (1024 frames: a fifth of a second at this rate)
        # that a loaded machine stalling the traffic process never leaves the loopback a full
        # receive ring, where it drops what it cannot place (as any io forwarder does).
        result = fwd(f"pcap:{replayed},out={captured},rate=5000",
                     f"virtio-user:{sock},queue_size=1024",
                     "--fwd", "io", "-q", "--json", str(tmp_path / "fwd.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    sent = [bytes(p) for p in rdpcap(str(replayed))]
    assert len(sent) == 600 and len({len(f) for f in sent}) == 3
    assert [bytes(p) for p in rdpcap(str(captured))] == sent
    pcap_port, virtio_port = json.loads((tmp_path / "fwd.json").read_text())["ports"]
    assert pcap_port["rx_frames"] == pcap_port["tx_frames"] == 600
    assert virtio_port["rx_frames"] == virtio_port["tx_frames"] == 600
    assert pcap_port["tx_dropped"] == virtio_port["tx_dropped"] == 0
