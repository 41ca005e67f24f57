"""A hostile guest (or a hostile device, on the driver side) against split and packed queues.

Every hostile input must come back as a named error (a chain record's `error`, or an exception
from `fastpath.errors`), be counted in the queue's `errors`, never crash, and leave the queue
serving the next good chain, except where the ring cannot be parsed any more (an avail index
jump on a split ring, a chain with no end on a packed ring): then the queue is broken and says so.

Descriptors are written raw into the ring memory of a `GuestDriver`; its DriverQueue is not used
for them, so the two never disagree about indices.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastpath.errors import (
    AvailIndexJump,
    BadIndirectTable,
    ChainLoop,
    ChainTooLarge,
    DescriptorOutsideMemory,
    HeadOutOfRange,
    NextOutOfRange,
    QueueBroken,
    TooManySegments,
    WriteOrderViolation,
)
from fastpath.hv import GuestMemory
from fastpath.testing import GuestDriver
from fastpath.vring import (
    DRIVER_CHAIN_DTYPE,
    PACKED_DESC_DTYPE,
    SEGMENT_DTYPE,
    SPLIT_DESC_DTYPE,
    Burst,
    PackedDeviceQueue,
    PackedDriverQueue,
    SplitDeviceQueue,
    SplitDriverQueue,
    ring_layout,
)

MIB = 1 << 20
TOP = 1 << 64
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
F_AVAIL, F_USED = 1 << 7, 1 << 15

LAYOUTS = pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])


class HostileRing:
    """One queue whose driver side writes whatever a test asks, straight into guest memory.

    Memory (GuestDriver with `hole`): region 0 holds the ring and the indirect tables, then a
    1 MiB hole, then region 1 holds the buffers. Descriptors are given as (addr, len, flags) or,
    for split rings, (addr, len, flags, next); a missing `next` is the following slot.
    """

    def __init__(self, packed: bool, *, size: int = 16, indirect: bool = True,
                 burst: Burst | None = None):
        self.packed = packed
        self.g = GuestDriver(packed=packed, size=size, indirect=indirect, hole=True,
                             buffer_size=256)
        self.size = size
        self.dev = self.g.device()
        self.burst = burst if burst is not None else self.dev.new_burst()
        regions = self.g.memory.regions
        self.hole = regions[0].guest_phys_addr + regions[0].size  # first byte of the hole
        self.end = regions[-1].guest_phys_addr + regions[-1].size  # first byte past memory
        self.buf = [self.g.buffer_address(k) for k in range(16)]
        self.pos, self.wrap = 0, 1
        self.next_id = 0
        self._tables = 0

    def table(self, entries) -> int:
        """Write an indirect table of (addr, len, flags[, next]) entries; returns its address."""
        gpa = self.g.table_address(self._tables)
        self._tables += 1
        if self.packed:
            rows = [(a, n, 0, f) for a, n, f, *_ in entries]
            raw = np.array(rows, dtype=PACKED_DESC_DTYPE)
        else:
            rows = [(a, n, f, e[0] if e else k + 1) for k, (a, n, f, *e) in enumerate(entries)]
            raw = np.array(rows, dtype=SPLIT_DESC_DTYPE)
        self.g.memory.write(gpa, raw.tobytes())
        return gpa

    def offer(self, descs) -> int:
        """Make one chain of raw descriptors available; returns its head slot (split) or id."""
        head = self.pos
        if self.packed:
            buffer_id = self.next_id = (self.next_id + 1) % self.size
            head_flags = None
            for k, (addr, length, flags, *_) in enumerate(descs):
                bits = flags | (F_AVAIL if self.wrap else F_USED)
                self.g.desc[self.pos] = (addr, length, buffer_id, 0 if k == 0 else bits)
                if k == 0:
                    head_flags = bits
                self.pos += 1
                if self.pos == self.size:
                    self.pos, self.wrap = 0, self.wrap ^ 1
            self.g.desc["flags"][head] = head_flags  # the head goes last (§2.8.21)
            return buffer_id
        for k, (addr, length, flags, *explicit_next) in enumerate(descs):
            slot = (head + k) % self.size
            nxt = explicit_next[0] if explicit_next else (slot + 1) % self.size
            self.g.desc[slot] = (addr, length, flags, nxt)
        self.pos = (head + len(descs)) % self.size
        self.g.publish_heads([head])
        return head

    def pop(self) -> list:
        """Pop what is available; push it straight back. Returns each chain's error class."""
        n = self.dev.pop(self.burst)
        errors = [self.burst.error(i) for i in range(n)]
        for i in range(n):
            if errors[i] is not None:
                c = self.burst.chains[i]
                assert (c["nseg"], c["readable_len"], c["writable_len"]) == (0, 0, 0)
        self.dev.push(self.burst)
        return errors

    def assert_still_serves(self, rounds: int = 2) -> None:
        """Good chains after the hostile one pop whole and correct."""
        for r in range(rounds):
            data = bytes([r + 1]) * (100 + r)
            self.g.memory.write(self.buf[2 + r], data)
            self.offer([(self.buf[2 + r], len(data), F_NEXT), (self.buf[8], 64, F_WRITE)])
            n = self.dev.pop(self.burst)
            assert n == 1, "the queue stopped serving good chains"
            assert self.burst.error(0) is None
            assert self.burst.readable(0) == data
            assert self.burst.chains["writable_len"][0] == 64
            assert self.dev.push(self.burst) == 1
        assert not self.dev.broken


def expect_chain_error(h: HostileRing, descs, error: type, count: int = 1) -> None:
    before = h.dev.errors.get(error.__name__, 0)
    h.offer(descs)
    assert h.pop() == [error]
    assert h.dev.errors.get(error.__name__, 0) == before + count
    h.assert_still_serves()


# --- Chains that never end --------------------------------------------------------------------


@pytest.mark.parametrize("loop_to", [0, 1], ids=["back-to-head", "self"])
def test_split_descriptor_loop_is_a_chain_loop(loop_to):
    h = HostileRing(False)
    a = h.buf[0]
    # slots 0 -> 1 -> back to loop_to
    expect_chain_error(h, [(a, 16, F_NEXT, 1), (a, 16, F_NEXT, loop_to)], ChainLoop)


def test_split_chain_through_every_descriptor_and_back_is_a_chain_loop():
    h = HostileRing(False, size=8)
    a = h.buf[0]
    expect_chain_error(h, [(a, 1, F_NEXT)] * 8, ChainLoop)  # slot 7's next is slot 0


def test_split_chain_as_long_as_the_queue_is_accepted():
    h = HostileRing(False, size=8)
    a = h.buf[0]
    h.offer([(a, 1, F_NEXT)] * 7 + [(a, 1, 0)])
    assert h.pop() == [None]
    assert h.burst.chains["nseg"][0] == 8


def test_packed_chain_longer_than_the_queue_breaks_the_queue():
    # Every slot says NEXT: there is no end to find, so no later chain can be found either.
    h = HostileRing(True, size=8)
    a = h.buf[0]
    h.offer([(a, 1, F_NEXT)] * 8)
    with pytest.raises(ChainLoop):
        h.dev.pop(h.burst)
    assert h.dev.errors == {"ChainLoop": 1}
    assert h.dev.broken
    with pytest.raises(QueueBroken):
        h.dev.pop(h.burst)


def test_packed_chain_as_long_as_the_queue_is_accepted():
    h = HostileRing(True, size=8)
    a = h.buf[0]
    h.offer([(a, 1, F_NEXT)] * 7 + [(a, 1, 0)])
    assert h.pop() == [None]
    assert h.burst.chains["ndesc"][0] == 8
    h.assert_still_serves()


@LAYOUTS
def test_indirect_table_longer_than_the_queue_is_served(packed):
    # The spec's chain-length limit binds the driver; Linux sends indirect tables longer than a
    # small queue and QEMU and DPDK serve them, so fastpath does too (see ChainLoop). A loop is
    # what stays refused (test_split_loop_inside_an_indirect_table_is_a_chain_loop).
    h = HostileRing(packed, size=8)
    a = h.buf[0]
    table = h.table([(a, 1, 0 if packed else F_NEXT, k + 1) for k in range(8)] + [(a, 1, 0)])
    h.offer([(table, 9 * 16, F_INDIRECT)])
    assert h.pop() == [None]
    assert h.burst.chains["nseg"][0] == 9
    assert h.burst.chains["readable_len"][0] == 9
    assert h.dev.errors == {}


def test_split_loop_inside_an_indirect_table_is_a_chain_loop():
    h = HostileRing(False)
    a = h.buf[0]
    table = h.table([(a, 16, F_NEXT, 1), (a, 16, F_NEXT, 2), (a, 16, F_NEXT, 0)])
    expect_chain_error(h, [(table, 48, F_INDIRECT)], ChainLoop)


# --- Indices out of range (split) --------------------------------------------------------------


@pytest.mark.parametrize("head", [16, 17, 0xFFFF])
def test_split_head_index_beyond_the_queue_is_head_out_of_range(head):
    h = HostileRing(False)
    h.g.publish_heads([head])
    assert h.dev.pop(h.burst) == 1
    assert h.burst.error(0) is HeadOutOfRange
    assert h.dev.errors == {"HeadOutOfRange": 1}
    h.dev.push(h.burst)
    h.assert_still_serves()


@pytest.mark.parametrize("nxt", [16, 200, 0xFFFF])
def test_split_next_index_beyond_the_table_is_next_out_of_range(nxt):
    h = HostileRing(False)
    expect_chain_error(h, [(h.buf[0], 16, F_NEXT, nxt)], NextOutOfRange)


def test_split_next_index_beyond_an_indirect_table_is_next_out_of_range():
    h = HostileRing(False)
    table = h.table([(h.buf[0], 16, F_NEXT, 1), (h.buf[1], 16, F_NEXT, 2)])
    expect_chain_error(h, [(table, 32, F_INDIRECT)], NextOutOfRange)


# --- The avail index (split) -------------------------------------------------------------------


@pytest.mark.parametrize("jump", [17, 1000, 0x8000, 0xFFFF])
def test_split_avail_index_jumping_past_the_queue_size_breaks_the_queue(jump):
    h = HostileRing(False)
    h.assert_still_serves()
    avail = h.g.avail_ring()
    avail[1] = (int(avail[1]) + jump) & 0xFFFF
    with pytest.raises(AvailIndexJump):
        h.dev.pop(h.burst)
    assert h.dev.broken
    assert h.dev.errors == {"AvailIndexJump": 1}
    with pytest.raises(QueueBroken):
        h.dev.pop(h.burst)
    avail[1] = (int(avail[1]) - jump) & 0xFFFF  # undoing it does not revive the queue
    with pytest.raises(QueueBroken):
        h.dev.pop(h.burst)


def test_split_avail_index_moving_by_exactly_the_queue_size_is_accepted():
    h = HostileRing(False, size=8)
    for slot in range(8):
        h.g.desc[slot] = (h.buf[0], 8, 0, 0)
    h.g.publish_heads(list(range(8)))
    assert h.pop() == [None] * 8
    assert not h.dev.broken


# --- Descriptors outside guest memory ----------------------------------------------------------

OUTSIDE = {
    "in-hole": lambda h: (h.hole + 4096, 64),
    "into-hole": lambda h: (h.hole - 16, 64),
    "hole-into-region": lambda h: (h.buf[0] - 16, 64),
    "past-end": lambda h: (h.end, 16),
    "across-end": lambda h: (h.end - 16, 64),
    "addr-plus-len-wraps-2**64": lambda h: (TOP - 16, 64),
    "last-byte-below-2**64": lambda h: (TOP - 1, 1),
    "len-4GiB": lambda h: (h.buf[0], 0xFFFF_FFFF),
}


@LAYOUTS
@pytest.mark.parametrize("where", OUTSIDE)
@pytest.mark.parametrize("flags", [0, F_WRITE], ids=["readable", "writable"])
def test_descriptor_outside_guest_memory_is_refused(packed, where, flags):
    h = HostileRing(packed)
    addr, length = OUTSIDE[where](h)
    expect_chain_error(h, [(addr, length, flags)], DescriptorOutsideMemory)


@LAYOUTS
def test_descriptor_outside_memory_later_in_a_chain_is_refused(packed):
    h = HostileRing(packed)
    expect_chain_error(h, [(h.buf[0], 16, F_NEXT), (h.hole, 16, F_NEXT), (h.buf[1], 16, 0)],
                       DescriptorOutsideMemory)


@LAYOUTS
def test_descriptor_outside_memory_inside_an_indirect_table_is_refused(packed):
    h = HostileRing(packed)
    table = h.table([(h.buf[0], 16, F_NEXT), (TOP - 8, 16, 0)])
    expect_chain_error(h, [(table, 32, F_INDIRECT)], DescriptorOutsideMemory)


@LAYOUTS
def test_descriptor_wrapping_past_2_64_into_low_memory_is_refused(packed):
    # With a region ending exactly at 2**64 and another at 0, [2**64 - 16, 2**64 + 16) must not
    # be read as the top region's last 16 bytes followed by guest-physical 0.
    with GuestMemory([(0, MIB), (TOP - MIB, MIB)]) as memory:
        addresses = ring_layout(8, 0x1000, packed)
        driver = (PackedDriverQueue if packed else SplitDriverQueue)(memory, 8, addresses)
        dev = (PackedDeviceQueue if packed else SplitDeviceQueue)(memory, 8, addresses)
        driver.add([(TOP - 16, 32)])
        burst = dev.new_burst()
        assert dev.pop(burst) == 1
        assert burst.error(0) is DescriptorOutsideMemory
        assert dev.errors == {"DescriptorOutsideMemory": 1}


@LAYOUTS
def test_zero_length_descriptor_yields_no_segment(packed):
    h = HostileRing(packed)
    h.g.memory.write(h.buf[1], b"data")
    h.offer([(h.hole, 0, F_NEXT), (h.buf[1], 4, 0)])
    assert h.pop() == [None]
    c = h.burst.chains[0]
    assert (c["nseg"], c["readable_len"]) == (1, 4)
    assert h.burst.readable(0) == b"data"


# --- Bad indirect tables -----------------------------------------------------------------------


def _indirect_case(h: HostileRing, case: str):
    a = h.buf[0]
    nxt = 0 if h.packed else F_NEXT  # packed tables are read in order, without NEXT (§2.8.19)
    good = h.table([(a, 16, nxt), (h.buf[1], 16, F_WRITE)])
    if case == "len-0":
        return [(good, 0, F_INDIRECT)]
    if case == "len-not-multiple-of-16":
        return [(good, 24, F_INDIRECT)]
    if case == "nested":
        return [(h.table([(a, 16, nxt), (good, 32, F_INDIRECT)]), 32, F_INDIRECT)]
    if case == "indirect-with-next":
        return [(good, 32, F_INDIRECT | F_NEXT), (a, 16, 0)]
    if case == "table-in-hole":
        return [(h.hole + 64, 32, F_INDIRECT)]
    if case == "table-across-region-end":
        return [(h.hole - 16, 32, F_INDIRECT)]
    if case == "table-past-2**64":
        return [(TOP - 16, 32, F_INDIRECT)]
    if case == "table-len-4GiB":
        return [(good, 0xFFFF_FFF0, F_INDIRECT)]
    raise AssertionError(case)


INDIRECT_CASES = ["len-0", "len-not-multiple-of-16", "nested", "indirect-with-next",
                  "table-in-hole", "table-across-region-end", "table-past-2**64",
                  "table-len-4GiB"]


@LAYOUTS
@pytest.mark.parametrize("case", INDIRECT_CASES)
def test_bad_indirect_table_is_refused(packed, case):
    h = HostileRing(packed)
    expect_chain_error(h, _indirect_case(h, case), BadIndirectTable)


@LAYOUTS
def test_indirect_table_without_the_feature_is_refused(packed):
    h = HostileRing(packed, indirect=False)
    table = h.table([(h.buf[0], 16, 0)])
    expect_chain_error(h, [(table, 16, F_INDIRECT)], BadIndirectTable)


def test_packed_indirect_descriptor_inside_a_next_list_is_refused():
    # §2.8.19: no direct descriptor with INDIRECT in a list linked by NEXT.
    h = HostileRing(True)
    table = h.table([(h.buf[0], 16, 0)])
    expect_chain_error(h, [(h.buf[1], 16, F_NEXT), (table, 16, F_INDIRECT)], BadIndirectTable)


# --- Readable after writable (§2.7.4.2, §2.8.5) ------------------------------------------------


@LAYOUTS
def test_readable_descriptor_after_a_writable_one_is_refused(packed):
    h = HostileRing(packed)
    expect_chain_error(h, [(h.buf[0], 16, F_WRITE | F_NEXT), (h.buf[1], 16, 0)],
                       WriteOrderViolation)


@LAYOUTS
def test_readable_descriptor_after_a_writable_one_in_an_indirect_table_is_refused(packed):
    h = HostileRing(packed)
    table = h.table([(h.buf[0], 16, F_NEXT), (h.buf[1], 16, F_WRITE | F_NEXT),
                     (h.buf[2], 16, 0)])
    expect_chain_error(h, [(table, 48, F_INDIRECT)], WriteOrderViolation)


@LAYOUTS
def test_readable_descriptor_after_an_empty_writable_one_is_refused(packed):
    # The order rule is about descriptors, not bytes: an empty writable one still counts.
    h = HostileRing(packed)
    expect_chain_error(h, [(h.buf[0], 16, F_NEXT), (h.buf[1], 0, F_WRITE | F_NEXT),
                           (h.buf[2], 16, 0)], WriteOrderViolation)


@LAYOUTS
def test_chain_whose_bytes_do_not_fit_32_bits_is_chain_too_large(packed):
    # Two descriptors of almost 4 GiB each in sparse 6 GiB memory (never touched): the chain's
    # readable or writable total no longer fits the used element's 32-bit length.
    gib = 1 << 30
    with GuestMemory([(0, 6 * gib)]) as memory:
        addresses = ring_layout(8, 0x1000, packed)
        driver = (PackedDriverQueue if packed else SplitDriverQueue)(memory, 8, addresses)
        dev = (PackedDeviceQueue if packed else SplitDeviceQueue)(memory, 8, addresses)
        driver.add([(gib, 0xFFFF_FFFF), (5 * gib, 16)])
        driver.add([], [(gib, 0xFFFF_FFFF), (5 * gib, 1)])
        driver.add([(gib, 0xFFFF_FFFF)], [(5 * gib, 1)])  # each side fits on its own
        burst = dev.new_burst()
        assert dev.pop(burst) == 3
        assert [burst.error(i) for i in range(3)] == [ChainTooLarge, ChainTooLarge, None]
        assert dev.errors == {"ChainTooLarge": 2}


# --- Segment space -----------------------------------------------------------------------------


@LAYOUTS
def test_chain_needing_more_segments_than_the_burst_holds_is_too_many_segments(packed):
    h = HostileRing(packed, burst=Burst(4, max_segments=2))
    a = h.buf[0]
    expect_chain_error(h, [(a, 8, F_NEXT), (a, 8, F_NEXT), (a, 8, 0)], TooManySegments)


@LAYOUTS
def test_chain_that_does_not_fit_the_rest_of_a_burst_waits_for_the_next_one(packed):
    h = HostileRing(packed, burst=Burst(4, max_segments=3))
    a = h.buf[0]
    h.g.memory.write(h.buf[1], b"second")
    first = h.offer([(a, 8, F_NEXT), (a, 8, 0)])
    second = h.offer([(h.buf[1], 6, F_NEXT), (a, 8, F_WRITE)])
    assert h.dev.pop(h.burst) == 1
    assert h.burst.chains["id"][0] == first and h.burst.error(0) is None
    h.dev.push(h.burst)
    assert h.dev.pop(h.burst) == 1
    assert h.burst.chains["id"][0] == second and h.burst.error(0) is None
    assert h.burst.readable(0) == b"second"
    assert h.dev.errors == {}


# --- Garbage from the device, on the driver side ------------------------------------------------


def _split_garbage_used(g: GuestDriver, ids: list[int]) -> None:
    used_hdr = g.memory.view(g.addresses.device, 4).view(np.uint16)
    ring = g.used_ring()
    idx = int(used_hdr[1])
    for i in ids:
        ring[2 * (idx % g.size)] = i
        ring[2 * (idx % g.size) + 1] = 0xFFFF_FFFF
        idx += 1
    used_hdr[1] = idx & 0xFFFF


def _packed_garbage_used(g: GuestDriver, ids: list[int]) -> None:
    # Used descriptors (both bits equal to the first lap's wrap counter) from slot 0, where the
    # driver collects first.
    for pos, i in enumerate(ids):
        g.desc[pos] = (0, 0xFFFF_FFFF, i, F_AVAIL | F_USED)


@LAYOUTS
def test_driver_counts_garbage_used_ids_and_frees_nothing(packed):
    g = GuestDriver(packed=packed, size=8)
    sent = [g.send(b"x"), g.send(b"y", pieces=1, writable=1)]  # ring slots 0..2
    dev = g.device()
    burst = dev.new_burst()
    assert dev.pop(burst) == 2
    free_before = g.queue.num_free
    # Out of range, never offered, and (split) a non-head descriptor of an in-flight chain.
    garbage = [8, 0xFFFF, 7] if packed else [8, 0xFFFF_FFFF, 7, 2]
    if packed:
        _packed_garbage_used(g, garbage)
    else:
        _split_garbage_used(g, garbage)
    assert g.queue.collect() == []
    assert g.queue.errors == {"UnknownUsedId": len(garbage)}
    assert g.queue.num_free == free_before
    # A correct device carries on after the garbage; everything in flight comes back once.
    if packed:
        dev.used_state = (len(garbage), 1)
    else:
        dev.used_idx = len(garbage)
    dev.push(burst)
    assert sorted(i for i, _ in g.queue.collect()) == sorted(sent)
    assert g.queue.num_free == 8
    assert g.queue.errors == {"UnknownUsedId": len(garbage)}


@LAYOUTS
def test_driver_counts_a_buffer_returned_twice_and_frees_it_once(packed):
    g = GuestDriver(packed=packed, size=8)
    g.send(b"x")
    dev = g.device()
    burst = dev.new_burst()
    dev.pop(burst)
    dev.push(burst)
    if packed:
        dev.used_state = (1, 1)
    dev.push(burst)  # the same buffer again
    assert len(g.queue.collect()) == 1
    assert g.queue.errors == {"UnknownUsedId": 1}
    assert g.queue.num_free == 8


def test_device_counts_a_pushed_id_beyond_the_queue():
    # Split: a used element's id is a head index, so one beyond the queue is refused at push.
    h = HostileRing(False)
    h.offer([(h.buf[0], 8, 0)])
    assert h.dev.pop(h.burst) == 1
    h.burst.chains["id"][0] = 16
    assert h.dev.push(h.burst) == 0
    assert h.dev.errors == {"UnknownUsedId": 1}
    assert h.dev.used_idx == 0


# --- Found in review: bounds on work a guest can demand, and driver-side checks -----------------


@LAYOUTS
def test_indirect_table_longer_than_a_chain_may_be_is_refused(packed):
    # Past max(queue size, 1024) descriptors a table is refused outright: without the cap a
    # table of zero-length entries (or a split loop inside it) could keep the device busy for
    # seconds per chain.
    h = HostileRing(packed)
    entries = 2048
    if packed:
        raw = np.zeros(entries, dtype=PACKED_DESC_DTYPE)
    else:
        raw = np.zeros(entries, dtype=SPLIT_DESC_DTYPE)
        raw["flags"] = F_NEXT
        raw["next"] = (np.arange(entries) + 1) % entries  # one big loop of empty descriptors
    table = h.g.tables_base
    h.g.memory.write(table, raw.tobytes())
    expect_chain_error(h, [(table, entries * 16, F_INDIRECT)], BadIndirectTable)
    h.assert_still_serves()


def test_split_head_out_of_range_pushed_back_is_not_counted_twice():
    h = HostileRing(False)
    h.g.publish_heads([16])
    assert h.dev.pop(h.burst) == 1
    h.dev.push(h.burst)
    assert h.dev.errors == {"HeadOutOfRange": 1}


@LAYOUTS
def test_driver_add_burst_refuses_indirect_tables_that_were_not_negotiated(packed):
    g = GuestDriver(packed=packed, indirect=False)
    chains = np.zeros(1, dtype=DRIVER_CHAIN_DTYPE)
    chains[0] = (g.table_address(0), 0, 1, 0)
    segments = np.zeros(1, dtype=SEGMENT_DTYPE)
    segments[0] = (g.buffer_address(0), 16, 0, 0)
    assert g.queue.add_burst(chains, 1, segments) == 0
    assert g.queue.errors == {"BadIndirectTable": 1}
    dev = g.device()
    assert dev.pop(dev.new_burst()) == 0


def test_2_8_10_an_unknown_driver_event_flag_still_notifies():
    # A reserved flags value must not silence the device: a spurious wake-up is cheap, a
    # missed one hangs the driver.
    h = HostileRing(True)
    h.offer([(h.buf[0], 16, 0)])
    assert h.dev.pop(h.burst) == 1
    h.g.memory.view(h.g.addresses.driver, 4).view(np.uint16)[:] = [0, 3]
    h.dev.push(h.burst)
    assert h.dev.should_notify() is True


def test_burst_refuses_chains_beyond_the_last_pop():
    h = HostileRing(False)
    h.offer([(h.buf[0], 16, 0)])
    assert h.dev.pop(h.burst) == 1
    with pytest.raises(IndexError):
        h.burst.readable(1)
    with pytest.raises(IndexError):
        h.burst.write(5, b"x")
