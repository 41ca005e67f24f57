"""Inflight I/O tracking in the ring layer (QEMU docs/interop/vhost-user.rst, "Inflight I/O
tracking"), held to the spec's own steps (fastpath.testing.reference.inflight).

The layouts against bytes built by hand from the spec's C structs; the region sizes against
libvhost-user's and DPDK's formulas; the compiled queues against the reference devices, region
byte for byte after every step; and back-ends killed anywhere (the reference one between any two
of its stores, the compiled one between bursts), then a queue started over what is left: it
must pop again exactly the chains popped and never seen used by the driver, oldest first,
before anything new, and from then on the driver must get every buffer it offered back once.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from numba import njit

from fastpath._numba import NJIT
from fastpath.errors import RingFull
from fastpath.hv import GuestMemory
from fastpath.testing import reference as ref
from fastpath.testing.reference.inflight import (
    Crash,
    TrackedPackedDevice,
    TrackedSplitDevice,
    recover_packed,
    recover_split,
)
from fastpath.testing.reference.packed import advance
from fastpath.vhost_user._iotlb import Iotlb
from fastpath.vhost_user.wire import IotlbAccess, IotlbMessage, IotlbType
from fastpath.vring import (
    CHAIN_DTYPE,
    INFLIGHT_ALIGN,
    PACKED_INFLIGHT_DESC_DTYPE,
    PACKED_INFLIGHT_REGION_DTYPE,
    SPLIT_INFLIGHT_DESC_DTYPE,
    SPLIT_INFLIGHT_REGION_DTYPE,
    BadInflightRegion,
    InflightRegion,
    PackedDeviceQueue,
    SplitDeviceQueue,
    inflight_region_size,
    kernels,
    ring_layout,
)

# --- the layouts ---------------------------------------------------------------------------------

# The spec's C structs, naturally aligned as QEMU compiles them, written out as struct formats.
SPLIT_HEADER = struct.Struct("<QHHHH")          # features, version, desc_num, last_batch_head,
SPLIT_DESC = struct.Struct("<B5xHQ")            # used_idx / inflight, padding[5], next, counter
PACKED_HEADER = struct.Struct("<QHHHHHHBB7x3x")  # ..., used_wrap, old_used_wrap, padding[7]
PACKED_DESC = struct.Struct("<BxHHHQHHIQ")      # inflight, padding, next, last, num, counter,
#                                                 id, flags, len, addr


def test_the_region_layouts_are_the_spec_structs():
    assert (SPLIT_HEADER.size, SPLIT_DESC.size, PACKED_HEADER.size, PACKED_DESC.size) == (
        16, 16, 32, 32)
    assert SPLIT_INFLIGHT_REGION_DTYPE.itemsize == SPLIT_INFLIGHT_DESC_DTYPE.itemsize == 16
    assert PACKED_INFLIGHT_REGION_DTYPE.itemsize == PACKED_INFLIGHT_DESC_DTYPE.itemsize == 32


def test_a_split_region_reads_as_hand_built_bytes_say():
    data = SPLIT_HEADER.pack(0, 1, 4, 2, 0xFFFE) + b"".join(
        SPLIT_DESC.pack(k & 1, 3 - k, 0x0102_0304_0506_0708 + k) for k in range(4))
    buffer = np.zeros(inflight_region_size(4, False), np.uint8)
    buffer[:len(data)] = np.frombuffer(data, np.uint8)
    region = InflightRegion(buffer, 4, packed=False)
    header = region.header[0]
    assert (int(header["features"]), int(header["version"]), int(header["desc_num"]),
            int(header["last_batch_head"]), int(header["used_idx"])) == (0, 1, 4, 2, 0xFFFE)
    assert region.desc["inflight"].tolist() == [0, 1, 0, 1]
    assert region.desc["next"].tolist() == [3, 2, 1, 0]
    assert region.desc["counter"].tolist() == [0x0102_0304_0506_0708 + k for k in range(4)]


def test_a_packed_region_reads_as_hand_built_bytes_say():
    data = PACKED_HEADER.pack(0, 1, 3, 2, 1, 7, 5, 1, 0) + b"".join(
        PACKED_DESC.pack(k == 1, k + 1, 2, 3 - k, 100 + k, 0x4000 + k, 0x8002, 512 * k,
                         0x1234_5678_9000 + k) for k in range(3))
    buffer = np.zeros(inflight_region_size(3, True), np.uint8)
    buffer[:len(data)] = np.frombuffer(data, np.uint8)
    region = InflightRegion(buffer, 3, packed=True)
    header = region.header[0]
    assert [int(header[name]) for name in PACKED_INFLIGHT_REGION_DTYPE.names] == [
        0, 1, 3, 2, 1, 7, 5, 1, 0]
    desc = region.desc
    assert desc["inflight"].tolist() == [0, 1, 0]
    assert desc["next"].tolist() == [1, 2, 3]
    assert desc["last"].tolist() == [2, 2, 2]
    assert desc["num"].tolist() == [3, 2, 1]
    assert desc["counter"].tolist() == [100, 101, 102]
    assert desc["id"].tolist() == [0x4000, 0x4001, 0x4002]
    assert desc["flags"].tolist() == [0x8002] * 3
    assert desc["len"].tolist() == [0, 512, 1024]
    assert desc["addr"].tolist() == [0x1234_5678_9000 + k for k in range(3)]


def _align_up(n: int, to: int) -> int:
    return -(-n // to) * to


@pytest.mark.parametrize("queue_size", [*range(1, 1025), 2048, 4096, 8192, 16384, 32768])
def test_a_queue_region_is_as_large_as_libvhost_user_and_dpdk_make_it(queue_size):
    # libvhost-user (split only): ALIGN_UP(sizeof(VuDescStateSplit) * n + sizeof(uint16_t), 64);
    # DPDK: split ALIGN(16 * n + 8 + 2 * 4, 64), packed ALIGN(32 * n + 8 + 2 * 6 + 9, 64).
    assert INFLIGHT_ALIGN == 64
    if queue_size & (queue_size - 1) == 0:
        assert inflight_region_size(queue_size, False) == _align_up(16 * queue_size + 2, 64)
    assert inflight_region_size(queue_size, False) == _align_up(16 * queue_size + 16, 64)
    assert inflight_region_size(queue_size, True) == _align_up(32 * queue_size + 29, 64)


@pytest.mark.parametrize("queue_size", [0, 32769])
def test_a_queue_region_tracks_1_to_32768_descriptors(queue_size):
    with pytest.raises(ValueError):
        inflight_region_size(queue_size, False)


def test_a_region_must_hold_its_entries_writable_and_aligned():
    size = inflight_region_size(8, True)
    with pytest.raises(ValueError):
        InflightRegion(np.zeros(size - 1, np.uint8), 8, packed=True)
    readonly = np.zeros(size, np.uint8)
    readonly.flags.writeable = False
    with pytest.raises(ValueError):
        InflightRegion(readonly, 8, packed=True)
    with pytest.raises(ValueError):
        InflightRegion(np.zeros(size + 8, np.uint8)[1:size + 1], 8, packed=True)


# --- a ring, a reference driver and an inflight region -----------------------------------------

RING_BASE = 0x1000
TABLES = 0x4000
TABLE_STRIDE = 64
POOL = 0x8000
PIECE = 64
MEMORY_SIZE = 0x20000
MAX_SIZE = 16
MAX_PIECES = 3
assert TABLES + MAX_SIZE * TABLE_STRIDE <= POOL
assert POOL + MAX_SIZE * MAX_PIECES * PIECE <= MEMORY_SIZE


def region_buffer(desc_num: int, packed: bool) -> np.ndarray:
    """A zeroed, 64-byte aligned region, as a memfd mapping would be."""
    size = inflight_region_size(desc_num, packed)
    raw = np.zeros(size + INFLIGHT_ALIGN, np.uint8)
    skip = -raw.ctypes.data % INFLIGHT_ALIGN
    return raw[skip:skip + size]


@dataclass
class Buffer:
    """A buffer the driver offered: its serial (never reused), pool slots and table."""

    serial: int
    slots: list[int]
    table: int | None
    ndesc: int
    readable: bytes


@dataclass
class Rig:
    """One ring in its own guest memory, a reference driver offering numbered buffers, and an
    inflight region for the device side."""

    packed: bool
    size: int
    desc_num: int
    memory: GuestMemory = field(init=False)
    serials: int = 0
    in_flight: dict[int, Buffer] = field(default_factory=dict)   # driver id -> buffer
    added: list[Buffer] = field(default_factory=list)
    collected: list[int] = field(default_factory=list)           # serials, in order

    def __post_init__(self):
        self.memory = GuestMemory([(0, MEMORY_SIZE)])
        self.addresses = ring_layout(self.size, RING_BASE, self.packed)
        driver = ref.PackedDriver if self.packed else ref.SplitDriver
        self.driver = driver(self.memory, self.size, self.addresses, indirect=True)
        self.region = region_buffer(self.desc_num, self.packed)
        self._free_slots = list(range(MAX_SIZE * MAX_PIECES))
        self._free_tables = list(range(MAX_SIZE))

    def add(self, pieces: int, writable: int, indirect: bool) -> None:
        """Offer a buffer of `pieces` pieces, the last `writable` of them device-writable."""
        writable = min(writable, pieces)
        if indirect and not self._free_tables:
            return
        slots = [self._free_slots.pop() for _ in range(pieces)]
        serial = self.serials
        payload = serial.to_bytes(4, "little") * (PIECE // 4)
        addresses = [POOL + slot * PIECE for slot in slots]
        for address in addresses[:pieces - writable]:
            self.memory.write(address, payload)
        table = self._free_tables.pop() if indirect else None
        try:
            chain_id = self.driver.add(
                readable=[(a, PIECE) for a in addresses[:pieces - writable]],
                writable=[(a, PIECE) for a in addresses[pieces - writable:]],
                indirect_table=TABLES + table * TABLE_STRIDE if indirect else 0)
        except RingFull:
            self._free_slots += slots
            if indirect:
                self._free_tables.append(table)
            return
        self.serials += 1
        buffer = Buffer(serial, slots, table, 1 if indirect or not self.packed else pieces,
                        payload * (pieces - writable))
        self.in_flight[chain_id] = buffer
        self.added.append(buffer)

    def collect(self) -> None:
        """The driver takes back every used buffer it can see."""
        for chain_id, _ in self.driver.collect(256):
            buffer = self.in_flight.pop(chain_id)
            self._free_slots += buffer.slots
            if buffer.table is not None:
                self._free_tables.append(buffer.table)
            self.collected.append(buffer.serial)

    def inflight_region(self) -> InflightRegion:
        return InflightRegion(self.region, self.desc_num, self.packed)

    def compiled(self) -> CompiledSide:
        cls = PackedDeviceQueue if self.packed else SplitDeviceQueue
        return CompiledSide(self, cls(self.memory, self.size, self.addresses, indirect=True))

    def reference(self, crash_after: int | None = None) -> ReferenceSide:
        cls = TrackedPackedDevice if self.packed else TrackedSplitDevice
        return ReferenceSide(self, cls(self.memory, self.size, self.addresses,
                                       self.inflight_region(), crash_after=crash_after,
                                       indirect=True))


class CompiledSide:
    """fastpath.vring's device queue, chains kept as their records. `popped` are the serials
    popped, in the order first popped; `pops` every pop, pops again after a restart included."""

    def __init__(self, rig: Rig, queue):
        self.rig = rig
        self.queue = queue
        self.held: list[tuple[int, object]] = []   # (serial, record), in pop order
        self.popped: list[int] = []
        self.pops: list[int] = []

    def pop(self, max_chains: int) -> None:
        burst = self.queue.new_burst(max_chains)
        n = self.queue.pop(burst)
        for i in range(n):
            record = burst.chains[i].copy()
            assert not record["error"]
            buffer = self.rig.in_flight[int(record["id"])]
            assert burst.readable(i) == buffer.readable
            record["written"] = record["writable_len"] // 2
            self.held.append((buffer.serial, record))
            self.pops.append(buffer.serial)
            if buffer.serial not in self.popped:
                self.popped.append(buffer.serial)

    def push(self, picks: list[int]) -> None:
        chosen = _pick(self.held, picks)
        records = np.array([record for _, record in chosen], dtype=CHAIN_DTYPE)
        assert self.queue.push_chains(records) == len(chosen)


class ReferenceSide:
    """A tracked reference device; `popped` are the serials whose recording was complete."""

    def __init__(self, rig: Rig, device):
        self.rig = rig
        self.device = device
        self.held: list[tuple[int, object]] = []
        self._popped: list[int] = []

    @property
    def popped(self) -> list[int]:
        # The ids recorded since last asked, named by the buffer the driver has under each: a
        # chain recorded and not pushed yet is still the driver's in flight.
        for chain_id in self.device.recorded[len(self._popped):]:
            self._popped.append(self.rig.in_flight[chain_id].serial)
        return self._popped

    def pop(self, max_chains: int) -> None:
        chains = self.device.pop(max_chains)
        for chain in chains:
            buffer = self.rig.in_flight[chain.id]
            assert self.device.readable(chain) == buffer.readable
            self.held.append((buffer.serial, chain))
        assert self.popped[-len(chains):] == [s for s, _ in self.held[-len(chains):]] or not chains

    def push(self, picks: list[int]) -> None:
        chosen = _pick(self.held, picks)
        used = [(chain, chain.writable_len // 2) for _, chain in chosen]
        assert self.device.push(used) == len(chosen)


def _pick(held: list, picks: list[int]) -> list:
    chosen = []
    for pick in picks:
        if held:
            chosen.append(held.pop(pick % len(held)))
    return chosen


def run(rig: Rig, side, ops) -> None:
    for op in ops:
        if op[0] == "add":
            rig.add(*op[1:])
        elif op[0] == "pop":
            side.pop(op[1])
        elif op[0] == "push":
            side.push(op[1])
        else:
            rig.collect()


ADD = st.tuples(st.just("add"), st.integers(1, MAX_PIECES), st.integers(0, MAX_PIECES),
                st.booleans())
POP = st.tuples(st.just("pop"), st.integers(1, 6))
# Adds and pops twice as likely as pushes, so that there is something in flight to lose.
OPS = st.lists(st.one_of(ADD, ADD, POP, POP, st.tuples(st.just("push"), st.lists(
    st.integers(0, 63), max_size=3)), st.tuples(st.just("collect"))), max_size=40)
RINGS = st.one_of(
    st.tuples(st.just(False), st.sampled_from([4, 8, 16])),
    st.tuples(st.just(True), st.sampled_from([3, 4, 7, 16])),
).flatmap(lambda r: st.tuples(st.just(r[0]), st.just(r[1]), st.sampled_from([r[1], r[1] + 5])))
SETTINGS = settings(max_examples=300, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- the compiled queues write what the spec's steps write --------------------------------------


@SETTINGS
@given(ring=RINGS, ops=OPS)
def test_a_compiled_queue_records_what_the_spec_steps_record(ring, ops):
    packed, size, desc_num = ring
    compiled_rig, reference_rig = Rig(*ring), Rig(*ring)
    compiled = compiled_rig.compiled()
    assert compiled.queue.track_inflight(compiled_rig.inflight_region()) == 0
    reference = reference_rig.reference()
    for op in ops:
        run(compiled_rig, compiled, [op])
        run(reference_rig, reference, [op])
        assert compiled.popped == reference.popped
        assert np.array_equal(compiled_rig.region, reference_rig.region), op
        assert compiled_rig.memory.read(0, POOL) == reference_rig.memory.read(0, POOL), op


# --- killed anywhere, started again -------------------------------------------------------------


def expected_in_flight(rig: Rig, popped: list[int]) -> list[int]:
    """Serials popped (recording complete) that the driver never got back, oldest first."""
    rig.collect()
    done = set(rig.collected)
    return [serial for serial in popped if serial not in done]


def restart(rig: Rig, popped: list[int]) -> CompiledSide:
    """A compiled queue over the ring and region a dead back-end left, started from a position
    the front-end got wrong, held to the spec's reconnection steps on a copy of the region."""
    expected = expected_in_flight(rig, popped)
    copy = InflightRegion(rig.region.copy(), rig.desc_num, rig.packed)
    side = rig.compiled()
    queue = side.queue
    if rig.packed:
        # QEMU 7.2 sends a stale base for a packed ring after a back-end crash.
        queue.avail_state = queue.used_state = (0, 1)
        heads, used, avail = recover_packed(copy, rig.memory, rig.addresses, rig.size)
        ids = [int(copy.desc["id"][copy.desc["last"][head]]) for head in heads]
    else:
        ids = recover_split(copy, int.from_bytes(
            rig.memory.read(rig.addresses.device + 2, 2), "little"))
    assert queue.track_inflight(rig.inflight_region()) == len(expected)
    assert np.array_equal(copy.buffer, rig.region)
    assert queue.resubmit_ids() == ids
    assert [rig.in_flight[i].serial for i in ids] == expected
    # Every slot before the next to pop was popped: the ring goes on after the last one.
    if rig.packed:
        slots = sum(rig.added[serial].ndesc for serial in range(len(popped)))
        assert queue.avail_state == avail == advance(0, 1, slots, rig.size)
        assert queue.used_state == used
    else:
        assert queue.last_avail_idx == len(popped) & 0xFFFF
    side.popped = list(popped)
    return side


def drain(rig: Rig, side: CompiledSide, expected: list[int]) -> None:
    """Pop everything: what was in flight first, oldest first, then what was never popped, in
    the order offered; use it all, and the driver has had every buffer back exactly once."""
    first, before = len(side.pops), set(side.popped)
    while True:
        count = len(side.pops)
        side.pop(4)
        if len(side.pops) == count:
            break
    never_popped = [b.serial for b in rig.added if b.serial not in before]
    assert side.pops[first:] == expected + never_popped
    assert side.queue.resubmit_pending == 0
    side.push(list(range(len(side.held))))
    rig.collect()
    assert sorted(rig.collected) == list(range(rig.serials))


def killed_and_restarted(ring: tuple[bool, int, int], before: list, after: list,
                         when: float) -> tuple[bool, int]:
    """Run `before` on a tracked reference device killed before one of the stores they make
    (`when` of the way through them; 1: after the last), start a compiled queue over what is
    left, run `after` on it, kill it too (between bursts), start another and drain the ring.
    Returns whether the first one was killed before the end, and how many chains were in
    flight at the first restart."""
    dry_run = Rig(*ring)
    counting = dry_run.reference()
    run(dry_run, counting, before)
    rig = Rig(*ring)
    reference = rig.reference(crash_after=round(when * counting.device.stores_made))
    try:
        run(rig, reference, before)
        killed = False
    except Crash:
        killed = True
    popped = reference.popped
    in_flight = len(expected_in_flight(rig, popped))
    side = restart(rig, popped)
    run(rig, side, after)
    expected = expected_in_flight(rig, side.popped)
    side = restart(rig, side.popped)
    drain(rig, side, expected)
    return killed, in_flight


@SETTINGS
@given(ring=RINGS, before=OPS, after=OPS, when=st.floats(0, 1))
def test_a_backend_killed_between_any_two_stores_loses_and_repeats_nothing(ring, before, after,
                                                                           when):
    killed, in_flight = killed_and_restarted(ring, before, after, when)
    event("killed" if killed else "ran to the end")
    event(f"in flight at the restart: {min(in_flight, 4)}+")


def random_ops(rng: random.Random, count: int) -> list:
    ops = []
    for _ in range(count):
        kind = rng.choices(["add", "pop", "push", "collect"], [4, 3, 2, 1])[0]
        if kind == "add":
            ops.append(("add", rng.randint(1, MAX_PIECES), rng.randint(0, MAX_PIECES),
                        rng.random() < 0.3))
        elif kind == "pop":
            ops.append(("pop", rng.randint(1, 6)))
        elif kind == "push":
            ops.append(("push", [rng.randrange(64) for _ in range(rng.randint(0, 3))]))
        else:
            ops.append(("collect",))
    return ops


@pytest.mark.parametrize("ring", [(False, 4, 4), (False, 16, 21), (True, 3, 3), (True, 16, 16)],
                         ids=["split-4", "split-16-of-21", "packed-3", "packed-16"])
def test_long_runs_killed_anywhere_lose_and_repeat_nothing(ring):
    # Seeded walks, many laps of the ring each: kills with several chains in flight, for sure.
    rng = random.Random(f"inflight-{ring}")
    runs = [killed_and_restarted(ring, random_ops(rng, 150), random_ops(rng, 150),
                                 rng.random()) for _ in range(100)]
    assert sum(killed and in_flight >= 2 for killed, in_flight in runs) >= 15


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_a_restarted_queue_pops_the_chains_in_flight_before_new_ones_oldest_first(packed):
    rig = Rig(packed, 8, 8)
    side = rig.compiled()
    side.queue.track_inflight(rig.inflight_region())
    for pieces in (1, 2, 1, 3, 1):
        rig.add(pieces, 1, False)
    side.pop(8)
    side.push([1, 2])              # the second and the fourth: out of order, as blk completes
    rig.collect()
    assert rig.collected == [1, 3]
    side = restart(rig, side.popped)
    assert [rig.in_flight[i].serial for i in side.queue.resubmit_ids()] == [0, 2, 4]
    rig.add(1, 0, False)
    side.pop(2)
    assert side.pops == [0, 2]
    assert side.queue.resubmit_pending == 1
    assert side.queue.enable_kicks()   # the one left to pop again gets no kick either
    drain(rig, side, [4])


@njit(**NJIT)
def _pop_and_use(packed, device, chains, max_chains, segments, max_segments):
    # A compiled poller's round: one pop, everything used; the count popped.
    n = kernels.pop_burst(packed, device, chains, max_chains, segments, max_segments)
    if n > 0:
        kernels.push_burst(packed, device, chains, n)
    return n


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_a_compiled_poller_gets_what_was_in_flight_first_through_the_kernels(packed):
    # blk's request path pops and pushes through the kernels: a restarted queue serves it
    # the chains in flight first, records what it pushes, and nothing is left to pop again.
    rig = Rig(packed, 8, 8)
    side = rig.compiled()
    side.queue.track_inflight(rig.inflight_region())
    for pieces in (2, 1, 3):
        rig.add(pieces, 0, False)
    side.pop(8)
    side.push([1])
    side = restart(rig, side.popped)
    rig.add(1, 0, False)
    burst = side.queue.new_burst(8)
    n = _pop_and_use(packed, side.queue.handle, burst.chains.ctypes.data, 8,
                     burst.segments.ctypes.data, len(burst.segments))
    assert [rig.in_flight[int(i)].serial for i in burst.chains["id"][:n]] == [0, 2, 3]
    rig.collect()
    assert sorted(rig.collected) == [0, 1, 2, 3]
    assert side.queue.resubmit_pending == 0
    assert not rig.inflight_region().desc["inflight"].any()


def test_a_packed_restart_takes_the_ring_position_from_the_region_whatever_the_base():
    rig = Rig(True, 7, 7)
    side = rig.compiled()
    side.queue.track_inflight(rig.inflight_region())
    for lap in range(2):               # past the end of the ring: the wrap counters flip
        for _ in range(5):
            rig.add(1 + lap, 0, False)
        side.pop(8)
        side.push(list(range(4)))
        rig.collect()
    rig.add(1, 0, False)
    rig.add(1, 0, False)
    side.pop(8)
    side.push([0])
    state = side.queue.avail_state, side.queue.used_state
    assert state == ((6, 0), (5, 0))
    side = restart(rig, side.popped)
    assert (side.queue.avail_state, side.queue.used_state) == state
    drain(rig, side, expected_in_flight(rig, side.popped))


# --- regions a ring cannot start from -----------------------------------------------------------


def started_region(packed: bool, size: int = 8, desc_num: int = 8) -> Rig:
    """A ring of 4 two-piece chains popped, one of them used, recorded in its region."""
    rig = Rig(packed, size, desc_num)
    side = rig.compiled()
    side.queue.track_inflight(rig.inflight_region())
    for _ in range(4):
        rig.add(2, 1, False)
    side.pop(4)
    side.push([0])
    return rig


def corrupt(packed: bool, change) -> None:
    rig = started_region(packed)
    change(rig.inflight_region())
    with pytest.raises(BadInflightRegion):
        rig.compiled().queue.track_inflight(rig.inflight_region())


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
@pytest.mark.parametrize("change", [
    lambda r: r.header.__setitem__("version", 2),
    lambda r: r.header.__setitem__("features", 1),
    lambda r: r.header.__setitem__("desc_num", 9),
    lambda r: r.desc["inflight"].__setitem__(5, 2),
], ids=["version", "features", "desc_num", "inflight-2"])
def test_a_region_of_another_format_is_refused(packed, change):
    corrupt(packed, change)


def test_a_split_region_with_a_head_past_the_ring_is_refused():
    rig = started_region(False, size=4, desc_num=8)
    rig.inflight_region().desc["inflight"][7] = 1
    with pytest.raises(BadInflightRegion):
        rig.compiled().queue.track_inflight(rig.inflight_region())


def test_a_split_region_whose_last_batch_runs_off_the_region_is_refused():
    def change(region):
        region.header["used_idx"] = (int(region.header["used_idx"][0]) - 2) & 0xFFFF
        region.header["last_batch_head"] = 100
    corrupt(False, change)


@pytest.mark.parametrize("change", [
    lambda r: r.desc["num"].__setitem__(int(np.flatnonzero(r.desc["inflight"])[0]), 0),
    lambda r: r.desc["num"].__setitem__(int(np.flatnonzero(r.desc["inflight"])[0]), 99),
    lambda r: r.desc["last"].__setitem__(int(np.flatnonzero(r.desc["inflight"])[0]), 7),
    lambda r: r.desc["next"].__setitem__(int(np.flatnonzero(r.desc["inflight"])[0]), 300),
    lambda r: r.desc["inflight"].__setitem__(int(r.desc["next"][np.flatnonzero(
        r.desc["inflight"])[0]]), 1),
    lambda r: r.header.__setitem__("used_idx", 8),
    lambda r: r.desc["next"].__setitem__(int(r.header["free_head"][0]),
                                         int(r.header["free_head"][0])),
], ids=["empty-chain", "long-chain", "wrong-last", "chain-leaves", "chains-overlap",
        "used-past-ring", "free-list-loop"])
def test_a_packed_region_with_chains_that_cannot_be_is_refused(change):
    corrupt(True, change)


def test_a_region_smaller_than_the_ring_or_of_the_other_type_is_refused():
    rig = Rig(False, 8, 4)
    with pytest.raises(BadInflightRegion):
        rig.compiled().queue.track_inflight(InflightRegion(region_buffer(4, False), 4, False))
    with pytest.raises(ValueError):
        rig.compiled().queue.track_inflight(InflightRegion(region_buffer(8, True), 8, True))


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_a_reset_queue_starts_its_region_afresh(packed):
    rig = started_region(packed)
    queue = rig.compiled().queue
    assert queue.track_inflight(rig.inflight_region()) == 3
    queue.reset()
    assert queue.resubmit_pending == 0
    assert rig.inflight_region().holds_state
    assert not rig.inflight_region().desc["inflight"].any()


# --- with an IOTLB -------------------------------------------------------------------------------

@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_a_chain_to_pop_again_waits_for_its_iotlb_translation(packed):
    # VIRTIO_F_ACCESS_PLATFORM (hv.md §5.4): a chain a restart left in flight whose buffer has
    # no translation yet is not consumed as an error: it waits, as a new chain does, and the
    # chains to pop again keep their order.
    rig = Rig(packed, 16, 16)
    rig.add(1, 0, False)
    rig.add(1, 0, False)
    first = rig.compiled()
    first.queue.track_inflight(rig.inflight_region())
    first.pop(2)
    side = restart(rig, first.popped)
    missing = POOL + rig.added[1].slots[0] * PIECE
    iotlb = Iotlb()

    def map_range(start, end):
        # IOVA = GPA: what matters here is what the IOTLB holds.
        iotlb.update(IotlbMessage(start, end - start, rig.memory.guest_to_user(start),
                                  IotlbAccess.READ_WRITE, IotlbType.UPDATE), rig.memory)

    map_range(0, missing)
    map_range(missing + PIECE, MEMORY_SIZE)
    side.queue.use_iotlb(iotlb.readable, iotlb.writable)
    side.pop(4)
    assert side.pops == [0] and side.queue.resubmit_pending == 1
    assert side.queue.take_miss() == (missing, IotlbAccess.READ)
    map_range(missing, missing + PIECE)
    side.pop(4)
    assert side.pops == [0, 1] and side.queue.resubmit_pending == 0
