"""The `fastpath` command as a user runs it."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fastpath

FASTPATH = [str(Path(sys.executable).parent / "fastpath")]


def git_revision() -> str:
    return subprocess.run(["git", "-C", str(Path(fastpath.__file__).parent.parent), "rev-parse",
                           "HEAD"], capture_output=True, text=True).stdout.strip()


def run(*args, timeout=300):
    return subprocess.run(FASTPATH + list(args), capture_output=True, text=True, timeout=timeout)


def test_help_lists_the_commands():
    result = run("--help")
    assert result.returncode == 0
    assert "bench" in result.stdout


def test_bench_vring_help_explains_the_job():
    result = run("bench", "vring", "--help")
    assert result.returncode == 0
    for option in ("--rings", "--bursts", "--chains", "--json", "--no-two-process"):
        assert option in result.stdout


def test_version():
    result = run("--version")
    assert result.returncode == 0
    assert fastpath.__version__ in result.stdout


def test_no_command_prints_help_and_fails():
    result = run()
    assert result.returncode == 2
    assert "usage" in result.stdout


def test_bad_list_is_a_clear_error():
    result = run("bench", "vring", "--rings", "spiral")
    assert result.returncode == 2
    assert "packed/split" in result.stderr


def test_bench_vring_short_run_writes_json(tmp_path):
    out = tmp_path / "vring.json"
    result = run("bench", "vring", "--bursts", "32", "--chains", "50000", "--reference-chains",
                 "500", "--repeat", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "core/reference" in result.stdout
    data = json.loads(out.read_text())
    rows = {(r["ring"], r["burst"]): r for r in data["results"]}
    assert set(rows) == {("split", 32), ("packed", 32)}
    for row in rows.values():
        assert row["one_process"] > row["reference"] > 0
        assert row["two_process"] > 0
    assert data["environment"]["git"]


def test_vhost_net_help_teaches_its_options():
    result = run("vhost-net", "--help")
    assert result.returncode == 0
    for option in ("--socket", "--client", "--queues", "--fwd", "txonly", "--size", "--pcap",
                   "--backoff", "--json"):
        assert option in result.stdout
    assert "example:" in result.stdout


def test_vhost_net_refuses_bad_settings_clearly(tmp_path):
    sock = str(tmp_path / "vhost.sock")
    result = run("vhost-net", "--socket", sock, "--queues", "9")
    assert result.returncode != 0 and "--queues must be 1 to 8" in result.stderr
    result = run("vhost-net", "--socket", sock, "--mac", "52:54:00")
    assert result.returncode != 0 and "is not a MAC address" in result.stderr
    result = run("vhost-net", "--socket", sock, "--fwd", "txonly", "--size", "59")
    assert result.returncode != 0 and "--size must be 60 to 2048" in result.stderr


@pytest.mark.release_pass
def test_vhost_net_runs_for_its_duration_and_writes_json(tmp_path):
    out = tmp_path / "stats.json"
    result = run("vhost-net", "--socket", str(tmp_path / "vhost.sock"), "--duration", "0.5",
                 "--backoff", "10", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "listening on" in result.stderr
    stats = json.loads(out.read_text())
    # Which fastpath ran: this checkout's package, at this checkout's revision.
    assert stats.pop("fastpath") == {"file": fastpath.__file__, "revision": git_revision()}
    # With no front-end, nothing kicks: every sleep (after 10 idle rounds) ends by its timeout.
    sleeps = stats.pop("sleeps")
    assert sleeps > 0
    assert stats == {"fwd": "io", "queues": 1, "connections": [], "kicks_read": 0,
                     "woken_by_eventfd": 0}


@pytest.mark.release_pass
def test_vhost_net_follows_the_back_end_program_conventions(tmp_path):
    result = run("vhost-net", "--print-capabilities")
    assert result.returncode == 0 and json.loads(result.stdout) == {"type": "net"}
    result = run("vhost-net")
    assert result.returncode != 0 and "--socket-path PATH is required" in result.stderr
    # --socket-path as the convention names it, and SIGTERM ends it with status 0.
    sock = tmp_path / "vhost.sock"
    process = subprocess.Popen(FASTPATH + ["vhost-net", "--socket-path", str(sock), "--backoff",
                                           "10"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        process.kill()
        process.wait()
        process.stderr.close()


def test_bench_vhost_net_help_names_its_peer():
    result = run("bench", "vhost-net", "--help")
    assert result.returncode == 0 and "DPDK" in result.stdout and "--sizes" in result.stdout
