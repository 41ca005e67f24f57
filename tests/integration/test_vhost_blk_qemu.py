"""`fastpath vhost-blk` serving a real QEMU 7.2 (TCG) with a Linux guest: the guest's own
virtio-blk driver sees the disk's size and read-only flag as the back-end offers them, and
``guest/blkcheck.c`` writes patterns at several offsets with O_DIRECT (a block, a sub-page piece
of 512-byte sectors, a write of over 1 MiB that the guest splits, the disk's last blocks),
reads them back, flushes, discards and zeroes (BLKDISCARD, BLKZEROOUT) and reads zeros back;
on a read-only disk every write, discard and write-zeroes fails and the data stays as it was.

One boot per configuration checks everything in it: a malloc disk on one split queue; a file
disk on two queues with two vCPUs (blkcheck runs pinned to each, so each queue carries its
requests); a file disk on a packed ring; a read-only file disk the host filled first. After the
guest is done, the back-end's bdev statistics must count exactly the bytes the guest wrote,
discarded and zeroed, and a file disk's bytes, read on the host, must be what the guest wrote
where it wrote and zeros everywhere else: the data went through fastpath, and to the right
offsets.

One more boot kills the back-end while blkcheck streams O_DIRECT writes (-W) and starts another
on the same socket: QEMU (``reconnect=1``) hands it the inflight area, the guest finishes with
no error, and every page it wrote is in the file.

Each boot goes through SeaBIOS, which drives the disk first with fewer features and stops it
before Linux starts it again (the shared notes on peers); QEMU's ``vhost_dev_start`` trace
shows both start-ups, so each test also proves the back-end serves a device started twice on
one connection.

Each boot also checks that the guest's fsync reaches the bdev as a flush (see
`assert_flushes_reach_the_bdev`).

Every boot runs in the release pass only: the FASTPATH_DEBUG=1 pass boots one guest, the
network's smoke test (test_qemu_guest.py, whose guest fixture builds the guest these boot),
and a back-end started there compiles every kernel first (no Numba cache in that pass).
"""

import hashlib
import re

import numpy as np
import pytest
import test_qemu_guest

from fastpath.devices.blk import (
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_WRITE_ZEROES,
)
from fastpath.testing import QemuGuest, VhostBlkProcess
from fastpath.vring import VIRTIO_F_RING_PACKED

pytestmark = pytest.mark.peer("qemu")
# The network tests' guest (built once, then cached) and pass marker.
guest = test_qemu_guest.guest
release_pass = test_qemu_guest.release_pass
BOOT_TIMEOUT = test_qemu_guest.BOOT_TIMEOUT

DISK_SIZE = 64 << 20
# Regions blkcheck writes, as (offset, length): a block; 2.5 KiB of 512-byte sectors starting
# inside a page; 1 MiB and a page, which the guest's block layer sends as several requests of
# many segments; the disk's last two pages.
WRITES = [(0, 4096), (9728, 2560), (65536, (1 << 20) + 4096), (DISK_SIZE - 8192, 8192)]
# Discarded and zeroed: pieces of the large written region, so that both have data to act on.
DISCARD = (65536 + (256 << 10), 64 << 10)
ZERO = (65536 + (512 << 10), 128 << 10)
# Every check blkcheck makes, in its order, on a writable and on a read-only disk.
WRITABLE_CHECKS = ["SIZE", "RO", "BLOCK", "WRITE", "READ", "FLUSH", "DISCARD", "ZEROOUT", "ZEROS"]
READ_ONLY_CHECKS = ["SIZE", "RO", "BLOCK", "READ", "FLUSH", "WRITE_REFUSED", "DISCARD_REFUSED",
                    "ZEROOUT_REFUSED", "UNCHANGED"]

# Whole lines only: the output is read as it comes, and a line may not have all arrived yet.
VERDICT = re.compile(r"^BLKCHECK (\w+) (OK|FAIL)\b(.*)\n", re.M)
DONE = re.compile(r"^BLKCHECK DONE ok=(\d+) failed=(\d+)\n", re.M)
FEATURES = re.compile(r"^BLKCHECK FEATURES ([01]+)\n", re.M)
QUEUES = re.compile(r"^BLKCHECK QUEUES (\d+)\n", re.M)
CACHE = re.compile(r"^BLKCHECK CACHE (\S+)\n", re.M)
INTERRUPTS = re.compile(r"^BLKCHECK INTERRUPTS \S+-req\.(\d+) (\d+)\n", re.M)
DEVICE_STARTS = re.compile(r"\bvhost_dev_start\b")


def blkcheck_append(*, read_only=False, cpus=()):
    """The kernel command line that has the guest's init run blkcheck on this test's regions
    (once pinned to each of `cpus`, with the CPU as the seed, when given)."""
    args = ["-s", DISK_SIZE, "-b", 512, "-a", 60, *(["-r"] if read_only else [])]
    for flag, regions in (("-w", WRITES), ("-D", [DISCARD]), ("-z", [ZERO])):
        for offset, length in regions:
            args += [flag, f"{offset}+{length}"]
    append = "blkcheck=" + ",".join(map(str, args))
    if cpus:
        append += " blkcheck_cpus=" + ",".join(map(str, cpus))
    return append


def pattern(offset, length, seed):
    """The bytes blkcheck writes at disk offset `offset`: its pattern_word, word by word."""
    k = np.arange(offset // 8, (offset + length) // 8, dtype=np.uint64)
    salt = np.uint64((seed + 1) * 0xC2B2AE3D27D4EB4F % (1 << 64))
    return ((k + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15) ^ salt).astype("<u8").view(np.uint8)


def patterned_image(seed):
    """A zeroed disk with the pattern in every region blkcheck writes."""
    image = np.zeros(DISK_SIZE, dtype=np.uint8)
    for offset, length in WRITES:
        image[offset:offset + length] = pattern(offset, length, seed)
    return image


def written_image(seed):
    """The disk as blkcheck leaves a zeroed one (the pattern where it wrote, zeros where it
    zeroed), and the bytes to compare: all but the discarded range, which the device may
    return as anything after the discard (virtio 1.2 §5.2.6.2)."""
    image = patterned_image(seed)
    image[ZERO[0]:sum(ZERO)] = 0
    compared = np.ones(DISK_SIZE, dtype=bool)
    compared[DISCARD[0]:sum(DISCARD)] = False
    return image, compared


def zeroed_disk(tmp_path):
    """A file of DISK_SIZE zeros (sparse) for a file bdev."""
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(DISK_SIZE)
    return disk


def assert_disk_holds(path, image, compared):
    """The file's bytes equal `image` wherever `compared`; the first difference otherwise."""
    disk = np.fromfile(path, dtype=np.uint8)
    assert len(disk) == DISK_SIZE, f"{path} is {len(disk)} bytes"
    wrong = np.flatnonzero((disk != image) & compared)
    assert len(wrong) == 0, (f"{len(wrong)} bytes differ, the first at offset {wrong[0]}: "
                             f"{disk[wrong[0]]:#04x} instead of {image[wrong[0]]:#04x}")


def serve_one_boot(guest, tmp_path, bdev, *, queues=1, vcpus=1, packed=False, read_only=False,
                   cpus=()):
    """Boot the guest on `fastpath vhost-blk --bdev BDEV` until it powers off; returns the
    guest (its output), the back-end's statistics and the back-end's output."""
    sock = tmp_path / "vhost-blk.sock"
    with VhostBlkProcess(sock, bdev, queues=queues, read_only=read_only) as backend:
        with QemuGuest(guest["kernel"], guest["initrd"], blk_socket=sock, blk_queues=queues,
                       vcpus=vcpus, packed=packed, time_limit=120.0,
                       append=blkcheck_append(read_only=read_only, cpus=cpus),
                       extra=["-trace", "vhost_dev_start"]) as vm:
            code = vm.wait(BOOT_TIMEOUT + 30 * max(1, len(cpus)))
        stats = backend.stop()
    return vm, stats, backend.output, code


def assert_guest_passed(vm, code, backend_output, *, checks, runs=1):
    """Every blkcheck run made every check of `checks` and passed it, the guest powered off,
    and the back-end logged no error."""
    verdicts = [(name, result) for name, result, _ in VERDICT.findall(vm.console)]
    assert verdicts == [(name, "OK") for name in checks] * runs, vm.output
    assert DONE.findall(vm.console) == [(str(len(checks)), "0")] * runs, vm.output
    assert code == 0, vm.output
    assert " ERROR " not in backend_output, backend_output
    # SeaBIOS starts the device, stops it, and Linux starts it again (QEMU starts the
    # vhost-user device each time the driver sets DRIVER_OK).
    assert len(DEVICE_STARTS.findall(vm.messages)) >= 2, vm.output


def negotiated(vm):
    """The feature bits the guest's driver negotiated, as a set of bit numbers."""
    match = FEATURES.search(vm.console)
    assert match is not None, vm.output
    return {k for k, bit in enumerate(match.group(1)) if bit == "1"}


def assert_features(vm, *, mq=False, packed=False, read_only=False):
    """The driver took flush, discard and write-zeroes, and MQ, a packed ring and RO as the
    configuration has them."""
    features = negotiated(vm)
    assert {VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES} <= features, \
        vm.output
    assert (VIRTIO_BLK_F_MQ in features) == mq, vm.output
    assert (VIRTIO_F_RING_PACKED in features) == packed, vm.output
    assert (VIRTIO_BLK_F_RO in features) == read_only, vm.output


def assert_counted_writes(stats, runs):
    """The bdev took exactly the bytes blkcheck wrote, discarded and zeroed, in each of its
    `runs`, through write-zeroes requests (not zeros written), and a flush; no errors."""
    s = stats["statistics"]
    assert s["write_bytes"] == runs * sum(length for _, length in WRITES), stats
    assert s["discard_bytes"] == runs * DISCARD[1], stats
    assert s["write_zeroes_bytes"] == runs * ZERO[1], stats
    assert s["errors"] == 0, stats
    # Each written byte read back at least twice (READ, then ZEROS).
    assert s["read_bytes"] >= 2 * runs * sum(length for _, length in WRITES), stats


def assert_flushes_reach_the_bdev(vm, stats, runs):
    """The driver runs the disk's cache as write-back, as the device does once FLUSH is
    negotiated, so each blkcheck run's fsync reaches the bdev as a flush."""
    # QEMU reads the config space once, when it connects, before any feature is negotiated:
    # the device must say then the mode it runs in (a device that said writethrough there
    # and ran write-back would never see a flush).
    cache = CACHE.search(vm.console)
    assert cache is not None, vm.output
    assert cache.group(1) == "write-back", vm.output
    assert stats["statistics"]["flush_ops"] >= runs, stats


@release_pass
def test_a_guest_reads_back_what_it_wrote_to_a_malloc_disk(guest, tmp_path):
    vm, stats, output, code = serve_one_boot(guest, tmp_path, f"malloc:{DISK_SIZE}")
    assert_guest_passed(vm, code, output, checks=WRITABLE_CHECKS)
    assert_features(vm)
    assert_counted_writes(stats, runs=1)
    assert_flushes_reach_the_bdev(vm, stats, runs=1)


@release_pass
def test_two_queues_each_carry_the_requests_of_their_cpu(guest, tmp_path):
    # blk-mq maps each vCPU to its own request queue; blkcheck runs pinned to each vCPU, with
    # a pattern of its own (the seed is the CPU), and must pass on each.
    disk = zeroed_disk(tmp_path)
    vm, stats, output, code = serve_one_boot(guest, tmp_path, f"file:{disk}", queues=2,
                                             vcpus=2, cpus=(0, 1))
    assert_guest_passed(vm, code, output, checks=WRITABLE_CHECKS, runs=2)
    assert_features(vm, mq=True)
    assert QUEUES.findall(vm.console) == ["2"], vm.output
    # Each queue's completions reached the guest: the back-end served both.
    interrupts = {int(q): int(n) for q, n in INTERRUPTS.findall(vm.console)}
    assert set(interrupts) == {0, 1} and min(interrupts.values()) > 0, vm.output
    assert_counted_writes(stats, runs=2)
    assert_disk_holds(disk, *written_image(seed=1))
    assert_flushes_reach_the_bdev(vm, stats, runs=2)


@release_pass
def test_a_packed_ring_carries_every_kind_of_request(guest, tmp_path):
    disk = zeroed_disk(tmp_path)
    vm, stats, output, code = serve_one_boot(guest, tmp_path, f"file:{disk}", packed=True)
    assert_guest_passed(vm, code, output, checks=WRITABLE_CHECKS)
    assert_features(vm, packed=True)
    assert_counted_writes(stats, runs=1)
    assert_disk_holds(disk, *written_image(seed=0))
    assert_flushes_reach_the_bdev(vm, stats, runs=1)


@release_pass
def test_a_read_only_disk_refuses_every_write_and_keeps_its_data(guest, tmp_path):
    # The host writes blkcheck's pattern first: the guest must read it, and nothing it tries
    # may change the file. (Linux refuses the writes, discards and write-zeroes itself, EPERM,
    # once the device offers VIRTIO_BLK_F_RO: none reaches the device, whose own refusals
    # the device tests cover.)
    disk = tmp_path / "disk.img"
    patterned_image(seed=0).tofile(disk)
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    vm, stats, output, code = serve_one_boot(guest, tmp_path, f"file:{disk}", read_only=True)
    assert_guest_passed(vm, code, output, checks=READ_ONLY_CHECKS)
    assert_features(vm, read_only=True)
    s = stats["statistics"]
    assert s["write_ops"] == s["discard_ops"] == s["write_zeroes_ops"] == 0, stats
    assert s["read_bytes"] >= 2 * sum(length for _, length in WRITES), stats
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before
    assert_flushes_reach_the_bdev(vm, stats, runs=1)


# The guest's stream of writes: 4,096 pages, each acknowledged before the next is sent.
STREAM_BYTES = 16 << 20
STREAMING = re.compile(r"^BLKCHECK STREAMING acked=(\d+)\n", re.M)
STREAM_CHECKS = ["SIZE", "RO", "STREAM"]


@release_pass
@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_a_guest_writing_through_a_back_end_restart_loses_no_acknowledged_write(guest, tmp_path,
                                                                               packed):
    # QEMU keeps the inflight area it got at start-up (INFLIGHT_SHMFD) and, reconnecting to
    # the back-end that follows the killed one, hands it back (SET_INFLIGHT_FD): the new
    # back-end resubmits what the old one had taken, and the guest sees no error.
    disk = zeroed_disk(tmp_path)
    sock = tmp_path / "vhost-blk.sock"
    bdev = f"file:{disk}"
    append = "blkcheck=" + ",".join(map(str, ["-s", DISK_SIZE, "-a", 150, "-W", STREAM_BYTES]))
    with VhostBlkProcess(sock, bdev) as first:
        with QemuGuest(guest["kernel"], guest["initrd"], blk_socket=sock, reconnect=1,
                       packed=packed, time_limit=180.0, append=append,
                       extra=["-trace", "vhost_dev_start"]) as vm:
            streaming = vm.wait_for(STREAMING, BOOT_TIMEOUT + 30)
            first.kill()
            with VhostBlkProcess(sock, bdev) as second:
                code = vm.wait(BOOT_TIMEOUT + 90)
                stats = second.stop()
    assert_guest_passed(vm, code, second.output, checks=STREAM_CHECKS)
    acked = [int(n) for n in STREAMING.findall(vm.console)]
    # The back-end died mid-stream: the guest went on writing through the new one.
    assert acked[-1] > int(streaming.group(1)), vm.output
    # SeaBIOS's start, Linux's, and the start on the new back-end after QEMU reconnected.
    assert len(DEVICE_STARTS.findall(vm.messages)) >= 3, vm.output
    assert "inflight area handed back" in second.output, second.output
    assert stats["statistics"]["errors"] == 0, stats
    image = np.zeros(DISK_SIZE, dtype=np.uint8)
    image[:STREAM_BYTES] = pattern(0, STREAM_BYTES, seed=0)
    assert_disk_holds(disk, image, np.ones(DISK_SIZE, dtype=bool))
