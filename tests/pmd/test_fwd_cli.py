"""`fastpath fwd` as a user runs it: help, refusals, and frames between two processes through
a shared-memory ring."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

FASTPATH = [str(Path(sys.executable).parent / "fastpath")]


def fwd(*args, timeout=120):
    return subprocess.run(FASTPATH + ["fwd", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_teaches_ports_and_modes():
    result = fwd("--help")
    assert result.returncode == 0
    for text in ("vhost:SOCKET", "virtio-user:SOCKET", "ring:NAME", "tap:NAME",
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
