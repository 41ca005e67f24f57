"""virtio-blk requests through the compiled request path (virtio 1.2 §5.2.6), on both ring
types: what the executor is handed, what the driver gets back, and that a request touches no
byte outside its own buffers, good or bad."""

import errno
import os

import numpy as np
import pytest
from blk_guest import (
    PATTERN,
    RING_TYPES,
    BlkGuest,
    Served,
    blk_range,
    data,
    header,
    iovecs,
    span,
)

from fastpath.devices.blk import (
    BLOCK_COMPLETION,
    IO_DISCARD,
    IO_FLAG_FUA,
    IO_FLAG_MAY_UNMAP,
    IO_FLUSH,
    IO_READ,
    IO_WRITE,
    IO_WRITE_ZEROES,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
    BlkDisk,
)
from fastpath.devices.blk.kernels import REASONS

DISK = BlkDisk(1 << 20, serial=b"fastpath-blk-0001")   # 2048 sectors
SECTORS = DISK.sectors


@pytest.fixture(params=RING_TYPES)
def guest(request):
    return BlkGuest(request.param == "packed")


def host(guest, gpa):
    return guest.memory.translate(gpa)


# --- requests the executor carries out ---

@pytest.mark.parametrize("pieces", [1, 3])
@pytest.mark.parametrize("joined", [False, True], ids=["apart", "joined"])
def test_write_then_read_round_trips_through_the_executor(guest, pieces, joined):
    # §2.6.4: with VERSION_1 the framing is the driver's: header and data may share a
    # descriptor, a read's data and its status byte too.
    served = Served(guest, DISK)
    payload = data(3 * 512, seed=7)
    w = guest.write(8, payload, pieces=pieces, joined=joined)
    (io,) = served.take()
    assert (io["operation"], io["offset"], io["length"], io["flags"]) == (IO_WRITE, 4096,
                                                                          1536, 0)
    assert sum(n for _, n in iovecs(io)) == 1536
    served.finish(np.array([io]))
    assert guest.collect() == {w.id: 1}
    assert guest.status(w) == VIRTIO_BLK_S_OK
    assert served.executor.data[4096:4096 + 1536] == payload

    r = guest.read(8, 1536, pieces=pieces, joined=joined)
    (io,) = served.take()
    assert (io["operation"], io["offset"], io["length"]) == (IO_READ, 4096, 1536)
    served.finish(np.array([io]))
    # §2.7.8.1: len counts the data written before the status byte, and the byte itself.
    assert guest.collect() == {r.id: 1537}
    assert guest.written(r) == payload and guest.status(r) == VIRTIO_BLK_S_OK
    counters = served.queue.counters
    assert (counters["in"], counters["out"], counters["submitted"]) == (1, 1, 2)
    assert (counters["bytes_read"], counters["bytes_written"]) == (1536, 1536)
    assert counters["status_ok"] == 2 and served.queue.in_flight == 0


def test_read_iovecs_cover_the_data_and_stop_before_the_status_byte(guest):
    served = Served(guest, DISK)
    r = guest.read(0, 1024, pieces=2, joined=True)
    (io,) = served.take()
    (a, na), (b, nb) = r.writable
    assert iovecs(io) == [(host(guest, a), na), (host(guest, b), nb - 1)]
    assert io["tag"] & 0xFFFFFFFF == 0 and io["tag"] >> 32 == 1


def test_write_iovecs_skip_a_header_that_shares_their_descriptor(guest):
    served = Served(guest, DISK)
    w = guest.write(2, data(1024), pieces=2, joined=True)
    (io,) = served.take()
    (a, na), (b, nb) = w.readable
    assert iovecs(io) == [(host(guest, a) + 16, na - 16), (host(guest, b), nb)]


def test_header_split_over_two_descriptors_is_read_whole(guest):
    served = Served(guest, DISK)
    h = header(VIRTIO_BLK_T_OUT, 5)
    w = guest.add([h[:3], h[3:11], h[11:] + data(512)], [1])
    (io,) = served.take()
    assert (io["operation"], io["offset"], io["length"]) == (IO_WRITE, 5 * 512, 512)
    served.finish(np.array([io]))
    assert guest.collect() == {w.id: 1} and served.executor.data[2560:3072] == data(512)


def test_indirect_requests_are_served():
    guest = BlkGuest(True, indirect=True)
    served = Served(guest, DISK)
    guest.write(0, data(1024), pieces=4, indirect=True)
    r = guest.read(0, 1024, pieces=4, indirect=True)
    served.run()
    assert guest.written(r) == data(1024) and guest.status(r) == VIRTIO_BLK_S_OK


def test_flush_goes_to_the_executor(guest):
    served = Served(guest, DISK)
    f = guest.flush()
    (io,) = served.take()
    assert (io["operation"], io["length"], io["iovcnt"], io["iov"]) == (IO_FLUSH, 0, 0, 0)
    served.finish(np.array([io]))
    assert guest.collect() == {f.id: 1} and guest.status(f) == VIRTIO_BLK_S_OK


def test_discard_and_write_zeroes_carry_their_range(guest):
    served = Served(guest, DISK)
    served.executor.data[:] = b"\xff" * DISK.capacity
    guest.discard(16, 8)
    guest.write_zeroes(32, 16, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)
    guest.write_zeroes(64, 8)
    ios = served.take()
    assert [(int(io["operation"]), int(io["offset"]), int(io["length"]), int(io["flags"]))
            for io in ios] == [(IO_DISCARD, 16 * 512, 4096, 0),
                               (IO_WRITE_ZEROES, 32 * 512, 8192, IO_FLAG_MAY_UNMAP),
                               (IO_WRITE_ZEROES, 64 * 512, 4096, 0)]
    served.finish(ios)
    assert served.executor.data[32 * 512:48 * 512] == bytes(8192)
    assert list(guest.collect().values()) == [1, 1, 1]
    assert served.queue.counters["discard"] == 1 and served.queue.counters["write_zeroes"] == 2


def test_writethrough_asks_the_executor_for_stable_writes(guest):
    # §5.2.6.2: with writeback 0 a write is stable once completed (IO_FLAG_FUA).
    served = Served(guest, DISK, writethrough=True)
    guest.write(0, data(512))
    guest.write_zeroes(8, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)
    guest.discard(16, 8)
    ios = served.take()
    assert [int(io["flags"]) for io in ios] == [IO_FLAG_FUA, IO_FLAG_FUA | IO_FLAG_MAY_UNMAP, 0]


def test_get_id_is_answered_by_the_device_nul_padded(guest):
    # §5.2.6: the ID string is NUL-padded to 20 bytes, with no NUL when it is 20 long.
    served = Served(guest, DISK)
    whole, short = guest.get_id(20), guest.get_id(5)
    before = guest.snapshot()
    assert len(served.take()) == 0
    assert guest.collect() == {whole.id: 21, short.id: 6}
    assert guest.written(whole) == b"fastpath-blk-0001\0\0\0"
    assert guest.written(short) == b"fastp"
    assert guest.status(whole) == guest.status(short) == VIRTIO_BLK_S_OK
    allowed = span(whole.writable[0][0], 20) | span(short.writable[0][0], 5)
    allowed |= {whole.status_gpa, short.status_gpa}
    assert guest.changed(before) <= allowed


def test_empty_reads_and_writes_complete_at_once(guest):
    served = Served(guest, DISK)
    r = guest.add([header(VIRTIO_BLK_T_IN, 3)], [1])
    w = guest.add([header(VIRTIO_BLK_T_OUT, SECTORS)], [1])   # at the very end: still in range
    d = guest.discard(0, 0)
    assert len(served.take()) == 0
    assert guest.collect() == {r.id: 1, w.id: 1, d.id: 1}
    assert guest.status(r) == guest.status(w) == guest.status(d) == VIRTIO_BLK_S_OK


@pytest.mark.parametrize(("result", "status"), [
    (-errno.EIO, VIRTIO_BLK_S_IOERR), (-errno.EINVAL, VIRTIO_BLK_S_IOERR),
    (-errno.ENOSPC, VIRTIO_BLK_S_IOERR), (-errno.EOPNOTSUPP, VIRTIO_BLK_S_UNSUPP),
    (-errno.EROFS, VIRTIO_BLK_S_IOERR)])
def test_executor_failures_become_status_bytes(guest, result, status):
    served = Served(guest, DISK)
    r = guest.read(0, 512)
    served.finish(served.take(), [result])
    assert guest.status(r) == status
    assert guest.collect() == {r.id: 1}   # the status byte alone: the data is not reported
    assert guest.written(r) == bytes([PATTERN]) * 512


def test_completions_out_of_order_use_each_chain_once(guest):
    served = Served(guest, DISK)
    sent = [guest.read(k, 512) for k in range(6)]
    ios = served.take()
    served.finish(ios[::-1])
    used = guest.queue.collect()
    assert [i for i, _ in used] == [s.id for s in sent][::-1]
    assert all(n == 513 for _, n in used)


def test_stale_and_foreign_completions_are_ignored(guest):
    served = Served(guest, DISK)
    r = guest.read(0, 512)
    (io,) = served.take()
    wrong = np.zeros(3, dtype=BLOCK_COMPLETION)
    wrong["tag"] = [io["tag"] + (1 << 32), io["tag"] + 1, 1 << 31]   # old generation, idle slot,
    assert served.queue.complete(wrong) == 0                            # slot past the table
    assert served.finish(np.array([io])) == 1
    assert served.finish(np.array([io])) == 0    # completed twice: the second is stale
    assert guest.collect() == {r.id: 513}
    assert served.queue.counters["stale"] == 4


def test_a_burst_takes_no_more_than_asked_and_leaves_the_rest_on_the_ring(guest):
    served = Served(guest, DISK, max_burst=4)
    for k in range(10):
        guest.read(k, 512)
    assert len(served.take(3)) == 3
    assert len(served.take()) == 4
    assert len(served.take()) == 3
    assert served.queue.in_flight == 10


def test_the_driver_is_called_after_completions_unless_it_asked_not_to_be(guest):
    call = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        served = Served(guest, DISK, call_fd=call)
        guest.read(0, 512)
        served.run()
        assert os.eventfd_read(call) == 1
        guest.queue.disable_calls()
        guest.read(0, 512)
        guest.get_id()
        served.run()
        with pytest.raises(BlockingIOError):
            os.eventfd_read(call)
        assert served.queue.counters["notified"] == 1
    finally:
        os.close(call)


# --- bad requests: the status the device answers, and nothing touched outside them ---

def refuse(served, guest, sent, status, reason, used_len=1):
    """Serve what is waiting: `sent` is completed by the device itself with `status` (None:
    dropped, nothing written) and `reason` counted, and no byte outside its status byte
    changes."""
    before = guest.snapshot()
    counts = served.queue.counters
    assert len(served.take()) == 0
    assert guest.collect() == {sent.id: used_len}
    allowed = {sent.status_gpa} if status is not None else set()
    assert guest.changed(before) <= allowed
    if status is not None:
        assert guest.status(sent) == status
    after = served.queue.counters
    assert {r: after[r] - counts[r] for r in REASONS if after[r] != counts[r]} == {reason: 1}
    assert served.executor.data == bytes(DISK.capacity)


@pytest.mark.parametrize("readable", [b"", data(15)], ids=["none", "15 bytes"])
def test_header_shorter_than_16_bytes_is_an_io_error(guest, readable):
    sent = guest.add([readable] if readable else [], [513])
    refuse(Served(guest, DISK), guest, sent, VIRTIO_BLK_S_IOERR, "bad_header")


def test_header_in_a_device_writable_descriptor_is_an_io_error(guest):
    # The status byte is still the last writable byte: that is all the device writes.
    sent = guest.add([], [16, 512, 1])
    guest.memory.write(sent.writable[0][0], header(VIRTIO_BLK_T_OUT, 0))
    refuse(Served(guest, DISK), guest, sent, VIRTIO_BLK_S_IOERR, "bad_header")


@pytest.mark.parametrize("writable", [[], [0]], ids=["no descriptor", "empty descriptor"])
def test_no_status_byte_uses_the_chain_with_nothing_written(guest, writable):
    sent = guest.add([header(VIRTIO_BLK_T_OUT, 0), data(512)], writable)
    refuse(Served(guest, DISK), guest, sent, None, "no_status", used_len=0)


def test_status_byte_in_a_device_readable_descriptor_is_no_status_byte(guest):
    sent = guest.add([header(VIRTIO_BLK_T_IN, 0), bytes(512), b"\0"])
    refuse(Served(guest, DISK), guest, sent, None, "no_status", used_len=0)


@pytest.mark.parametrize(("sector", "n"), [
    (SECTORS, 512),                 # starts at the end
    (SECTORS - 1, 1024),            # runs past the end
    (1 << 55, 512),                 # sector * 512 overflows 64 bits
    ((1 << 64) - 1, 512),           # sector + sectors overflows
    ((1 << 64) - 2**54, 1 << 12),
], ids=["at end", "across end", "offset overflow", "sector overflow", "near 2**64"])
@pytest.mark.parametrize("kind", [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT], ids=["in", "out"])
def test_sectors_out_of_range_are_io_errors(guest, sector, n, kind):
    if kind == VIRTIO_BLK_T_IN:
        sent = guest.add([header(kind, sector)], [n, 1])
    else:
        sent = guest.add([header(kind, sector), data(n)], [1])
    refuse(Served(guest, DISK), guest, sent, VIRTIO_BLK_S_IOERR, "range")


@pytest.mark.parametrize("n", [1, 100, 513, 1000])
@pytest.mark.parametrize("kind", [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT], ids=["in", "out"])
def test_data_not_whole_sectors_is_an_io_error(guest, n, kind):
    # §5.2.6.1: data in multiples of 512 bytes.
    if kind == VIRTIO_BLK_T_IN:
        sent = guest.add([header(kind, 0)], [n, 1])
    else:
        sent = guest.add([header(kind, 0), data(n)], [1])
    refuse(Served(guest, DISK), guest, sent, VIRTIO_BLK_S_IOERR, "length")


@pytest.mark.parametrize(("sector", "n"), [(1, 4096), (0, 512), (8, 4096 + 512), (7, 512)])
@pytest.mark.parametrize("kind", [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT], ids=["in", "out"])
def test_requests_not_aligned_to_the_block_size_are_io_errors(guest, sector, n, kind):
    disk = BlkDisk(1 << 20, block_size=4096)
    if kind == VIRTIO_BLK_T_IN:
        sent = guest.add([header(kind, sector)], [n, 1])
    else:
        sent = guest.add([header(kind, sector), data(n)], [1])
    refuse(Served(guest, disk), guest, sent, VIRTIO_BLK_S_IOERR, "alignment")


@pytest.mark.parametrize(("readable", "writable"), [
    ([header(VIRTIO_BLK_T_IN, 0), data(512)], [512, 1]),         # a read with data to write
    ([header(VIRTIO_BLK_T_OUT, 0), data(512)], [512, 1]),        # a write with data to read
    ([header(VIRTIO_BLK_T_OUT, 0)], [512, 1]),                   # a write whose data is writable
    ([header(VIRTIO_BLK_T_GET_ID), data(20)], [20, 1]),
    ([header(VIRTIO_BLK_T_DISCARD), blk_range(0, 8)], [16, 1]),
    ([header(VIRTIO_BLK_T_WRITE_ZEROES)], [16, 1]),
], ids=["in", "out", "out writable", "get_id", "discard", "write_zeroes"])
def test_data_in_the_wrong_direction_is_an_io_error(guest, readable, writable):
    sent = guest.add(readable, writable)
    refuse(Served(guest, DISK), guest, sent, VIRTIO_BLK_S_IOERR, "direction")


@pytest.mark.parametrize("request_of", [
    lambda g: g.write(0, data(512)),
    lambda g: g.discard(0, 8),
    lambda g: g.write_zeroes(0, 8),
], ids=["out", "discard", "write_zeroes"])
def test_a_read_only_disk_takes_no_writes(guest, request_of):
    # §5.2.6.2: IOERR for a write with RO offered, and no data written.
    disk = BlkDisk(1 << 20, read_only=True)
    sent = request_of(guest)
    refuse(Served(guest, disk), guest, sent, VIRTIO_BLK_S_IOERR, "read_only")


def test_a_read_only_disk_is_still_read(guest):
    served = Served(guest, BlkDisk(1 << 20, read_only=True))
    r = guest.read(0, 512)
    f = guest.flush()
    served.run()
    assert guest.status(r) == guest.status(f) == VIRTIO_BLK_S_OK


@pytest.mark.parametrize("kind", [2, 3, 5, 10, 14, 0x80000000, 0xFFFFFFFF])
def test_unknown_types_are_unsupported(guest, kind):
    sent = guest.add([header(kind, 0)], [512, 1])
    refuse(Served(guest, DISK), guest, sent, VIRTIO_BLK_S_UNSUPP, "unsupported")


@pytest.mark.parametrize(("kind", "flags"), [
    (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),   # unmap on a discard
    (VIRTIO_BLK_T_DISCARD, 2),
    (VIRTIO_BLK_T_WRITE_ZEROES, 1 << 31),
    (VIRTIO_BLK_T_WRITE_ZEROES, 3),
])
def test_unknown_flags_and_unmap_on_discard_are_unsupported(guest, kind, flags):
    # §5.2.6.2: UNSUPP for any unknown flag, and for unmap on a discard.
    sent = guest.add([header(kind), blk_range(0, 8, flags)], [1])
    refuse(Served(guest, DISK), guest, sent, VIRTIO_BLK_S_UNSUPP, "unsupported")


@pytest.mark.parametrize("kind", [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES])
def test_more_ranges_than_max_seg_are_unsupported(guest, kind):
    sent = guest.add([header(kind), blk_range(0, 8) + blk_range(16, 8)], [1])
    refuse(Served(guest, DISK), guest, sent, VIRTIO_BLK_S_UNSUPP, "unsupported")


@pytest.mark.parametrize("payload", [b"", blk_range(0, 8)[:8], blk_range(0, 8) + b"x"],
                         ids=["none", "half", "one and a byte"])
@pytest.mark.parametrize("kind", [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES])
def test_ranges_not_whole_are_io_errors(guest, kind, payload):
    sent = guest.add([header(kind)] + ([payload] if payload else []), [1])
    refuse(Served(guest, DISK), guest, sent, VIRTIO_BLK_S_IOERR, "length")


@pytest.mark.parametrize(("kind", "sector", "sectors", "reason"), [
    (VIRTIO_BLK_T_DISCARD, 0, 4096 + 8, "range"),           # over max_discard_sectors
    (VIRTIO_BLK_T_WRITE_ZEROES, 0, 2048 + 8, "range"),      # over max_write_zeroes_sectors
    (VIRTIO_BLK_T_DISCARD, SECTORS - 8, 16, "range"),       # past the end
    (VIRTIO_BLK_T_WRITE_ZEROES, 1 << 60, 8, "range"),
    (VIRTIO_BLK_T_DISCARD, 4, 8, "alignment"),              # 4096-byte blocks
    (VIRTIO_BLK_T_WRITE_ZEROES, 8, 4, "alignment"),
])
def test_ranges_over_the_limits_or_the_disk_are_io_errors(guest, kind, sector, sectors,
                                                          reason):
    disk = BlkDisk(1 << 20, block_size=4096, max_discard_sectors=4096,
                   max_write_zeroes_sectors=2048)
    sent = guest.add([header(kind), blk_range(sector, sectors)], [1])
    refuse(Served(guest, disk), guest, sent, VIRTIO_BLK_S_IOERR, reason)


def test_more_data_pieces_than_a_request_may_have_is_an_io_error(guest):
    disk = BlkDisk(1 << 20, seg_max=2)   # four iovecs a request
    served = Served(guest, disk)
    sent = guest.add([header(VIRTIO_BLK_T_OUT, 0)] + [data(512, k) for k in range(5)], [1])
    refuse(served, guest, sent, VIRTIO_BLK_S_IOERR, "segments")
    ok = guest.add([header(VIRTIO_BLK_T_OUT, 0)] + [data(512, k) for k in range(4)], [1])
    served.run()
    assert guest.status(ok) == VIRTIO_BLK_S_OK


def test_a_chain_the_ring_refuses_is_used_with_nothing_written(guest):
    sent = guest.read(0, 512)
    # The data descriptor now points past guest memory: the pop fails the chain.
    desc = guest.guest.desc
    for k in range(len(desc)):
        if desc["addr"][k] == sent.writable[0][0]:
            desc["addr"][k] = 1 << 50
    refuse(Served(guest, DISK), guest, sent, None, "bad_chain", used_len=0)


def test_bad_requests_among_good_ones_leave_the_good_ones_alone(guest):
    served = Served(guest, DISK)
    good = [guest.write(k * 8, data(4096, k)) for k in range(3)]
    bad = guest.add([header(VIRTIO_BLK_T_IN, SECTORS)], [512, 1])
    good.append(guest.read(0, 4096))
    ios = served.take()
    assert len(ios) == 4 and guest.collect() == {bad.id: 1}
    served.finish(ios)
    used = guest.collect()
    assert used == {**{g.id: 1 for g in good[:3]}, good[3].id: 4097}
    assert guest.written(good[3]) == data(4096, 0)


def test_a_read_writes_its_data_and_status_byte_and_nothing_else(guest):
    served = Served(guest, DISK)
    served.executor.data[:] = bytes(range(256)) * (DISK.capacity // 256)
    r = guest.read(8, 2048, pieces=3, joined=True)
    w = guest.write(16, data(1024))
    before = guest.snapshot()
    served.run()
    allowed = {w.status_gpa}.union(*(span(gpa, n) for gpa, n in r.writable))
    assert guest.changed(before) <= allowed
    assert guest.written(r) == served.executor.data[4096:6144]
