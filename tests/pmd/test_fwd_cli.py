"""`fastpath fwd` as a user runs it: help, refusals, and frames through real ports and a real
vhost-user back-end, checked byte for byte with Scapy."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scapy.all import Ether, rdpcap, wrpcap

from fastpath.pmd._traffic import profile_frames
from fastpath.testing import VhostNetProcess

FASTPATH = [str(Path(sys.executable).parent / "fastpath")]


def fwd(*args, timeout=120):
    return subprocess.run(FASTPATH + ["fwd", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_teaches_ports_and_modes():
    result = fwd("--help")
    assert result.returncode == 0
    for text in ("vhost:SOCKET", "virtio-user:SOCKET", "ring:NAME", "pcap:FILE", "tap:NAME",
                 "macswap", "txonly", "flowgen", "csum", "examples"):
        assert text in result.stdout


@pytest.mark.parametrize("args, message", [
    (["warp:x"], "unknown port kind"),
    (["null", "--burst", "0"], "--burst"),
    (["null", "--fwd", "teleport"], "invalid choice"),
    (["pcap:/nonexistent/in.pcap"], "nonexistent"),
])
def test_bad_arguments_are_refused_with_the_reason(args, message):
    result = fwd(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_a_pcap_through_a_vhost_user_loopback_comes_out_byte_for_byte(tmp_path):
    frames = profile_frames("imix", count=300) + profile_frames("vlan", count=50)
    wrpcap(str(tmp_path / "in.pcap"), [Ether(f) for f in frames])
    sock = str(tmp_path / "vhost.sock")
    with VhostNetProcess(sock, fwd="io", cpu=None) as backend:
        result = fwd(f"pcap:{tmp_path / 'in.pcap'},out={tmp_path / 'out.pcap'}",
                     f"virtio-user:{sock}", "--json", str(tmp_path / "fwd.json"), "-q")
        backend.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert [bytes(p) for p in rdpcap(str(tmp_path / "out.pcap"))] == frames
    totals = {p["port"]: p for p in json.loads((tmp_path / "fwd.json").read_text())["ports"]}
    assert totals[f"virtio-user:{sock}"]["rx_frames"] == len(frames)


def test_txonly_into_a_ring_reaches_another_process(tmp_path):
    name = f"fwd-test-{tmp_path.name}"
    receiver = subprocess.Popen(
        FASTPATH + ["fwd", f"ring:{name},tx=0", f"pcap:out={tmp_path / 'out.pcap'}", "--fwd", "io",
                    "--duration", "8", "-q", "--json", str(tmp_path / "rx.json")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(3)  # the receiver has attached (a ring goes when its last user closes)
    sender = fwd(f"ring:{name},rx=0", "--fwd", "txonly", "--profile", "tcp", "--duration", "1",
                 "-q", "--json", str(tmp_path / "tx.json"))
    output, _ = receiver.communicate(timeout=60)
    assert sender.returncode == 0, sender.stderr
    assert receiver.returncode == 0, output
    captured = rdpcap(str(tmp_path / "out.pcap"))
    assert len(captured) > 1000
    assert all(p.haslayer("TCP") for p in captured[:100])
