"""The core's io_uring (through fastpath.spdk_like._uring) and the O_DIRECT opening of a bdev's
file: reads and writes of several iovecs, many in flight, a full ring, fsync, fallocate, errors
as completions, a kernel driving the ring without the GIL."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time

import numpy as np
import pytest
from file_helpers import FILE_SIZE, Buffers, file_system_of, make_file, random_bytes
from numba import njit

from fastpath._numba import NJIT
from fastpath.devices.blk import IOVEC
from fastpath.spdk_like import _file
from fastpath.spdk_like._file import open_backing_file
from fastpath.spdk_like._uring import (
    URING_DATASYNC,
    URING_PUNCH_HOLE,
    URING_ZERO_RANGE,
    Uring,
    uring_create,
    uring_destroy,
    uring_outstanding,
    uring_queue_readv,
    uring_queue_writev,
    uring_reap,
    uring_space,
    uring_submit,
)

SECOND = 1_000_000_000


def _drain(ring: Uring, expected: int, wait_ns: int = 5 * SECOND) -> dict[int, int]:
    """{user_data: result} of `expected` completions."""
    user_data = np.zeros(64, dtype=np.uint64)
    results = np.zeros(64, dtype=np.int32)
    done: dict[int, int] = {}
    deadline = time.monotonic() + 10
    while len(done) < expected:
        got = ring.reap(user_data, results, wait_ns)
        assert got >= 0, os.strerror(-got)
        for k in range(got):
            assert int(user_data[k]) not in done, "a request completed twice"
            done[int(user_data[k])] = int(results[k])
        assert time.monotonic() < deadline, f"{expected - len(done)} completions missing"
    assert ring.outstanding == 0
    return done


def test_a_ring_refuses_what_the_kernel_refuses():
    with pytest.raises(OSError) as refused:
        Uring(0)
    assert refused.value.errno == errno.EINVAL
    with pytest.raises(OSError) as refused:
        Uring(8, 1 << 31)
    assert refused.value.errno == errno.EINVAL


def test_a_ring_holds_as_many_requests_as_its_completion_queue():
    with Uring(8) as ring:
        assert ring.capacity == 16
        assert ring.space == 8          # the submission queue's slots first
        assert ring.outstanding == 0
        assert ring.handle != 0
    with pytest.raises(ValueError):
        ring.submit()


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
def test_writes_of_several_iovecs_read_back_at_their_offsets(disk_dir, direct):
    backing = open_backing_file(str(make_file(disk_dir)), direct=direct)
    assert backing.direct == direct
    block = backing.offset_alignment if direct else 512
    buffers = Buffers()
    # (offset, piece lengths): pieces of whole blocks, so that O_DIRECT takes them too.
    layout = [(0, [block]), (4 * block, [block, 2 * block, block]),
              (64 * block, [3 * block] * 5), (FILE_SIZE - block, [block])]
    written = {}
    with Uring(16) as ring:
        for tag, (offset, lengths) in enumerate(layout):
            pieces = [buffers.buffer(n, random_bytes(n, 10 * tag + k))
                      for k, n in enumerate(lengths)]
            written[offset] = b"".join(p.tobytes() for p in pieces)
            assert ring.writev(backing.fd, buffers.iovec(pieces), len(pieces), offset, tag) == 0
        assert ring.outstanding == len(layout)
        assert ring.submit() == len(layout)
        done = _drain(ring, len(layout))
        assert done == {tag: sum(lengths) for tag, (_, lengths) in enumerate(layout)}
        reads = []
        for tag, (offset, lengths) in enumerate(layout):
            # Read back in other pieces than were written.
            pieces = [buffers.buffer(n) for n in reversed(lengths)]
            reads.append(pieces)
            assert ring.readv(backing.fd, buffers.iovec(pieces), len(pieces), offset,
                              100 + tag) == 0
        ring.submit()
        done = _drain(ring, len(layout))
    for tag, (offset, lengths) in enumerate(layout):
        assert done[100 + tag] == sum(lengths)
        assert b"".join(p.tobytes() for p in reads[tag]) == written[offset]
    assert os.pread(backing.buffered_fd, 64 * block, 0)[:block] == written[0]
    backing.close()


def test_many_requests_in_flight_each_complete_once(disk_dir):
    backing = open_backing_file(str(make_file(disk_dir)))
    block = 4096
    count = FILE_SIZE // block
    buffers = Buffers()
    data = [buffers.buffer(block, random_bytes(block, k)) for k in range(count)]
    with Uring(32) as ring:
        queued = 0
        done: dict[int, int] = {}
        user_data = np.zeros(16, dtype=np.uint64)
        results = np.zeros(16, dtype=np.int32)
        # More requests than the ring holds: queue until it refuses, submit, reap, go on.
        while len(done) < count:
            while queued < count:
                code = ring.writev(backing.fd, buffers.iovec([data[queued]]), 1,
                                   queued * block, queued)
                if code == -errno.EBUSY:
                    break
                assert code == 0
                queued += 1
            assert ring.outstanding <= ring.capacity
            assert ring.submit() >= 0
            got = ring.reap(user_data, results, SECOND)
            for k in range(got):
                assert int(user_data[k]) not in done
                done[int(user_data[k])] = int(results[k])
    assert done == {k: block for k in range(count)}
    with open(backing.path, "rb") as f:
        assert f.read() == b"".join(d.tobytes() for d in data)
    backing.close()


def test_a_full_ring_refuses_a_request_and_keeps_none_of_it(disk_dir):
    fd = os.open(make_file(disk_dir, fill=7), os.O_RDWR)
    buffers = Buffers()
    target = buffers.buffer(512)
    iov = buffers.iovec([target])
    with Uring(4) as ring:
        # The submission queue fills first (4 slots) ...
        for k in range(4):
            assert ring.readv(fd, iov, 1, 0, k) == 0
        assert ring.space == 0
        assert ring.readv(fd, iov, 1, 0, 99) == -errno.EBUSY
        assert ring.fsync(fd, 0, 99) == -errno.EBUSY
        assert ring.fallocate(fd, URING_PUNCH_HOLE, 0, 512, 99) == -errno.EBUSY
        assert ring.outstanding == 4
        assert ring.submit() == 4
        # ... then the completion queue's room: 8 outstanding at most, submitted or not.
        for k in range(4, 8):
            assert ring.readv(fd, iov, 1, 0, k) == 0
        assert ring.submit() == 4
        assert ring.space == 0
        assert ring.writev(fd, iov, 1, 0, 99) == -errno.EBUSY
        done = _drain(ring, 8)
        assert sorted(done) == list(range(8)) and set(done.values()) == {512}
        assert ring.space == 4
    os.close(fd)


def test_fsync_fdatasync_and_synced_writes_complete(disk_dir):
    fd = os.open(make_file(disk_dir), os.O_RDWR)
    buffers = Buffers()
    data = buffers.buffer(4096, random_bytes(4096, 5))
    iov = buffers.iovec([data])
    with Uring(8) as ring:
        assert ring.fsync(fd, 0, 1) == 0
        assert ring.fsync(fd, URING_DATASYNC, 2) == 0
        assert ring.writev(fd, iov, 1, 8192, 3, URING_DATASYNC) == 0
        assert ring.fsync(fd, 0x80, 4) == -errno.EINVAL
        assert ring.writev(fd, iov, 1, 0, 4, 0x80) == -errno.EINVAL
        ring.submit()
        assert _drain(ring, 3) == {1: 0, 2: 0, 3: 4096}
    assert os.pread(fd, 4096, 8192) == data.tobytes()
    os.close(fd)


@pytest.mark.parametrize("mode", [URING_PUNCH_HOLE, URING_ZERO_RANGE],
                         ids=["punch_hole", "zero_range"])
def test_fallocate_ranges_read_back_as_zeros_and_keep_the_size(disk_dir, mode):
    path = make_file(disk_dir, fill=0xA5)
    fd = os.open(path, os.O_RDWR)
    with Uring(8) as ring:
        assert ring.fallocate(fd, mode, 8192, 3 * 4096, 5) == 0
        ring.submit()
        assert _drain(ring, 1) == {5: 0}
    assert os.fstat(fd).st_size == FILE_SIZE
    content = os.pread(fd, FILE_SIZE, 0)
    assert content[8192:8192 + 3 * 4096] == bytes(3 * 4096)
    assert content[:8192] == b"\xa5" * 8192
    assert content[8192 + 3 * 4096:] == b"\xa5" * (FILE_SIZE - 8192 - 3 * 4096)
    os.close(fd)


def test_a_mode_the_file_system_lacks_completes_with_eopnotsupp(tmpfs_dir):
    # tmpfs punches holes but has no ZERO_RANGE: the caller's cue to fall back.
    fd = os.open(make_file(tmpfs_dir, fill=1), os.O_RDWR)
    with Uring(8) as ring:
        assert ring.fallocate(fd, URING_ZERO_RANGE, 0, 4096, 1) == 0
        assert ring.fallocate(fd, URING_PUNCH_HOLE, 4096, 4096, 2) == 0
        assert ring.fallocate(fd, 3, 0, 4096, 3) == -errno.EINVAL
        ring.submit()
        assert _drain(ring, 2) == {1: -errno.EOPNOTSUPP, 2: 0}
    assert os.pread(fd, 8192, 0) == b"\x01" * 4096 + bytes(4096)
    os.close(fd)


def test_faults_come_back_as_completions(disk_dir):
    path = make_file(disk_dir)
    fd = os.open(path, os.O_RDWR)
    read_only = os.open(path, os.O_RDONLY)
    buffers = Buffers()
    iov = buffers.iovec([buffers.buffer(4096)])
    bad_iov = np.array([(0x10, 4096)], dtype=IOVEC)
    with Uring(16) as ring:
        assert ring.readv(1 << 20, iov, 1, 0, 1) == 0                   # no such fd
        assert ring.readv(fd, bad_iov.ctypes.data, 1, 0, 2) == 0        # buffer unmapped
        assert ring.readv(fd, 0x10, 1, 0, 3) == 0                       # iovecs unmapped
        assert ring.writev(read_only, iov, 1, 0, 4) == 0                # not open to write
        assert ring.readv(fd, iov, 100_000, 0, 5) == 0                  # iovcnt > IOV_MAX
        assert ring.fallocate(fd, URING_PUNCH_HOLE, 1 << 63, 4096, 6) == 0
        assert ring.fsync(-1, 0, 7) == 0
        assert ring.submit() == 7
        done = _drain(ring, 7)
    assert done == {1: -errno.EBADF, 2: -errno.EFAULT, 3: -errno.EFAULT, 4: -errno.EBADF,
                    5: -errno.EINVAL, 6: -errno.EINVAL, 7: -errno.EBADF}
    os.close(fd)
    os.close(read_only)


def test_a_misaligned_direct_read_fails_alone(disk_dir):
    # Written blocks: a hole's read is zeros from the kernel, whatever its alignment.
    backing = open_backing_file(str(make_file(disk_dir, fill=0x11)))
    assert backing.direct
    buffers = Buffers()
    page = buffers.buffer(8192)
    with Uring(8) as ring:
        aligned = buffers.iovec([page[:4096]])
        assert ring.readv(backing.fd, aligned, 1, 0, 1) == 0
        assert ring.readv(backing.fd, aligned, 1, 1, 2) == 0                    # offset
        assert ring.readv(backing.fd, buffers.iovec([page[1:4097]]), 1, 0, 3) == 0
        ring.submit()
        assert _drain(ring, 3) == {1: 4096, 2: -errno.EINVAL, 3: -errno.EINVAL}
    backing.close()


def test_a_reap_waits_only_for_what_is_outstanding(disk_dir):
    fd = os.open(make_file(disk_dir), os.O_RDWR)
    user_data = np.zeros(4, dtype=np.uint64)
    results = np.zeros(4, dtype=np.int32)
    with Uring(8) as ring:
        start = time.monotonic()
        assert ring.reap(user_data, results, 10 * SECOND) == 0         # nothing to wait for
        assert time.monotonic() - start < 1
        # A waiting reap submits what is queued first.
        assert ring.fsync(fd, 0, 42) == 0
        assert ring.reap(user_data, results, 10 * SECOND) == 1
        assert (int(user_data[0]), int(results[0])) == (42, 0)
        # Nothing completes on an empty pipe: the wait ends at its timeout.
        reader, writer = os.pipe()
        buffers = Buffers()
        target = buffers.buffer(16)
        assert ring.readv(reader, buffers.iovec([target]), 1, (1 << 64) - 1, 7) == 0
        start = time.monotonic()
        assert ring.reap(user_data, results, SECOND // 10) == 0
        assert time.monotonic() - start >= 0.09
        os.write(writer, b"now")
        assert ring.reap(user_data, results, 10 * SECOND) == 1
        assert (int(user_data[0]), int(results[0])) == (7, 3)
        assert target[:3].tobytes() == b"now"
    os.close(fd)
    os.close(reader)
    os.close(writer)


def test_closing_a_ring_waits_for_what_is_in_flight(disk_dir):
    path = make_file(disk_dir)
    fd = os.open(path, os.O_RDWR)
    buffers = Buffers()
    data = buffers.buffer(FILE_SIZE, random_bytes(FILE_SIZE, 3))
    ring = Uring(64)
    for k in range(16):
        piece = data[k * 65536:(k + 1) * 65536]
        assert ring.writev(fd, buffers.iovec([piece]), 1, k * 65536, k) == 0
    ring.submit()
    for k in range(16, 32):     # queued, never submitted: the close submits them
        assert ring.fsync(fd, 0, k) == 0
    ring.close()
    assert os.pread(fd, FILE_SIZE, 0) == data.tobytes()
    with pytest.raises(ValueError):
        ring.submit()
    ring.close()
    os.close(fd)


# --- opening a bdev's file ---

def test_direct_io_where_the_file_system_allows_it(disk_dir):
    path = make_file(disk_dir)
    backing = open_backing_file(str(path))
    assert backing.direct and backing.reason == ""
    assert backing.fd != backing.buffered_fd
    assert os.get_blocking(backing.fd)
    assert backing.size == FILE_SIZE
    assert backing.offset_alignment in (512, 1024, 2048, 4096)
    assert 1 <= backing.memory_alignment <= backing.offset_alignment
    assert os.O_DIRECT & _fcntl_flags(backing.fd)
    assert not os.O_DIRECT & _fcntl_flags(backing.buffered_fd)
    backing.close()
    read_only = open_backing_file(str(path), read_only=True)
    assert _fcntl_flags(read_only.fd) & os.O_ACCMODE == os.O_RDONLY
    read_only.close()
    buffered = open_backing_file(str(path), direct=False)
    assert not buffered.direct and buffered.fd == buffered.buffered_fd
    assert (buffered.offset_alignment, buffered.memory_alignment) == (1, 1)
    buffered.close()


def test_tmpfs_gets_direct_io_or_says_why_not(tmpfs_dir):
    # tmpfs refuses O_DIRECT before Linux 6.6 and takes it (and does buffered I/O) since.
    backing = open_backing_file(str(make_file(tmpfs_dir)))
    if not backing.direct:
        assert backing.reason == "O_DIRECT not supported on tmpfs: buffered I/O"
        assert backing.fd == backing.buffered_fd
    buffers = Buffers()
    data = buffers.buffer(4096, random_bytes(4096, 1))
    with Uring(4) as ring:
        assert ring.writev(backing.fd, buffers.iovec([data]), 1, 4096, 1) == 0
        ring.submit()
        assert _drain(ring, 1) == {1: 4096}
    assert os.pread(backing.buffered_fd, 4096, 4096) == data.tobytes()
    backing.close()


def test_a_file_system_that_refuses_o_direct_gets_buffered_io(disk_dir, monkeypatch):
    # What Linux before 6.6 does on tmpfs, and other file systems still do: EINVAL.
    real_open = os.open

    def refusing_open(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(_file.os, "open", refusing_open)
    backing = open_backing_file(str(make_file(disk_dir)))
    monkeypatch.undo()
    file_system = file_system_of(disk_dir)
    assert not backing.direct
    assert backing.reason == f"O_DIRECT not supported on {file_system}: buffered I/O"
    assert backing.fd == backing.buffered_fd
    assert (backing.offset_alignment, backing.memory_alignment) == (1, 1)
    backing.close()


def test_what_is_no_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_backing_file(str(tmp_path / "missing"))
    with pytest.raises(OSError) as refused:
        open_backing_file("/dev/null")
    assert refused.value.errno == errno.EINVAL


def _fcntl_flags(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETFL)


# --- a kernel drives the ring ---

@njit(**NJIT)
def _copy_through_a_ring(fd, sources, targets, iovecs, block):
    """Write each source block at its index, read each back into its target, with the ring
    made and freed by the kernel; returns (reaped completions, their results summed) or
    (negative errno, 0)."""
    handle = np.zeros(1, dtype=np.uint64)
    error = uring_create(16, 0, handle.ctypes.data)
    if error < 0:
        return error, 0
    ring = handle[0]
    user_data = np.zeros(8, dtype=np.uint64)
    results = np.zeros(8, dtype=np.int32)
    count = sources.shape[0]
    reaped = 0
    total = 0
    for phase in range(2):
        queued = 0
        done = 0
        while done < count:
            while queued < count and uring_space(ring) > 0:
                k = phase * count + queued
                iovecs[k, 0] = (sources[queued].ctypes.data if phase == 0
                                else targets[queued].ctypes.data)
                iovecs[k, 1] = block
                address = iovecs.ctypes.data + k * 16
                if phase == 0:
                    code = uring_queue_writev(ring, fd, address, 1, queued * block, 0, k)
                else:
                    code = uring_queue_readv(ring, fd, address, 1, queued * block, k)
                if code < 0:
                    uring_destroy(ring)
                    return code, 0
                queued += 1
            uring_submit(ring)
            got = uring_reap(ring, user_data.ctypes.data, results.ctypes.data, 8, SECOND)
            if got < 0:
                uring_destroy(ring)
                return got, 0
            for j in range(got):
                total += results[j]
            done += got
            reaped += got
    left = uring_outstanding(ring)
    uring_destroy(ring)
    return (reaped, total) if left == 0 else (-1, 0)


def test_a_kernel_drives_the_ring(disk_dir):
    backing = open_backing_file(str(make_file(disk_dir)))
    block = 4096
    count = 40
    buffers = Buffers()
    sources = buffers.buffer(count * block).reshape(count, block)
    sources[:] = np.frombuffer(random_bytes(count * block, 9), dtype=np.uint8).reshape(
        count, block)
    targets = buffers.buffer(count * block).reshape(count, block)
    iovecs = np.zeros((2 * count, 2), dtype=np.uint64)
    reaped, total = _copy_through_a_ring(backing.fd, sources, targets, iovecs, block)
    assert (reaped, total) == (2 * count, 2 * count * block)
    assert np.array_equal(sources, targets)
    backing.close()


@njit(**NJIT)
def _wait_for_a_pipe(ring, reader, iovec, results, user_data):
    # The read of an empty pipe completes only once the writer writes: the kernel waits for it
    # in the ring (up to 10 s), which it can do only if it does not hold the GIL.
    uring_queue_readv(ring, reader, iovec, 1, np.uint64(0xFFFFFFFFFFFFFFFF), 77)
    uring_submit(ring)
    return uring_reap(ring, user_data.ctypes.data, results.ctypes.data, 1, 10 * SECOND)


def test_a_kernel_waits_on_the_ring_without_the_gil():
    reader, writer = os.pipe()
    buffers = Buffers()
    target = buffers.buffer(8)
    iovec = buffers.iovec([target])
    results = np.zeros(1, dtype=np.int32)
    user_data = np.zeros(1, dtype=np.uint64)
    got = []
    with Uring(4) as ring:
        os.write(writer, b"x")
        # Compiled first, reading the byte already there, so that the thread only waits.
        assert _wait_for_a_pipe(ring.handle, reader, iovec, results, user_data) == 1
        waiter = threading.Thread(target=lambda: got.append(
            _wait_for_a_pipe(ring.handle, reader, iovec, results, user_data)))
        start = time.monotonic()
        waiter.start()
        time.sleep(0.2)
        # Python code runs while the kernel waits, and it is this that ends the wait.
        os.write(writer, b"written")
        waiter.join(15)
        elapsed = time.monotonic() - start
    assert got == [1]
    assert (int(user_data[0]), int(results[0])) == (77, 7)
    assert target[:7].tobytes() == b"written"
    assert elapsed < 5
    os.close(reader)
    os.close(writer)
