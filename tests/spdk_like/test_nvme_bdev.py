"""The controller as a poller of the poll host, and the nvme bdev that drives one through a
queue pair per channel: requests split into commands by MDTS, pieces, Write Zeroes' and
ranges' limits; errors back as errnos; an IoJob verifying through it; random requests held to
the same requests on the backing bdev alone."""

import errno
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nvme_helpers import Rig, command, status_of

from fastpath.devices.blk import (
    BLOCK_IO,
    IO_DISCARD,
    IO_FLUSH,
    IO_READ,
    IO_WRITE,
    IO_WRITE_ZEROES,
    IOVEC,
)
from fastpath.pmd import PollHost
from fastpath.spdk_like import IoJob, MallocBdev, NvmeBdev, open_bdev
from fastpath.spdk_like._nvme_layout import NVM_READ, NVM_WRITE, PAGE_SIZE


def test_a_controller_on_a_poll_host_serves_its_queues_and_admin_commands():
    host = PollHost("nvme-test", idle_rounds=64, sleep_ms=1)
    host.start()
    try:
        rig = Rig(blocks=2048, host=host)
        with pytest.raises(RuntimeError, match="runs the controller"):
            rig.controller.poll()
        assert rig.driver.num_blocks == 2048
        pair = rig.driver.create_queue_pair(16)
        source = rig.memory.alloc(PAGE_SIZE)
        source[:] = np.arange(PAGE_SIZE) % 253
        target = rig.memory.alloc(PAGE_SIZE)
        assert pair.submit(command(NVM_WRITE, 1, slba=8, blocks=8,
                                   prp1=source.ctypes.data)) == 1
        assert pair.submit(command(NVM_READ, 2, slba=8, blocks=8,
                                   prp1=target.ctypes.data)) == 1
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            got.extend(pair.reap())
        assert [status_of(c) for c in got] == [0, 0]
        assert (target == source).all()
        rig.driver.delete_queue_pair(pair)
    finally:
        host.stop()


@pytest.fixture(scope="module")
def nvme():
    bdev = open_bdev("nvme:malloc:40M", entries=64)
    yield bdev
    bdev.close()


@pytest.fixture
def channel(nvme):
    channel = nvme.open_channel(32)
    yield channel
    channel.close()


def test_the_nvme_bdev_takes_its_geometry_from_identify(nvme):
    assert isinstance(nvme, NvmeBdev) and isinstance(nvme.backing, MallocBdev)
    assert (nvme.block_size, nvme.size) == (512, 40 << 20)
    assert nvme.driver.num_blocks == nvme.num_blocks


def test_reads_writes_and_the_rest_reach_the_backing(nvme, channel):
    data = np.random.default_rng(3).integers(0, 256, 300 * 1024, dtype=np.uint8).tobytes()
    channel.write(4096, data)
    assert nvme.backing.data[4096:4096 + len(data)].tobytes() == data
    assert channel.read(4096, len(data)) == data
    channel.write_zeroes(8192, 4096)
    assert not nvme.backing.data[8192:12288].any()
    channel.discard(65536, 8192)
    assert not nvme.backing.data[65536:65536 + 8192].any()
    channel.flush()
    statistics = nvme.backing.statistics()
    assert statistics.flush_ops >= 1 and statistics.discard_ops >= 1
    # 300 KiB in commands of at most 128 KiB: three writes at the backing.
    assert statistics.write_ops >= 3


def run(channel, requests):
    """Each request (operation, offset, length, pieces): BLOCK_IO with iovecs over `pieces`
    (numpy buffers); returns the statuses in request order."""
    ios = np.zeros(len(requests), dtype=BLOCK_IO)
    keep = []
    for k, (operation, offset, length, pieces) in enumerate(requests):
        iov = np.array([(p.ctypes.data, len(p)) for p in pieces], dtype=IOVEC)
        keep.append(iov)
        ios[k] = (k, offset, length, iov.ctypes.data if len(iov) else 0, len(iov), operation,
                  0, 0)
    completions = channel.run(ios)
    statuses = dict(zip(completions["tag"].tolist(), completions["status"].tolist(),
                        strict=True))
    return [statuses[k] for k in range(len(requests))]


def test_requests_split_by_transfer_size_and_pieces(nvme, channel):
    rng = np.random.default_rng(7)
    # 1 MiB in odd-sized pieces (beyond MDTS), and 200 pieces of 512 bytes (beyond the
    # descriptors a command takes).
    sizes = [1000, 70_001, 3, 200_000, 777_572]
    big = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    many = [rng.integers(0, 256, 512, dtype=np.uint8) for _ in range(200)]
    assert run(channel, [(IO_WRITE, 0, 1 << 20, big),
                         (IO_WRITE, 2 << 20, 200 * 512, many)]) == [0, 0]
    assert nvme.backing.data[:1 << 20].tobytes() == np.concatenate(big).tobytes()
    assert nvme.backing.data[2 << 20:(2 << 20) + 200 * 512].tobytes() == \
        np.concatenate(many).tobytes()
    back = [np.zeros(n, dtype=np.uint8) for n in reversed(sizes)]
    assert run(channel, [(IO_READ, 0, 1 << 20, back)]) == [0]
    assert np.concatenate(back).tobytes() == np.concatenate(big).tobytes()


def test_a_block_over_more_pieces_than_a_command_takes_is_refused(channel):
    pieces = [np.zeros(8, dtype=np.uint8) for _ in range(64)]
    assert run(channel, [(IO_WRITE, 0, 512, pieces)]) == [-errno.EINVAL]


def test_write_zeroes_beyond_one_command_is_split(nvme, channel):
    # 65536 blocks is one Write Zeroes' most: 33 MiB of 512-byte blocks takes two.
    nvme.backing.data[:] = 0xEE
    length = 33 << 20
    assert run(channel, [(IO_WRITE_ZEROES, 4096, length, [])]) == [0]
    assert not nvme.backing.data[4096:4096 + length].any()
    assert nvme.backing.data[4095] == 0xEE and nvme.backing.data[4096 + length] == 0xEE


def test_errors_of_the_backing_come_back_as_errnos(nvme, channel):
    buffer = np.zeros(4096, dtype=np.uint8)
    cases = [(IO_READ, errno.EIO, errno.EIO), (IO_WRITE, errno.EIO, errno.EIO),
             (IO_WRITE, errno.EROFS, errno.EROFS), (IO_WRITE, errno.ENOSPC, errno.ENOSPC),
             (IO_DISCARD, errno.EIO, errno.EIO), (IO_FLUSH, errno.EIO, errno.EIO),
             (IO_READ, errno.EINVAL, errno.EINVAL)]
    for operation, injected, expected in cases:
        nvme.backing.inject_errors({operation}, -injected, count=1)
        pieces = [buffer] if operation in (IO_READ, IO_WRITE) else []
        length = 0 if operation == IO_FLUSH else 4096
        assert run(channel, [(operation, 0, length, pieces)]) == [-expected], operation
        assert run(channel, [(operation, 0, length, pieces)]) == [0]


def test_an_io_job_verifies_through_the_nvme_bdev_on_another_core(nvme):
    channel = nvme.open_channel(32)
    host = PollHost("nvme-job", idle_rounds=0)
    job = IoJob(channel, "verify", queue_depth=16, io_size=8192)
    host.add(job)
    host.start()
    time.sleep(0.5)
    job.drain()
    deadline = time.monotonic() + 10
    while job.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    host.stop()
    host.remove(job)
    channel.close()
    assert job.completed > 100
    assert job.failed == 0 and job.miscompares == 0


def test_a_4096_byte_block_backing():
    bdev = NvmeBdev(MallocBdev(1 << 20, block_size=4096), name="nvme4k")
    try:
        assert (bdev.driver.block_size, bdev.driver.num_blocks) == (4096, 256)
        channel = bdev.open_channel(8)
        data = bytes(range(256)) * 64
        channel.write(8192, data)
        assert channel.read(8192, len(data)) == data
        channel.close()
    finally:
        bdev.close()


# --- held to the backing bdev alone ---

requests = st.lists(st.tuples(
    st.sampled_from([IO_READ, IO_WRITE, IO_WRITE, IO_WRITE_ZEROES, IO_DISCARD, IO_FLUSH]),
    st.integers(0, 2000),                 # offset, in blocks
    st.integers(1, 600),                  # length, in blocks
    st.lists(st.integers(1, 5000), max_size=6),   # where the iovecs split the request
    st.integers(0, 2**32 - 1)), min_size=1, max_size=8)


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(batch=requests)
def test_the_nvme_bdev_does_what_its_backing_does(nvme, channel, batch):
    reference = MallocBdev(nvme.size)
    try:
        reference.data[:] = nvme.backing.data
        expected_channel = reference.open_channel(32)
        ours, theirs = [], []
        for operation, offset, blocks, cuts, seed in batch:
            offset, length = offset * 512, blocks * 512
            if operation == IO_FLUSH:
                offset = length = 0
            cuts = sorted({c for c in cuts if c < length})
            sizes = np.diff([0, *cuts, length]).tolist() if operation in (IO_READ, IO_WRITE) \
                else []
            data = np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8)
            for into in (ours, theirs):
                pieces = [data[a:b].copy() for a, b in zip([0, *cuts], [*cuts, length],
                                                        strict=True)] if sizes else []
                into.append((operation, offset, length, pieces))
        # One at a time: the order between requests in flight together is the bdev's own.
        for mine, other in zip(ours, theirs, strict=True):
            assert run(channel, [mine]) == run(expected_channel, [other])
            assert [p.tobytes() for p in mine[3]] == [p.tobytes() for p in other[3]]
        assert nvme.backing.data.tobytes() == reference.data.tobytes()
        expected_channel.close()
    finally:
        reference.close()
