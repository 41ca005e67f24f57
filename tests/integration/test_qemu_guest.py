"""`fastpath vhost-net` serving a real QEMU 7.2 (TCG) with a Linux guest: the guest's own
virtio-net driver sends numbered frames of 60 to 1514 bytes through an AF_PACKET socket and gets
every one back byte for byte through ``--fwd io``; the device is served again after the guest's
driver reset it and set it up again; and a guest keeps being served when the back-end is killed
(SIGKILL) and a new one takes its place, with fastpath connecting to a listening QEMU
(``--client``, QEMU ``server=on``) and with QEMU reconnecting to a listening fastpath
(``reconnect=1``). A device of two queue pairs serves the pairs the guest's driver uses, with
split and packed rings, with one vCPU (Linux enables only the first pair) and with two (one
netcheck run pinned to each vCPU, which transmits on that vCPU's pair): each configuration is
checked in one boot. Behind an Intel vIOMMU (q35, ``intel-iommu``, the guest's IOMMU in strict
mode) every ring and buffer address is an IOVA the back-end learns through IOTLB messages, and
every frame still comes back.

Guest boots are slow under TCG: the suite's FASTPATH_DEBUG=1 pass (see the Makefile's `test`)
boots only the first test here, as a smoke test; the others run in the release pass.

The guest (a Debian kernel, its virtio modules, busybox and ``guest/netcheck.c`` in an
initramfs) is built by ``guest/build.py`` into ``build/guest`` (``FASTPATH_GUEST_DIR``
overrides it) the first time and taken from there afterwards. Under `make test` they fail when
qemu-system-x86_64 is not installed or the guest cannot be built; a bare pytest skips them.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastpath.testing import QemuGuest, VhostNetProcess, received_frames, sent_frames

pytestmark = pytest.mark.peer("qemu")
DEBUG_PASS = os.environ.get("FASTPATH_DEBUG", "") not in ("", "0")
release_pass = pytest.mark.skipif(DEBUG_PASS, reason="guest boots are slow under TCG: the "
                                  "FASTPATH_DEBUG=1 pass boots only the smoke test")

BUILDER = Path(__file__).resolve().parent / "guest" / "build.py"
BUILD_TIMEOUT = 600.0  # the first build downloads the kernel package (about 70 MB)
BOOT_TIMEOUT = 45.0  # from QEMU's start to netcheck's first line; about 5 to 8 s here
# Whole lines only: the output is read as it comes, and a line may not have all arrived yet.
RESULT = re.compile(r"^NETCHECK (OK|FAIL)\b.*\n", re.M)
ROUND = re.compile(r"^NETCHECK ROUND (\d+) (OK|FAIL)\b.*\n", re.M)
FEATURES = re.compile(r"^NETCHECK FEATURES ([01]+)\n", re.M)
QUEUES = re.compile(r"^NETCHECK QUEUES (\d+)\n", re.M)
# Rounds of the restart tests: 100 frames each, 3 s for a round that loses frames, 200 ms apart.
ROUNDS_ARGS = "netcheck=-n,100,-t,3,-g,200,-d,60"
ROUNDS_BEFORE = 3
ROUNDS_AFTER = 3
RECOVERY_TIMEOUT = 30.0

FEATURE_NAMES = {
    0: "CSUM", 1: "GUEST_CSUM", 2: "CTRL_GUEST_OFFLOADS", 3: "MTU", 5: "MAC", 7: "GUEST_TSO4",
    8: "GUEST_TSO6", 9: "GUEST_ECN", 10: "GUEST_UFO", 11: "HOST_TSO4", 12: "HOST_TSO6",
    13: "HOST_ECN", 14: "HOST_UFO", 15: "MRG_RXBUF", 16: "STATUS", 17: "CTRL_VQ",
    18: "CTRL_RX", 19: "CTRL_VLAN", 20: "CTRL_RX_EXTRA", 21: "GUEST_ANNOUNCE", 22: "MQ",
    23: "CTRL_MAC_ADDR", 28: "RING_INDIRECT_DESC", 29: "RING_EVENT_IDX", 32: "VERSION_1",
    33: "ACCESS_PLATFORM", 34: "RING_PACKED", 35: "IN_ORDER", 36: "ORDER_PLATFORM",
}


@pytest.fixture(scope="session")
def guest(peer_missing):
    """The kernel and initramfs (built once, then cached), as guest.json describes them."""
    out = os.environ.get("FASTPATH_GUEST_DIR")
    command = [sys.executable, str(BUILDER), *(["--out", out] if out else [])]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        peer_missing(f"the guest build took more than {BUILD_TIMEOUT} s")
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        last = max((k for k, line in enumerate(lines)
                    if line.startswith(("guest build: cannot", "guest build: failed"))),
                   default=max(0, len(lines) - 5))
        reason = " | ".join(lines[last:])[:600]
        peer_missing(f"the QEMU guest cannot be built (status {result.returncode}): {reason}")
    return json.loads(result.stdout)


def boot(guest, sock, append, **options):
    """A QemuGuest on the built kernel and initramfs, on the vhost-user socket `sock`."""
    return QemuGuest(guest["kernel"], guest["initrd"], socket=sock, append=append,
                     time_limit=120.0, **options)


def negotiated(output):
    """The virtio feature names the guest's driver negotiated, from its FEATURES line."""
    match = FEATURES.search(output)
    if match is None:
        return []
    bits = match.group(1)
    return [FEATURE_NAMES.get(k, f"bit{k}") for k, b in enumerate(bits) if b == "1"]


def wait_for_socket(path, timeout=10.0):
    """Wait until a listening QEMU has made its socket."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"no socket {path} after {timeout} s"
        time.sleep(0.02)


@pytest.mark.debug_smoke
def test_every_frame_the_guest_sends_comes_back(guest, tmp_path):
    sock = str(tmp_path / "vhost.sock")
    with VhostNetProcess(sock, fwd="io", backoff=1000) as backend:
        with boot(guest, sock, "netcheck=-n,200,-t,20") as vm:
            result = vm.wait_for(RESULT, BOOT_TIMEOUT + 30)
            code = vm.wait(30)  # the guest powers off after netcheck
        stats = backend.stop()
    assert result.group(1) == "OK", vm.output
    assert "sent=200 received=200 " in result.group(0), vm.output
    assert code == 0, vm.output
    assert "VERSION_1" in negotiated(vm.output), vm.output
    # The guest also sends frames of its own (IPv6 neighbour discovery): at least ours.
    assert received_frames(stats) >= 200 and sent_frames(stats) >= 200, stats
    pair = stats["connections"][0]["queue_pairs"][0]
    assert pair["rx_dropped"] == 0 and pair["tx_dropped"] == 0 and pair["fwd_dropped"] == 0, stats


@release_pass
def test_the_device_is_served_again_after_the_guest_driver_resets_it(guest, tmp_path):
    # The guest unbinds virtio_net (the device is reset: SET_STATUS 0, GET_VRING_BASE) and
    # binds it again (new rings, the whole set-up again) twice, on one connection, as a guest
    # that reboots does.
    sock = str(tmp_path / "vhost.sock")
    with VhostNetProcess(sock, fwd="io", backoff=1000) as backend:
        with boot(guest, sock, "netcheck=-n,200,-t,10 netcheck_rebind=2") as vm:
            code = vm.wait(BOOT_TIMEOUT + 40)
        stats = backend.stop()
    results = RESULT.findall(vm.console)
    assert results == ["OK", "OK", "OK"], vm.output
    assert "NETCHECK REBIND 2\n" in vm.console and code == 0, vm.output
    assert len(stats["connections"]) == 1, stats
    assert received_frames(stats) >= 600 and sent_frames(stats) >= 600, stats


def rounds_until(vm, count, timeout, *, start=0, first=0):
    """Wait for `count` OK rounds in a row, numbered `first` or more, printed at or after
    `start`; returns every round (number, ok, line) seen from `start`, and the position after
    them."""
    seen, streak, position = [], 0, start
    deadline = time.monotonic() + timeout
    while streak < count:
        match = vm.wait_for(ROUND, max(0.1, deadline - time.monotonic()), start=position)
        position = match.end()
        number, good = int(match.group(1)), match.group(2) == "OK"
        seen.append((number, good, match.group(0)))
        streak = streak + 1 if good and number >= first else 0
    return seen, position


@release_pass
def test_every_frame_comes_back_through_a_viommu(guest, tmp_path):
    # ../shared/peers.md, "A real vIOMMU (VT-d)": QEMU starts only if the back-end offers
    # ACCESS_PLATFORM; the guest maps and unmaps every buffer, and each mapping reaches the
    # back-end as a miss answered by an IOTLB update. A chain waits for its update instead of
    # being dropped (DPDK's vhost PMD drops two thirds of what it sends back here).
    sock = str(tmp_path / "vhost.sock")
    with VhostNetProcess(sock, fwd="io", backoff=1000) as backend:
        with boot(guest, sock, "netcheck=-n,200,-t,20", iommu=True) as vm:
            result = vm.wait_for(RESULT, BOOT_TIMEOUT + 30)
            code = vm.wait(30)
        stats = backend.stop()
    assert result.group(1) == "OK", vm.output
    assert "sent=200 received=200 missing=0 corrupt=0 " in result.group(0), vm.output
    assert code == 0, vm.output
    assert {"VERSION_1", "ACCESS_PLATFORM"} <= set(negotiated(vm.output)), vm.output
    assert received_frames(stats) >= 200 and sent_frames(stats) >= 200, stats
    pair = stats["connections"][0]["queue_pairs"][0]
    assert pair["rx_dropped"] == 0 and pair["tx_dropped"] == 0 and pair["fwd_dropped"] == 0, stats
    assert pair["rings_broken"] == 0, stats


@release_pass
@pytest.mark.parametrize("who_listens", ["qemu", "fastpath"])
def test_guest_is_served_again_after_the_backend_is_killed(guest, tmp_path, who_listens):
    # who_listens="qemu": QEMU's chardev is server=on and fastpath connects (--client);
    # "fastpath": fastpath listens and QEMU reconnects every second (reconnect=1).
    sock = str(tmp_path / "vhost.sock")
    client = who_listens == "qemu"
    qemu_options = {"server": True} if client else {"reconnect": 1}
    backends = []

    def start_backend():
        backends.append(VhostNetProcess(sock, fwd="io", client=client, backoff=1000))

    try:
        if not client:
            start_backend()
        with boot(guest, sock, ROUNDS_ARGS, **qemu_options) as vm:
            if client:
                wait_for_socket(sock)
                start_backend()
            before, position = rounds_until(vm, ROUNDS_BEFORE, BOOT_TIMEOUT)
            backends[0].kill()  # SIGKILL: no goodbye on the socket
            killed_after = before[-1][0]
            start_backend()
            # Rounds begun after the kill lose the frames sent while no back-end was there (the
            # guest sees the link go down) and fail after 3 s; then they must pass again.
            after, _ = rounds_until(vm, ROUNDS_AFTER, RECOVERY_TIMEOUT, start=position,
                                    first=killed_after + 1)
            stats = backends[1].stop()
    finally:
        for b in backends:
            b.kill()
    assert all(good for _, good, _ in before), vm.output
    failed = [line for _, good, line in after if not good]
    assert len(failed) <= 3, vm.output  # the outage costs a round or two
    # The new back-end carried at least the rounds that passed after the restart.
    assert received_frames(stats) >= 100 * ROUNDS_AFTER, stats
    assert sent_frames(stats) >= 100 * ROUNDS_AFTER, stats


@release_pass
@pytest.mark.parametrize("vcpus", [1, 2])
@pytest.mark.parametrize("ring", ["split", "packed"])
def test_a_guest_with_two_queue_pairs_is_served_on_every_pair_it_uses(guest, tmp_path, ring,
                                                                       vcpus):
    # QEMU drives each queue pair as a vhost device of its own; Linux enables one pair per
    # vCPU (VQ_PAIRS_SET, which QEMU turns into SET_VRING_ENABLE) and maps each vCPU to its
    # pair. One netcheck run pinned to each vCPU must get all its frames back, on that pair.
    sock = str(tmp_path / "vhost.sock")
    cpus = ",".join(str(c) for c in range(vcpus))
    with VhostNetProcess(sock, fwd="io", queues=2, backoff=1000) as backend:
        with boot(guest, sock, f"netcheck=-n,200,-t,20 netcheck_cpus={cpus}", queues=2,
                  vcpus=vcpus, packed=ring == "packed") as vm:
            code = vm.wait(BOOT_TIMEOUT + 30 * vcpus)
        stats = backend.stop()
    assert "falling back on userspace virtio" not in vm.messages, vm.output
    assert RESULT.findall(vm.console) == ["OK"] * vcpus, vm.output
    assert code == 0, vm.output
    features = negotiated(vm.output)
    assert "MQ" in features and ("RING_PACKED" in features) == (ring == "packed"), features
    queues = QUEUES.search(vm.console)
    assert queues is not None and int(queues.group(1)) == vcpus, vm.output
    assert len(stats["connections"]) == 1, stats
    pairs = stats["connections"][0]["queue_pairs"]
    for k, pair in enumerate(pairs):
        # Pairs the driver uses carry at least netcheck's frames (the guest sends a few of
        # its own too); a pair it never enabled carries nothing.
        used = k < vcpus
        assert (pair["rx_frames"] >= 200) == used and (pair["tx_frames"] >= 200) == used, stats
        if not used:
            assert pair["rx_frames"] == pair["tx_frames"] == 0, stats
        assert pair["rx_dropped"] == pair["tx_dropped"] == pair["fwd_dropped"] == 0, stats
