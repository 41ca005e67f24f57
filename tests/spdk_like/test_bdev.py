"""The bdev layer: one asynchronous API over every kind, its checks, statistics and error
injection, held to the plain-Python reference bdev."""

from __future__ import annotations

import errno
import mmap
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import njit

from fastpath._numba import NJIT
from fastpath.devices.blk import (
    BLOCK_COMPLETION,
    BLOCK_IO,
    IO_DISCARD,
    IO_FLUSH,
    IO_READ,
    IO_WRITE,
    IO_WRITE_ZEROES,
    IOVEC,
)
from fastpath.spdk_like import (
    BDEV_KINDS,
    MallocBdev,
    NullBdev,
    bdev_poll,
    bdev_submit,
    open_bdev,
    parse_size,
)
from fastpath.testing.reference.bdev import ReferenceBdev


class Requests:
    """A burst of requests and the buffers and iovecs they name, kept alive together."""

    def __init__(self):
        self.specs: list[tuple[int, int, int, list[int]]] = []
        self.buffers: list[np.ndarray] = []

    def add(self, operation: int, offset: int, length: int,
            pieces: list[int] | None = None) -> None:
        if pieces is None:
            pieces = [length] if operation in (IO_READ, IO_WRITE) else []
        self.specs.append((operation, offset, length, pieces))

    def build(self, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        ios = np.zeros(len(self.specs), dtype=BLOCK_IO)
        self.iovecs = []
        for k, (operation, offset, length, pieces) in enumerate(self.specs):
            iov = np.zeros(max(len(pieces), 1), dtype=IOVEC)
            for j, piece in enumerate(pieces):
                buffer = rng.integers(0, 256, piece, dtype=np.uint8)
                self.buffers.append(buffer)
                iov[j] = (buffer.ctypes.data, piece)
            self.iovecs.append(iov)
            ios[k] = (1000 + k, offset, length, iov.ctypes.data if pieces else 0, len(pieces),
                      operation, 0, 0)
        return ios

    def pieces_of(self, k: int) -> list[np.ndarray]:
        first = sum(len(p) for _, _, _, p in self.specs[:k])
        return self.buffers[first:first + len(self.specs[k][3])]


def test_specs_name_kinds_sizes_and_options():
    assert parse_size("4096") == 4096 and parse_size("64M") == 64 << 20
    assert parse_size("1GiB") == 1 << 30 and parse_size("512k") == 512 << 10
    bdev = open_bdev("malloc:1M,block_size=4096")
    assert isinstance(bdev, MallocBdev) and bdev.block_size == 4096
    assert bdev.num_blocks == 256
    bdev.close()
    assert isinstance(open_bdev("null:1G", read_only=True), NullBdev)
    assert list(BDEV_KINDS)[:2] == ["null", "malloc"]


@pytest.mark.parametrize("spec, message", [
    ("floppy:1M", "no bdev kind 'floppy'"),
    ("malloc:", "needs SIZE"),
    ("malloc:lots", "not a size"),
    ("malloc:1M,colour=red", "not an option of malloc"),
    ("malloc:1000", "whole number of 512-byte blocks"),
    ("malloc:1M,block_size=1024", "512 or 4096"),
])
def test_a_bad_spec_says_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        open_bdev(spec)


@pytest.mark.parametrize("block_size", [512, 4096])
def test_malloc_reads_back_what_was_written_across_iovecs(block_size):
    with MallocBdev(1 << 20, block_size=block_size) as bdev:
        channel = bdev.open_channel(16)
        requests = Requests()
        requests.add(IO_WRITE, 3 * block_size, 3 * block_size,
                     [block_size // 2, 2 * block_size, block_size // 2])
        requests.add(IO_READ, 3 * block_size, 3 * block_size, [3 * block_size])
        ios = requests.build()
        done = channel.run(ios[:1])
        assert done["status"].tolist() == [0] and done["tag"].tolist() == [1000]
        channel.run(ios[1:])
        written = np.concatenate(requests.pieces_of(0))
        assert np.array_equal(requests.pieces_of(1)[0], written)
        assert bytes(bdev.data[3 * block_size:6 * block_size]) == written.tobytes()


def test_the_malloc_disk_is_a_memfd_another_mapping_sees():
    with MallocBdev(1 << 16) as bdev:
        bdev.open_channel().write(512, b"\xab" * 512)
        with mmap.mmap(bdev.fd, 1 << 16) as other:
            assert other[512:1024] == b"\xab" * 512 and other[:512] == bytes(512)


def test_the_malloc_disk_has_its_memory_when_made():
    with MallocBdev(4 << 20) as bdev:
        assert os.fstat(bdev.fd).st_blocks * 512 >= 4 << 20


def test_a_malloc_disk_larger_than_the_memory_available_is_refused_at_once():
    with pytest.raises(OSError, match="bytes of memory asked for") as refused:
        MallocBdev(1 << 50)
    assert refused.value.errno == errno.ENOMEM


@pytest.mark.parametrize("offset, length, pieces", [
    (1, 512, [512]),            # unaligned offset
    (0, 100, [100]),            # not whole blocks
    (0, 0, [0]),                # nothing
    (1 << 20, 512, [512]),      # past the end
    ((1 << 20) - 512, 1024, [1024]),   # crosses the end
    (512, (1 << 64) - 512, [512]),     # offset + length overflows
    (0, 1024, [512]),           # iovecs shorter than the request
    (0, 512, []),               # no iovecs
])
def test_requests_out_of_range_or_misaligned_complete_with_einval(offset, length, pieces):
    with MallocBdev(1 << 20) as bdev:
        channel = bdev.open_channel()
        requests = Requests()
        requests.add(IO_WRITE, offset, length, pieces)
        requests.add(IO_WRITE, 0, 512)      # a good one beside it still goes through
        ios = requests.build()
        done = channel.run(ios)
        assert done["status"].tolist() == [-errno.EINVAL, 0]
        assert bytes(bdev.data[512:]) == bytes((1 << 20) - 512)
        assert bdev.statistics().errors == 1 and bdev.statistics().write_ops == 1


def test_a_read_only_bdev_refuses_writes_discards_and_write_zeroes():
    with MallocBdev(1 << 16, read_only=True) as bdev:
        channel = bdev.open_channel()
        requests = Requests()
        for operation in (IO_WRITE, IO_DISCARD, IO_WRITE_ZEROES, IO_READ, IO_FLUSH):
            requests.add(operation, 0, 0 if operation == IO_FLUSH else 512)
        done = channel.run(requests.build())
        rofs = -errno.EROFS
        assert done["status"].tolist() == [rofs, rofs, rofs, 0, 0]


def test_discard_and_write_zeroes_read_back_as_zeros():
    with MallocBdev(1 << 16) as bdev:
        channel = bdev.open_channel()
        channel.write(0, b"\x55" * 4096)
        channel.discard(512, 512)
        channel.write_zeroes(2048, 1024)
        data = channel.read(0, 4096)
        assert data == b"\x55" * 512 + bytes(512) + b"\x55" * 1024 + bytes(1024) + \
            b"\x55" * 1024


def test_a_channel_takes_no_more_than_its_depth_until_it_is_polled():
    with NullBdev(name="null", size=1 << 20) as bdev:
        channel = bdev.open_channel(depth=4)
        requests = Requests()
        for k in range(10):
            requests.add(IO_READ, k * 512, 512)
        ios = requests.build()
        assert channel.submit(ios) == 4 and channel.in_flight == 4
        assert channel.submit(ios, 4) == 0
        completions = np.zeros(3, dtype=BLOCK_COMPLETION)
        assert channel.poll(completions) == 3 and channel.in_flight == 1
        assert completions["tag"].tolist() == [1000, 1001, 1002]
        assert channel.submit(ios, 4) == 3


def test_null_completes_everything_and_leaves_buffers_alone():
    with NullBdev(name="null", size=1 << 30, block_size=4096) as bdev:
        channel = bdev.open_channel(64)
        requests = Requests()
        for k in range(32):
            requests.add(IO_READ, k * 4096, 4096)
        ios = requests.build()
        before = [b.copy() for b in requests.buffers]
        assert (channel.run(ios)["status"] == 0).all()
        assert all(np.array_equal(a, b) for a, b in zip(before, requests.buffers, strict=True))
        assert bdev.statistics().read_bytes == 32 * 4096


def test_injected_errors_fail_the_chosen_operations_then_stop():
    with MallocBdev(1 << 16) as bdev:
        channel = bdev.open_channel()
        bdev.inject_errors({IO_WRITE}, status=-errno.ENOSPC, count=2)
        requests = Requests()
        for operation in (IO_READ, IO_WRITE, IO_WRITE, IO_WRITE):
            requests.add(operation, 0, 512)
        done = channel.run(requests.build())
        assert done["status"].tolist() == [0, -errno.ENOSPC, -errno.ENOSPC, 0]
        with pytest.raises(ValueError, match="negative errno"):
            bdev.inject_errors(status=5)


def test_statistics_add_up_over_channels_open_and_closed():
    with MallocBdev(1 << 16) as bdev:
        first, second = bdev.open_channel(), bdev.open_channel()
        first.write(0, bytes(1024))
        second.read(0, 512)
        second.flush()
        first.close()
        stats = bdev.statistics()
        assert (stats.write_ops, stats.write_bytes, stats.read_ops, stats.flush_ops) == \
            (1, 1024, 1, 1)
        with pytest.raises(ValueError, match="closed"):
            first.read(0, 512)


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


def test_compiled_code_submits_and_polls_through_the_channel_row():
    with MallocBdev(1 << 20) as bdev:
        channel = bdev.open_channel(depth=8)
        requests = Requests()
        for k in range(100):
            requests.add(IO_WRITE, (k % 64) * 512, 512)
        ios = requests.build()
        completions = np.zeros(len(ios), dtype=BLOCK_COMPLETION)
        assert _serve(channel.row, ios, completions, 10_000) == 100
        assert sorted(completions["tag"].tolist()) == list(range(1000, 1100))
        assert bytes(bdev.data[:512]) == requests.buffers[64].tobytes()


# Random mixes of good and bad requests, malloc against the reference bdev.
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
            piece = draw(st.integers(1, left))
            pieces.append(piece)
            left -= piece
        if draw(st.integers(0, 9)) == 0:
            pieces.append(draw(st.integers(1, 64)))   # iovecs that do not add up
    return operation, offset, length, pieces


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block_size=st.sampled_from([512, 4096]), read_only=st.booleans(),
       requests=st.lists(_request(size=1 << 15), min_size=1, max_size=24))
def test_malloc_does_what_the_reference_bdev_does(block_size, read_only, requests):
    size = 1 << 15
    reference = ReferenceBdev(size, block_size, read_only=read_only)
    with MallocBdev(size, block_size=block_size, read_only=read_only) as bdev:
        channel = bdev.open_channel(depth=len(requests))
        # One request per burst, so that each sees the disk its predecessors left.
        for k, (operation, offset, length, pieces) in enumerate(requests):
            burst = Requests()
            burst.add(operation, offset, length, pieces)
            ios = burst.build(seed=k)
            copies = [bytearray(b.tobytes()) for b in burst.buffers]
            expected = reference.execute(operation, offset, length, copies)
            done = channel.run(ios)
            assert int(done[0]["status"]) == expected
            if operation == IO_READ and expected == 0:
                assert [b.tobytes() for b in burst.buffers] == [bytes(c) for c in copies]
        assert bytes(bdev.data) == bytes(reference.disk)
