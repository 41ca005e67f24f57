"""The file bdev: a file read and written through io_uring behind the bdev API, direct where
it can be, held to the plain-Python reference bdev."""

from __future__ import annotations

import errno
import logging
import os

import numpy as np
import pytest
from file_helpers import FILE_SIZE, Buffers, make_file, random_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import njit

from fastpath._numba import NJIT
from fastpath.devices.blk import (
    BLOCK_COMPLETION,
    BLOCK_IO,
    IO_DISCARD,
    IO_FLAG_FUA,
    IO_FLAG_MAY_UNMAP,
    IO_FLUSH,
    IO_READ,
    IO_WRITE,
    IO_WRITE_ZEROES,
)
from fastpath.spdk_like import bdev_poll, bdev_submit, open_bdev
from fastpath.spdk_like._file import ARG_STATE, STATE_NO_ZERO_RANGE, FileBdev, _direct_fd
from fastpath.testing.reference.bdev import ReferenceBdev


class Burst:
    """BLOCK_IO requests over page-aligned buffers (or buffers `skew` bytes past a page, which
    O_DIRECT refuses), kept alive with their iovecs."""

    def __init__(self, skew: int = 0):
        self.buffers = Buffers()
        self.skew = skew
        self.rows: list[tuple] = []
        self.pieces: list[list[np.ndarray]] = []

    def add(self, operation: int, offset: int, length: int, pieces: list[int] | None = None,
            flags: int = 0, seed: int = 0) -> None:
        if pieces is None:
            pieces = [length] if operation in (IO_READ, IO_WRITE) else []
        arrays = []
        for k, n in enumerate(pieces):
            arrays.append(self.buffers.buffer(n + self.skew,
                                              random_bytes(n + self.skew, seed + k))[self.skew:])
        iov = self.buffers.iovec(arrays) if arrays else 0
        self.pieces.append(arrays)
        self.rows.append((100 + len(self.rows), offset, length, iov, len(arrays), operation,
                          flags, 0))

    def ios(self) -> np.ndarray:
        return np.array(self.rows, dtype=BLOCK_IO)

    def data(self, k: int) -> bytes:
        return b"".join(p.tobytes() for p in self.pieces[k])


@pytest.fixture
def disk(disk_dir):
    """A file bdev of FILE_SIZE bytes on a disk file system, O_DIRECT."""
    bdev = open_bdev(f"file:{make_file(disk_dir)}")
    assert bdev.direct
    yield bdev
    bdev.close()


def test_a_spec_names_a_file_and_makes_it_with_a_size(disk_dir):
    path = disk_dir / "made.img"
    with open_bdev(f"file:{path},size=2M,block_size=4096", name="disk0") as bdev:
        assert isinstance(bdev, FileBdev)
        assert (bdev.name, bdev.size, bdev.block_size) == ("disk0", 2 << 20, 4096)
        assert os.path.getsize(path) == 2 << 20
        assert bdev.direct and bdev.reason == ""
        assert "O_DIRECT" in repr(bdev)
    with open_bdev(f"file:{path},direct=0", read_only=True) as bdev:
        assert not bdev.direct and bdev.read_only and bdev.size == 2 << 20
        assert "buffered" in repr(bdev)
    with pytest.raises(ValueError, match="read-only"):
        open_bdev(f"file:{path},size=4M", read_only=True)
    with pytest.raises(ValueError, match="neither yes"):
        open_bdev(f"file:{path},direct=maybe")
    with pytest.raises(FileNotFoundError):
        open_bdev(f"file:{disk_dir / 'missing.img'}")


def test_a_file_shorter_than_a_block_or_odd_sized_gives_whole_blocks(disk_dir):
    path = disk_dir / "odd.img"
    path.write_bytes(bytes(4096 + 100))
    with FileBdev(str(path), block_size=4096) as bdev:
        assert bdev.size == 4096
    path.write_bytes(bytes(100))
    with pytest.raises(ValueError, match="blocks"):
        FileBdev(str(path))


def test_writes_of_several_iovecs_read_back_at_their_offsets(disk):
    channel = disk.open_channel(depth=16)
    burst = Burst()
    layout = [(0, [512]), (4096, [512, 1024, 512]), (65536, [4096] * 5),
              (FILE_SIZE - 512, [512])]
    for k, (offset, pieces) in enumerate(layout):
        burst.add(IO_WRITE, offset, sum(pieces), pieces, seed=10 * k)
    assert (channel.run(burst.ios())["status"] == 0).all()
    for k, (offset, pieces) in enumerate(layout):
        assert channel.read(offset, sum(pieces)) == burst.data(k)
        assert os.pread(disk.backing.buffered_fd, sum(pieces), offset) == burst.data(k)
    stats = disk.statistics()
    assert (stats.write_ops, stats.write_bytes) == (4, sum(sum(p) for _, p in layout))


def test_buffers_o_direct_refuses_go_through_the_page_cache_coherently(disk):
    # A guest's buffers need not be aligned: such requests take the buffered descriptor, and
    # direct reads see what they wrote (and the other way round).
    channel = disk.open_channel()
    skewed = Burst(skew=8)
    skewed.add(IO_WRITE, 8192, 4096, [4096], seed=1)
    skewed.add(IO_WRITE, 0, 1536, [700, 836], seed=2)     # lengths no multiple of 512
    assert (channel.run(skewed.ios())["status"] == 0).all()
    aligned = Burst()
    aligned.add(IO_READ, 8192, 4096)
    aligned.add(IO_READ, 0, 1536, [1024, 512])
    aligned.add(IO_WRITE, 12288, 4096, seed=3)
    assert (channel.run(aligned.ios())["status"] == 0).all()
    assert aligned.data(0) == skewed.data(0)
    assert aligned.data(1) == skewed.data(1)
    back = Burst(skew=8)
    back.add(IO_READ, 12288, 4096)
    assert (channel.run(back.ios())["status"] == 0).all()
    assert back.data(0) == aligned.data(2)


def test_requests_go_direct_when_every_piece_suits_o_direct(disk):
    channel = disk.open_channel()
    burst = Burst()
    burst.add(IO_READ, 0, 2048, [1024, 1024])
    burst.add(IO_READ, 0, 1024, [700, 324])
    skewed = Burst(skew=8)
    skewed.add(IO_READ, 0, 1024)
    ios, skewed_ios = burst.ios(), skewed.ios()
    assert _direct_fd(channel.row, ios[0]) == disk.backing.fd
    assert _direct_fd(channel.row, ios[1]) == disk.backing.buffered_fd
    assert _direct_fd(channel.row, skewed_ios[0]) == disk.backing.buffered_fd


def test_many_requests_in_flight_on_several_channels(disk):
    channels = [disk.open_channel(depth=64) for _ in range(2)]
    bursts = []
    for c, channel in enumerate(channels):
        burst = Burst()
        for k in range(200):
            block = c * 200 + k
            burst.add(IO_WRITE, block * 2048, 2048, [1024, 1024], seed=block * 2)
        done = channel.run(burst.ios())
        assert (done["status"] == 0).all()
        assert sorted(done["tag"].tolist()) == list(range(100, 300))
        bursts.append(burst)
    content = os.pread(disk.backing.buffered_fd, 400 * 2048, 0)
    assert content == b"".join(b.data(k) for b in bursts for k in range(200))


def test_a_channel_takes_no_more_than_its_depth_until_it_is_polled(disk):
    channel = disk.open_channel(depth=4)
    burst = Burst()
    for k in range(10):
        burst.add(IO_READ, k * 512, 512)
    ios = burst.ios()
    assert channel.submit(ios) == 4
    assert channel.submit(ios, 4) == 0
    completions = np.zeros(10, dtype=BLOCK_COMPLETION)
    reaped = 0
    while reaped < 4:
        reaped += channel.poll(completions[reaped:])
    assert sorted(completions["tag"][:4].tolist()) == [100, 101, 102, 103]
    assert channel.submit(ios, 4) == 4


def test_flush_and_writes_with_fua_complete(disk):
    channel = disk.open_channel()
    burst = Burst()
    burst.add(IO_WRITE, 0, 4096, flags=IO_FLAG_FUA, seed=4)
    burst.add(IO_FLUSH, 0, 0)
    burst.add(IO_WRITE_ZEROES, 8192, 4096, flags=IO_FLAG_FUA)
    assert channel.run(burst.ios())["status"].tolist() == [0, 0, 0]
    assert channel.read(0, 4096) == burst.data(0)
    assert disk.statistics().flush_ops == 1


def _blocks(bdev) -> int:
    return os.fstat(bdev.backing.buffered_fd).st_blocks


def test_discard_punches_a_hole_and_write_zeroes_zeroes_in_place(disk):
    channel = disk.open_channel()
    channel.write(0, b"\x5a" * FILE_SIZE)
    channel.flush()
    allocated = _blocks(disk)
    channel.write_zeroes(65536, 65536)
    assert _blocks(disk) == allocated            # FALLOC_FL_ZERO_RANGE keeps the blocks
    channel.discard(131072, 65536)
    assert _blocks(disk) < allocated             # a hole
    assert channel.read(65536, 131072) == bytes(131072)
    assert channel.read(0, 65536) == b"\x5a" * 65536
    assert channel.read(196608, 4096) == b"\x5a" * 4096
    assert os.path.getsize(disk.path) == FILE_SIZE


def test_write_zeroes_that_may_unmap_punch_a_hole(disk):
    channel = disk.open_channel()
    channel.write(0, b"\x5a" * 131072)
    channel.flush()
    allocated = _blocks(disk)
    burst = Burst()
    burst.add(IO_WRITE_ZEROES, 0, 65536, flags=IO_FLAG_MAY_UNMAP)
    assert channel.run(burst.ios())["status"].tolist() == [0]
    assert _blocks(disk) < allocated
    assert channel.read(0, 131072) == bytes(65536) + b"\x5a" * 65536


def test_write_zeroes_punch_holes_where_the_file_system_cannot_zero_in_place(tmpfs_dir):
    with FileBdev(str(make_file(tmpfs_dir, fill=0x33))) as bdev:
        channel = bdev.open_channel()
        burst = Burst()
        burst.add(IO_WRITE_ZEROES, 0, 4096)
        burst.add(IO_WRITE_ZEROES, 8192, 4096, flags=IO_FLAG_FUA)
        assert channel.run(burst.ios())["status"].tolist() == [0, 0]
        # The refusal is remembered: later write-zeroes punch holes at once.
        assert int(channel.row[ARG_STATE]) & STATE_NO_ZERO_RANGE
        channel.write_zeroes(16384, 4096)
        assert channel.read(0, 20480) == (bytes(4096) + b"\x33" * 4096 + bytes(4096)
                                          + b"\x33" * 4096 + bytes(4096))


def test_a_file_truncated_under_the_bdev_fails_reads_past_its_end(disk):
    channel = disk.open_channel()
    os.truncate(disk.path, FILE_SIZE // 2)
    burst = Burst()
    burst.add(IO_READ, 0, 4096)
    burst.add(IO_READ, FILE_SIZE // 2 - 2048, 4096)     # short: the file ends in it
    burst.add(IO_READ, FILE_SIZE - 4096, 4096)           # past the end: nothing
    assert channel.run(burst.ios())["status"].tolist() == [0, -errno.EIO, -errno.EIO]
    assert disk.statistics().errors == 2


def test_the_bdev_layer_checks_come_first(disk):
    channel = disk.open_channel()
    burst = Burst()
    burst.add(IO_READ, 100, 512)                         # misaligned offset
    burst.add(IO_WRITE, FILE_SIZE, 512)                  # past the end
    burst.add(IO_READ, 0, 512)
    assert channel.run(burst.ios())["status"].tolist() == [-errno.EINVAL, -errno.EINVAL, 0]
    disk.inject_errors({IO_WRITE}, status=-errno.ENOSPC)
    with pytest.raises(OSError) as failed:
        channel.write(0, bytes(512))
    assert failed.value.errno == errno.ENOSPC


def test_a_read_only_file_bdev_refuses_writes(disk_dir):
    with FileBdev(str(make_file(disk_dir, fill=1)), read_only=True) as bdev:
        channel = bdev.open_channel()
        burst = Burst()
        for operation in (IO_WRITE, IO_DISCARD, IO_WRITE_ZEROES, IO_READ, IO_FLUSH):
            burst.add(operation, 0, 0 if operation == IO_FLUSH else 512)
        rofs = -errno.EROFS
        assert channel.run(burst.ios())["status"].tolist() == [rofs, rofs, rofs, 0, 0]
        assert burst.data(3) == b"\x01" * 512


def test_buffered_io_is_logged_with_its_reason(disk_dir, monkeypatch, caplog):
    real_open = os.open

    def refusing_open(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    with caplog.at_level(logging.INFO, logger="fastpath.spdk_like"):
        bdev = FileBdev(str(make_file(disk_dir)), name="disk1")
    monkeypatch.undo()
    assert not bdev.direct
    assert any(r.getMessage().startswith("disk1: O_DIRECT not supported on ")
               and r.getMessage().endswith(": buffered I/O") for r in caplog.records)
    channel = bdev.open_channel()
    channel.write(512, b"buffered" * 64)
    assert channel.read(512, 512) == b"buffered" * 64
    bdev.close()


@njit(**NJIT)
def _serve(channel, ios, completions, timeout_polls):
    # A compiled caller: submit every request and reap them all, no Python in between.
    submitted = 0
    reaped = 0
    polls = 0
    while reaped < ios.shape[0] and polls < timeout_polls:
        if submitted < ios.shape[0]:
            submitted += bdev_submit(channel, ios, submitted, ios.shape[0] - submitted)
        reaped += bdev_poll(channel, completions[reaped:], completions.shape[0] - reaped)
        polls += 1
    return reaped


def test_compiled_code_submits_and_polls_through_the_channel_row(disk):
    channel = disk.open_channel(depth=8)
    burst = Burst()
    for k in range(100):
        burst.add(IO_WRITE, (k % 64) * 4096, 4096, seed=k)
    ios = burst.ios()
    completions = np.zeros(len(ios), dtype=BLOCK_COMPLETION)
    assert _serve(channel.row, ios, completions, 50_000_000) == 100
    assert sorted(completions["tag"].tolist()) == list(range(100, 200))
    assert (completions["status"] == 0).all()
    assert os.pread(disk.backing.buffered_fd, 4096, 0) == burst.data(64)


# Random mixes of good and bad requests, the file bdev against the reference bdev.
_operation = st.sampled_from([IO_READ, IO_WRITE, IO_FLUSH, IO_DISCARD, IO_WRITE_ZEROES])


@st.composite
def _request(draw, size):
    operation = draw(_operation)
    aligned = draw(st.booleans())
    offset = draw(st.integers(0, size // 512)) * 512 if aligned else draw(st.integers(0, size))
    length = draw(st.integers(1, 8)) * 512 if aligned else draw(st.integers(0, 4096))
    pieces = []
    if operation in (IO_READ, IO_WRITE):
        left = length
        while left > 0:
            piece = draw(st.sampled_from([512, 1024, draw(st.integers(1, left))]))
            piece = min(piece, left)
            pieces.append(piece)
            left -= piece
    flags = draw(st.sampled_from([0, IO_FLAG_FUA, IO_FLAG_MAY_UNMAP]))
    return operation, offset, length, pieces, flags, draw(st.integers(0, 8))


@settings(max_examples=40, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(requests=st.lists(_request(size=1 << 15), min_size=1, max_size=24))
def test_the_file_bdev_does_what_the_reference_bdev_does(disk_dir, requests):
    size = 1 << 15
    reference = ReferenceBdev(size, 512)
    path = disk_dir / "mixed.img"
    path.unlink(missing_ok=True)
    with FileBdev(str(path), size=size) as bdev:
        channel = bdev.open_channel(depth=len(requests))
        # One request per burst, so that each sees the disk its predecessors left.
        for k, (operation, offset, length, pieces, flags, skew) in enumerate(requests):
            burst = Burst(skew=skew)
            burst.add(operation, offset, length, pieces, flags=flags, seed=k)
            copies = [bytearray(p.tobytes()) for p in burst.pieces[0]]
            expected = reference.execute(operation, offset, length, copies)
            done = channel.run(burst.ios())
            assert int(done[0]["status"]) == expected
            if operation == IO_READ and expected == 0:
                assert [p.tobytes() for p in burst.pieces[0]] == [bytes(c) for c in copies]
        assert path.read_bytes() == bytes(reference.disk)
