"""The compiled rings against the plain-Python reference (fastpath.testing.reference).

Two rings, each in its own GuestMemory of the same layout, get the same operations: one is served
by compiled code, the other by the reference, and after every step both must agree on what was
popped (ids, slots, bytes), what was used, every kick and notification decision and the free
counts. "Cross" runs pair a compiled driver with a reference device on one ring and a reference
driver with a compiled device on the other, so each side also proves it speaks the wire format.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from fastpath.errors import (
    AvailIndexJump,
    BadIndirectTable,
    ChainLoop,
    ChainTooLarge,
    DescriptorOutsideMemory,
    HeadOutOfRange,
    NextOutOfRange,
    QueueBroken,
    VringError,
    WriteOrderViolation,
)
from fastpath.hv import GuestMemory
from fastpath.testing import GuestDriver
from fastpath.testing import reference as ref
from fastpath.vring import (
    DRIVER_CHAIN_DTYPE,
    SEG_WRITE,
    SEGMENT_DTYPE,
    USED_ELEM_DTYPE,
    Burst,
    PackedDeviceQueue,
    PackedDriverQueue,
    SplitDeviceQueue,
    SplitDriverQueue,
    ring_layout,
)

# One memory layout for every ring here: the ring, one indirect table per ring slot, a pool of
# small buffers. Sized for the largest queue used (16) with every chain at MAX_PIECES pieces.
RING_BASE = 0x1000
TABLES = 0x2000
TABLE_STRIDE = 128
POOL = 0x4000
PIECE = 64
MAX_PIECES = 6
MAX_SIZE = 16
MEMORY_SIZE = 0x10000
assert TABLES + MAX_SIZE * TABLE_STRIDE <= POOL
assert POOL + MAX_PIECES * MAX_SIZE * PIECE <= MEMORY_SIZE
assert MAX_PIECES * 16 <= TABLE_STRIDE

F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
F_AVAIL = 1 << 7
EVENT_DESC = 2


# -- one ring, driven by compiled or reference code on either side ------------------------------

class Popped(NamedTuple):
    """What a device's pop says about one chain, in terms both implementations share."""

    id: int
    ndesc: int
    error: str | None
    pieces: tuple[tuple[int, int, bool], ...]  # non-empty pieces: (gpa, length, writable)
    readable: bytes
    writable_len: int


class CompiledDevice:
    """fastpath.vring's device queue with the reference device's pop/push shape."""

    def __init__(self, memory: GuestMemory, size: int, addresses, packed: bool, **features):
        cls = PackedDeviceQueue if packed else SplitDeviceQueue
        self.queue = cls(memory, size, addresses, **features)
        self.memory = memory
        self.packed = packed
        self.size = size

    def pop(self, max_chains: int) -> list[tuple[object, Popped]]:
        burst = Burst(max_chains, MAX_PIECES * max_chains + self.size)
        out = []
        for i in range(self.queue.pop(burst)):
            c = burst.chains[i]
            segs = burst.segments[int(c["first_seg"]) : int(c["first_seg"]) + int(c["nseg"])]
            pieces = tuple(
                (self._guest_address(int(s["addr"])), int(s["len"]), bool(s["flags"] & SEG_WRITE))
                for s in segs
            )
            error = burst.error(i)
            out.append(((burst, i), Popped(int(c["id"]), int(c["ndesc"]),
                                           error.__name__ if error else None, pieces,
                                           burst.readable(i), int(c["writable_len"]))))
        return out

    def _guest_address(self, host: int) -> int:
        for row in self.memory.table:
            if row["host_addr"] <= host < row["host_addr"] + row["size"]:
                return int(row["guest_phys_addr"] + (host - row["host_addr"]))
        raise AssertionError(f"segment at host address {host:#x} is outside guest memory")

    def push(self, items: list[tuple[object, bytes, int]]) -> int:
        records = []
        for (burst, i), data, written in items:
            burst.write(i, data)
            record = burst.chains[i : i + 1].copy()
            record["written"] = written
            records.append(record)
        return self.queue.push_chains(np.concatenate(records))

    def should_notify(self) -> bool:
        return self.queue.should_notify()

    def enable_kicks(self) -> int:
        return self.queue.enable_kicks()

    def disable_kicks(self) -> None:
        self.queue.disable_kicks()

    def restore(self, idx: int) -> None:
        """Split only: continue from avail and used index idx (vhost-user VRING_BASE)."""
        self.queue.last_avail_idx = idx
        self.queue.used_idx = idx

    def reset(self) -> None:
        self.queue.reset()

    @property
    def state(self):
        q = self.queue
        return (q.avail_state, q.used_state) if self.packed else (q.last_avail_idx, q.used_idx)

    @property
    def errors(self) -> dict[str, int]:
        return self.queue.errors


class ReferenceDevice:
    """The reference device with the shape the tests use for both."""

    def __init__(self, memory: GuestMemory, size: int, addresses, packed: bool, **features):
        cls = ref.PackedDevice if packed else ref.SplitDevice
        self.device = cls(memory, size, addresses, **features)
        self.packed = packed

    def pop(self, max_chains: int) -> list[tuple[object, Popped]]:
        return [(c, Popped(c.id, c.ndesc, c.error,
                           tuple((p.gpa, p.length, p.writable) for p in c.pieces if p.length),
                           self.device.readable(c), c.writable_len))
                for c in self.device.pop(max_chains)]

    def push(self, items: list[tuple[object, bytes, int]]) -> int:
        for chain, data, _ in items:
            self.device.write(chain, data)
        return self.device.push([(chain, written) for chain, _, written in items])

    def should_notify(self) -> bool:
        return self.device.should_notify()

    def enable_kicks(self) -> int:
        return self.device.enable_kicks()

    def disable_kicks(self) -> None:
        self.device.disable_kicks()

    def restore(self, idx: int) -> None:
        self.device.last_avail_idx = idx
        self.device.used_idx = idx

    def reset(self) -> None:
        self.device.reset()

    @property
    def state(self):
        d = self.device
        return (d.avail_state, d.used_state) if self.packed else (d.last_avail_idx, d.used_idx)

    @property
    def errors(self) -> dict[str, int]:
        return dict(self.device.errors)


def compiled_driver(memory, size, addresses, packed, **features):
    return (PackedDriverQueue if packed else SplitDriverQueue)(memory, size, addresses, **features)


def reference_driver(memory, size, addresses, packed, **features):
    return (ref.PackedDriver if packed else ref.SplitDriver)(memory, size, addresses, **features)


def driver_state(driver, packed: bool):
    return driver.avail_state if packed else driver.avail_idx


@dataclass
class Ring:
    memory: GuestMemory
    driver: object
    device: object


def make_ring(packed: bool, size: int, driver_factory, device_class, **features) -> Ring:
    memory = GuestMemory([(0, MEMORY_SIZE)])
    addresses = ring_layout(size, RING_BASE, packed)
    driver = driver_factory(memory, size, addresses, packed, **features)
    return Ring(memory, driver, device_class(memory, size, addresses, packed, **features))


def outcome(call):
    """("ok", value) or ("raised", exception class name): what both sides must agree on."""
    try:
        return ("ok", call())
    except (VringError, ValueError) as e:
        return ("raised", type(e).__name__)


@dataclass
class Offer:
    """A buffer the driver has in flight, as the test laid it out."""

    slots: list[int]
    table: int | None
    readable: bytes
    pieces: tuple[tuple[int, int, bool], ...]
    writable: list[tuple[int, int]]


# Who serves rings A and B: (driver, device) each.
MIRROR = ((compiled_driver, CompiledDevice), (reference_driver, ReferenceDevice))
CROSS = ((compiled_driver, ReferenceDevice), (reference_driver, CompiledDevice))
REFERENCE_DRIVERS = ((reference_driver, CompiledDevice), (reference_driver, ReferenceDevice))


class Harness:
    """Rings A and B fed the same operations; every method asserts that both answered alike."""

    def __init__(self, packed: bool, size: int, pairs=MIRROR, *, event_idx: bool = False,
                 indirect: bool = False):
        self.packed, self.size = packed, size
        self.event_idx, self.indirect = event_idx, indirect
        features = {"event_idx": event_idx, "indirect": indirect}
        self.rings = [make_ring(packed, size, driver, device, **features)
                      for driver, device in pairs]
        self.free_pieces = list(range(MAX_PIECES * MAX_SIZE - 1, -1, -1))
        self.free_tables = list(range(MAX_SIZE - 1, -1, -1))
        self.in_flight: dict[int, Offer] = {}
        self.popped: list[tuple[list[object], Popped]] = []
        self.used_data: dict[int, bytes] = {}
        self.calls_on = True

    def close(self) -> None:
        for ring in self.rings:
            ring.memory.close()

    def _same(self, what: str, answers: list):
        assert answers[0] == answers[1], f"{what}: ring A {answers[0]!r}, ring B {answers[1]!r}"
        return answers[0]

    # driver side

    def add(self, pieces: list[tuple[bool, int]], indirect: bool, rng: random.Random):
        """Offer a buffer of (writable, length) pieces (readable ones are put first).

        A direct buffer is cut to size + 1 pieces: one more than the queue holds is refused
        just the same, and longer ones would only waste steps on it.
        """
        indirect = indirect and self.indirect
        pieces = sorted(pieces if indirect else pieces[: self.size + 1], key=lambda p: p[0])
        slots = [self.free_pieces.pop() for _ in pieces]
        table = self.free_tables.pop() if indirect else None
        table_gpa = TABLES + TABLE_STRIDE * table if table is not None else 0
        readable, writable, data = [], [], b""
        for (is_writable, length), slot in zip(pieces, slots, strict=True):
            gpa = POOL + PIECE * slot
            if is_writable:
                writable.append((gpa, length))
            else:
                chunk = rng.randbytes(length)
                for ring in self.rings:
                    ring.memory.write(gpa, chunk)
                readable.append((gpa, length))
                data += chunk
        kind, value = self._same("add", [
            outcome(lambda r=ring: r.driver.add(readable, writable, indirect_table=table_gpa))
            for ring in self.rings
        ])
        if kind == "ok":
            assert value not in self.in_flight
            shown = tuple((a, n, False) for a, n in readable if n)
            shown += tuple((a, n, True) for a, n in writable if n)
            self.in_flight[value] = Offer(slots, table, data, shown, writable)
        else:
            self.free_pieces.extend(reversed(slots))
            if table is not None:
                self.free_tables.append(table)
        return kind, value

    def should_kick(self) -> bool:
        return self._same("should_kick", [ring.driver.should_kick() for ring in self.rings])

    def collect(self, max_n: int) -> list[tuple[int, int]]:
        used = self._same("collect", [ring.driver.collect(max_n) for ring in self.rings])
        for chain_id, length in used:
            offer = self.in_flight.pop(chain_id)
            expected = self.used_data.pop(chain_id)
            assert length == len(expected)
            for ring in self.rings:
                got = b"".join(ring.memory.read(a, n) for a, n in offer.writable)[:length]
                assert got == expected, f"buffer {chain_id}: the device's bytes did not arrive"
            self.free_pieces.extend(reversed(offer.slots))
            if offer.table is not None:
                self.free_tables.append(offer.table)
        return used

    def enable_calls(self) -> int:
        self.calls_on = True
        return self._same("enable_calls", [ring.driver.enable_calls() for ring in self.rings])

    def disable_calls(self) -> None:
        self.calls_on = False
        for ring in self.rings:
            ring.driver.disable_calls()

    def set_calls(self, on: bool) -> None:
        if on:
            self.enable_calls()
        else:
            self.disable_calls()

    # device side

    def pop(self, max_chains: int) -> list[Popped]:
        popped = [ring.device.pop(max_chains) for ring in self.rings]
        summaries = self._same("pop", [[s for _, s in got] for got in popped])
        for k, s in enumerate(summaries):
            offer = self.in_flight[s.id]
            assert s.error is None
            assert s.readable == offer.readable
            assert s.pieces == offer.pieces
            assert s.writable_len == sum(n for _, n in offer.writable)
            assert all(s.id != p.id for _, p in self.popped)
            self.popped.append(([got[k][0] for got in popped], s))
        return summaries

    def push(self, order: list[int], written: list[int], rng: random.Random) -> None:
        """Push popped chains order[k] (indices into the popped list), claiming written[k]."""
        items: list[list] = [[], []]
        for index, claimed in zip(order, written, strict=True):
            handles, s = self.popped[index]
            data = rng.randbytes(min(claimed, s.writable_len))
            self.used_data[s.id] = data
            for side in (0, 1):
                items[side].append((handles[side], data, claimed))
        counts = [ring.device.push(items[side]) for side, ring in enumerate(self.rings)]
        assert self._same("push", counts) == len(order)
        for index in sorted(order, reverse=True):
            del self.popped[index]

    def should_notify(self) -> bool:
        return self._same("should_notify", [ring.device.should_notify() for ring in self.rings])

    def enable_kicks(self) -> int:
        return self._same("enable_kicks", [ring.device.enable_kicks() for ring in self.rings])

    def disable_kicks(self) -> None:
        for ring in self.rings:
            ring.device.disable_kicks()

    def set_kicks(self, on: bool) -> None:
        if on:
            self.enable_kicks()
        else:
            self.disable_kicks()

    def device_asks_kick_at(self, ahead: int) -> None:
        """Packed, EVENT_IDX: write a device event asking for a kick `ahead` slots on (§2.8.10)."""
        (pos, wrap), _ = self.rings[0].device.state
        pos += ahead % self.size
        if pos >= self.size:
            pos, wrap = pos - self.size, wrap ^ 1
        addresses = ring_layout(self.size, RING_BASE, True)
        for ring in self.rings:
            ring.memory.write(addresses.device, (pos | wrap << 15).to_bytes(2, "little")
                              + EVENT_DESC.to_bytes(2, "little"))

    # both

    def restore(self, idx: int) -> None:
        """Split: restart both (empty) rings with every index at idx; needs reference drivers."""
        for ring in self.rings:
            ring.driver.start_at(idx)
            ring.device.restore(idx)
        self.enable_kicks()
        self.enable_calls()

    def check(self) -> None:
        self._same("num_free", [ring.driver.num_free for ring in self.rings])
        self._same("driver state", [driver_state(ring.driver, self.packed) for ring in self.rings])
        self._same("device state", [ring.device.state for ring in self.rings])
        assert self._same("device errors", [ring.device.errors for ring in self.rings]) == {}

    def run_random(self, rng: random.Random, steps: int) -> None:
        """A seeded mix of every operation, for the plain (non-hypothesis) tests."""
        for _ in range(steps):
            op = rng.randrange(8)
            if op < 3:
                n = rng.randint(1, MAX_PIECES)
                pieces = [(rng.random() < 0.5, rng.randint(0, PIECE)) for _ in range(n)]
                self.add(pieces, rng.random() < 0.5, rng)
            elif op == 3:
                self.pop(rng.randint(1, self.size + 1))
            elif op == 4 and self.popped:
                order = rng.sample(range(len(self.popped)), rng.randint(1, len(self.popped)))
                claims = [rng.randint(0, self.popped[i][1].writable_len + 8) for i in order]
                self.push(order, claims, rng)
            elif op == 5:
                self.collect(rng.randint(1, self.size + 1))
            elif op == 6:
                self.should_kick()
                self.should_notify()
            elif self.packed and self.event_idx and rng.random() < 0.2:
                self.device_asks_kick_at(rng.randrange(self.size))
            elif rng.random() < 0.5:
                self.set_calls(rng.random() < 0.7)
            else:
                self.set_kicks(rng.random() < 0.7)
            self.check()

    def drain(self) -> None:
        """Pop, push and collect everything in flight."""
        self.pop(self.size)
        if self.popped:
            self.push(list(range(len(self.popped))), [0] * len(self.popped), random.Random(0))
        self.collect(self.size)
        self.check()
        assert not self.in_flight and not self.popped


# -- hypothesis: random operation sequences, small rings so that indices and wraps go round ----

PIECES = st.lists(st.tuples(st.booleans(), st.integers(0, PIECE)), min_size=1,
                  max_size=MAX_PIECES)
SEEDS = st.integers(0, 2**32 - 1)


class RingMachine(RuleBasedStateMachine):
    """Rules over a Harness; subclasses choose the layout and its queue sizes.

    Hypothesis switches a random subset of rules off for each run ("swarm testing"), so the
    steps that move buffers along come in more than one rule: a run rarely loses all of them.
    """

    packed = False
    harness: Harness | None = None

    def _start(self, size, event_idx, indirect, cross):
        self.harness = Harness(self.packed, size, CROSS if cross else MIRROR,
                               event_idx=event_idx, indirect=indirect)

    def teardown(self):
        if self.harness:
            self.harness.close()

    @rule(pieces=PIECES, indirect=st.booleans(), seed=SEEDS)
    def add(self, pieces, indirect, seed):
        self.harness.add(pieces, indirect, random.Random(seed))

    @rule(buffers=st.lists(st.tuples(PIECES, st.booleans()), min_size=1, max_size=4),
          seed=SEEDS)
    def add_batch_and_kick(self, buffers, seed):
        rng = random.Random(seed)
        for pieces, indirect in buffers:
            self.harness.add(pieces, indirect, rng)
        self.harness.should_kick()

    @rule(max_chains=st.integers(1, MAX_SIZE + 1))
    def pop(self, max_chains):
        self.harness.pop(max_chains)

    @precondition(lambda self: self.harness.popped)
    @rule(data=st.data())
    def push(self, data):
        self._push_some(data, everything=False)

    @rule(max_chains=st.integers(1, MAX_SIZE + 1), data=st.data())
    def serve_and_notify(self, max_chains, data):
        self.harness.pop(max_chains)
        if self.harness.popped:
            self._push_some(data, everything=True)
        self.harness.should_notify()

    def _push_some(self, data, everything: bool):
        h = self.harness
        order = data.draw(st.permutations(range(len(h.popped))))
        if not everything:
            order = order[: data.draw(st.integers(1, len(order)))]
        claims = [data.draw(st.integers(0, h.popped[i][1].writable_len + 8)) for i in order]
        h.push(order, claims, random.Random(data.draw(SEEDS)))

    @rule(max_n=st.integers(1, MAX_SIZE + 1))
    def collect(self, max_n):
        self.harness.collect(max_n)

    @rule(max_chains=st.integers(1, MAX_SIZE + 1), data=st.data())
    def round_trip(self, max_chains, data):
        self.serve_and_notify(max_chains, data)
        self.harness.collect(MAX_SIZE)

    @rule(pieces=PIECES, indirect=st.booleans(), max_chains=st.integers(1, MAX_SIZE + 1),
          data=st.data())
    def add_kick_and_round_trip(self, pieces, indirect, max_chains, data):
        self.harness.add(pieces, indirect, random.Random(data.draw(SEEDS)))
        self.harness.should_kick()
        self.round_trip(max_chains, data)

    @rule()
    def should_kick(self):
        self.harness.should_kick()

    @rule()
    def should_notify(self):
        self.harness.should_notify()

    @rule(on=st.booleans())
    def calls(self, on):
        self.harness.set_calls(on)

    @rule(on=st.booleans())
    def kicks(self, on):
        self.harness.set_kicks(on)

    @invariant()
    def agree(self):
        if self.harness:
            self.harness.check()


class SplitRingMachine(RingMachine):
    packed = False

    @initialize(size=st.sampled_from([4, 8, 16]), event_idx=st.booleans(),
                indirect=st.booleans(), cross=st.booleans())
    def start(self, size, event_idx, indirect, cross):
        self._start(size, event_idx, indirect, cross)


class PackedRingMachine(RingMachine):
    packed = True

    @initialize(size=st.sampled_from([3, 5, 8]), event_idx=st.booleans(),
                indirect=st.booleans(), cross=st.booleans())
    def start(self, size, event_idx, indirect, cross):
        self._start(size, event_idx, indirect, cross)

    @precondition(lambda self: self.harness.event_idx)
    @rule(ahead=st.integers(0, 7))
    def device_asks_kick_at(self, ahead):
        self.harness.device_asks_kick_at(ahead)


MACHINE_SETTINGS = settings(max_examples=100, stateful_step_count=100, deadline=None,
                            database=None,
                            suppress_health_check=[HealthCheck.too_slow])


def test_2_7_split_driver_and_device_agree_with_the_reference():
    run_state_machine_as_test(SplitRingMachine, settings=MACHINE_SETTINGS)


def test_2_8_packed_driver_and_device_agree_with_the_reference():
    run_state_machine_as_test(PackedRingMachine, settings=MACHINE_SETTINGS)


# -- seeded walks: many laps of every ring, for sure, whatever the generator favours ------------

@pytest.mark.parametrize(("packed", "size"), [(False, 4), (False, 16), (True, 3), (True, 8)],
                         ids=["split-4", "split-16", "packed-3", "packed-8"])
@pytest.mark.parametrize("event_idx", [False, True], ids=["flags", "event_idx"])
@pytest.mark.parametrize("indirect", [False, True], ids=["direct", "indirect"])
def test_2_7_and_2_8_compiled_and_reference_agree_over_many_laps(packed, size, event_idx,
                                                                 indirect):
    h = Harness(packed, size, MIRROR, event_idx=event_idx, indirect=indirect)
    try:
        h.run_random(random.Random(f"{packed}{size}{event_idx}{indirect}"), 1500)
        h.drain()
        device = h.rings[1].device.device
        assert device.popped >= 4 * size, "the walk did not go round the ring"
    finally:
        h.close()


# -- cross-checks: each implementation faces the other on one ring ------------------------------

@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
@pytest.mark.parametrize("event_idx", [False, True], ids=["flags", "event_idx"])
@pytest.mark.parametrize("indirect", [False, True], ids=["direct", "indirect"])
def test_2_7_13_and_2_8_21_reference_and_compiled_sides_interoperate(packed, event_idx,
                                                                     indirect):
    # Ring A: compiled driver -> reference device. Ring B: reference driver -> compiled device.
    size = 8 if not packed else 5
    h = Harness(packed, size, CROSS, event_idx=event_idx, indirect=indirect)
    try:
        h.run_random(random.Random(f"{packed}{event_idx}{indirect}"), 400)
        h.drain()
        assert h.in_flight == {} and h.rings[0].driver.num_free == size
    finally:
        h.close()


# -- §2.7.6/§2.7.8: the 16-bit idx fields wrap at 65536 -----------------------------------------

@pytest.mark.parametrize("event_idx", [False, True], ids=["flags", "event_idx"])
def test_2_7_6_compiled_device_and_reference_wrap_avail_and_used_idx(event_idx):
    # Both rings have reference drivers (only they can start mid-way); ring A's device is
    # compiled, ring B's the reference. Every index starts at 65530 and goes round past 0.
    h = Harness(False, 8, REFERENCE_DRIVERS, event_idx=event_idx, indirect=True)
    try:
        h.restore(65530)
        assert h.rings[0].device.state == (65530, 65530)
        h.run_random(random.Random(event_idx), 300)
        h.drain()
        last_avail, used = h.rings[0].device.state
        assert last_avail < 65530 and used < 65530, "the indices never wrapped"
    finally:
        h.close()


def fast_forward(driver: SplitDriverQueue, device: SplitDeviceQueue, size: int,
                 rounds: int) -> None:
    """Run rounds * size one-piece buffers through a compiled split ring, leaving its free list
    as a new driver's (each round is pushed back in reverse, so collect frees them in order)."""
    chains = np.zeros(size, dtype=DRIVER_CHAIN_DTYPE)
    chains["first_seg"] = np.arange(size)
    chains["nseg"] = 1
    segments = np.zeros(size, dtype=SEGMENT_DTYPE)
    segments["addr"] = POOL + PIECE * np.arange(size)
    segments["len"] = PIECE
    segments["flags"] = SEG_WRITE
    burst = Burst(size, 4 * size)
    used = np.zeros(size, dtype=USED_ELEM_DTYPE)
    reverse = np.arange(size)[::-1]
    for _ in range(rounds):
        assert driver.add_burst(chains, size, segments) == size
        assert device.pop(burst) == size
        assert device.push(burst, order=reverse) == size
        assert driver.collect_burst(used) == size
        driver.should_kick()
        device.should_notify()


@pytest.mark.parametrize("event_idx", [False, True], ids=["flags", "event_idx"])
def test_2_7_6_compiled_driver_and_reference_wrap_avail_and_used_idx(event_idx):
    # Ring A: a compiled driver brought to 65528 by real traffic, then a reference device that
    # takes over there (as a vhost-user back-end would after VRING_BASE). Ring B: a reference
    # driver started at 65528 and a compiled device.
    size, start = 8, 65528
    h = Harness(False, size, CROSS, event_idx=event_idx)
    try:
        a, b = h.rings
        compiled_device = SplitDeviceQueue(a.memory, size, ring_layout(size, RING_BASE, False),
                                           event_idx=event_idx)
        fast_forward(a.driver, compiled_device, size, start // size)
        assert a.driver.avail_idx == start and a.driver.num_free == size
        a.device.restore(start)
        b.driver.start_at(start)
        b.device.restore(start)
        h.enable_kicks()
        h.enable_calls()
        h.check()
        h.run_random(random.Random(7 + event_idx), 300)
        h.drain()
        assert a.driver.avail_idx < start, "the avail index never wrapped"
    finally:
        h.close()


@pytest.mark.parametrize("size", [1, 3, 5])
def test_2_8_1_wrap_counters_flip_at_the_end_of_the_ring(size):
    h = Harness(True, size)
    try:
        rng = random.Random(size)
        for lap in range(1, 7):
            for _ in range(size):
                h.add([(True, 8)], False, rng)
                h.pop(1)
                h.push([0], [8], rng)
                assert h.collect(1)
            wrap = 1 - lap % 2
            assert h.rings[0].device.state == ((0, wrap), (0, wrap))
            assert h.rings[1].driver.avail_state == (0, wrap)
    finally:
        h.close()


# -- validation: both devices refuse the same malformed rings, and carry on ---------------------

BIG = 1 << 31


class RawRing:
    """A ring written by hand, popped by a compiled and a reference device side by side."""

    def __init__(self, packed: bool, size: int = 8, *, indirect: bool = True,
                 memory_size: int = MEMORY_SIZE):
        self.packed, self.size = packed, size
        self.memory = GuestMemory([(0, memory_size)])
        self.addresses = ring_layout(size, RING_BASE, packed)
        self.slot = 0
        features = {"indirect": indirect}
        self.devices = [CompiledDevice(self.memory, size, self.addresses, packed, **features),
                        ReferenceDevice(self.memory, size, self.addresses, packed, **features)]

    def descriptor(self, index: int, addr: int, length: int, flags: int, link: int = 0,
                   at: int | None = None) -> None:
        """Split: table entry `index` (next=link); packed: slot `index` (id=link), available in
        the first lap. `at` writes into an indirect table instead."""
        if self.packed and at is None:
            flags |= F_AVAIL
        last_two = (link, flags) if self.packed else (flags, link)
        base = self.addresses.desc if at is None else at
        self.memory.write(base + 16 * index, struct.pack("<QIHH", addr, length, *last_two))

    def publish(self, *heads: int, idx: int | None = None) -> None:
        """Split: put heads on the avail ring and move idx past them (or to idx)."""
        avail = self.memory.view(self.addresses.driver, 4 + 2 * self.size).view(np.uint16)
        for h in heads:
            avail[2 + self.slot % self.size] = h
            self.slot += 1
        avail[1] = self.slot if idx is None else idx

    def pop_both(self) -> list[list[Popped]]:
        answers = [[s for _, s in d.pop(self.size)] for d in self.devices]
        assert answers[0] == answers[1], f"compiled {answers[0]} != reference {answers[1]}"
        return answers[0]

    def pop_error_both(self) -> str:
        names = []
        for d in self.devices:
            with pytest.raises(VringError) as e:
                d.pop(self.size)
            names.append(type(e.value).__name__)
        assert names[0] == names[1], f"compiled raised {names[0]}, reference {names[1]}"
        return names[0]


OUTSIDE = MEMORY_SIZE + 0x1000
GOOD = POOL

# Each fault: the error both devices must report, and the descriptors that make it, as
# (index, addr, len, flags, link) in the ring (split link: next; packed link: buffer id), or
# with a sixth item, the indirect table they go into. Split chains start at head 0.
SPLIT_FAULTS = {
    "next out of range": (NextOutOfRange, [(0, GOOD, 8, F_NEXT, 8)]),
    "loop": (ChainLoop, [(0, GOOD, 8, F_NEXT, 1), (1, GOOD, 8, F_NEXT, 0)]),
    "buffer outside memory": (DescriptorOutsideMemory, [(0, OUTSIDE, 8, 0, 0)]),
    "buffer across the end of memory": (DescriptorOutsideMemory,
                                        [(0, MEMORY_SIZE - 4, 8, 0, 0)]),
    "indirect len 0": (BadIndirectTable, [(0, TABLES, 0, F_INDIRECT, 0)]),
    "indirect len not a multiple of 16": (BadIndirectTable, [(0, TABLES, 24, F_INDIRECT, 0)]),
    "indirect with next": (BadIndirectTable, [(0, TABLES, 16, F_INDIRECT | F_NEXT, 1),
                                              (0, GOOD, 8, 0, 0, TABLES)]),
    "nested indirect": (BadIndirectTable, [(0, TABLES, 16, F_INDIRECT, 0),
                                           (0, TABLES + 64, 16, F_INDIRECT, 0, TABLES)]),
    "indirect table outside memory": (BadIndirectTable,
                                      [(0, MEMORY_SIZE - 16, 32, F_INDIRECT, 0)]),
    "next out of range in indirect table": (NextOutOfRange, [(0, TABLES, 32, F_INDIRECT, 0),
                                                             (0, GOOD, 8, F_NEXT, 2, TABLES)]),
    "loop in indirect table": (ChainLoop, [(0, TABLES, 32, F_INDIRECT, 0),
                                           (0, GOOD, 8, F_NEXT, 1, TABLES),
                                           (1, GOOD, 8, F_NEXT, 0, TABLES)]),
    "readable after writable": (WriteOrderViolation, [(0, GOOD, 8, F_WRITE | F_NEXT, 1),
                                                      (1, GOOD, 8, 0, 0)]),
    "readable after empty writable": (WriteOrderViolation, [(0, GOOD, 0, F_WRITE | F_NEXT, 1),
                                                            (1, GOOD, 8, 0, 0)]),
    "readable in table after writable": (WriteOrderViolation,
                                         [(0, GOOD, 8, F_WRITE | F_NEXT, 1),
                                          (1, TABLES, 16, F_INDIRECT, 0),
                                          (0, GOOD, 8, 0, 0, TABLES)]),
}

# Packed lists start at slot 0 and carry buffer id 3.
PACKED_FAULTS = {
    "buffer outside memory": (DescriptorOutsideMemory, [(0, OUTSIDE, 8, 0, 3)]),
    "buffer across the end of memory": (DescriptorOutsideMemory,
                                        [(0, MEMORY_SIZE - 4, 8, 0, 3)]),
    "indirect len 0": (BadIndirectTable, [(0, TABLES, 0, F_INDIRECT, 3)]),
    "indirect len not a multiple of 16": (BadIndirectTable, [(0, TABLES, 24, F_INDIRECT, 3)]),
    "indirect with next": (BadIndirectTable, [(0, TABLES, 16, F_INDIRECT | F_NEXT, 3),
                                              (1, GOOD, 8, 0, 3),
                                              (0, GOOD, 8, 0, 0, TABLES)]),
    "indirect inside a list": (BadIndirectTable, [(0, GOOD, 8, F_NEXT, 3),
                                                  (1, TABLES, 16, F_INDIRECT, 3),
                                                  (0, GOOD, 8, 0, 0, TABLES)]),
    "nested indirect": (BadIndirectTable, [(0, TABLES, 32, F_INDIRECT, 3),
                                           (0, GOOD, 8, 0, 0, TABLES),
                                           (1, TABLES + 64, 16, F_INDIRECT, 0, TABLES)]),
    "indirect table outside memory": (BadIndirectTable,
                                      [(0, MEMORY_SIZE - 16, 32, F_INDIRECT, 3)]),
    "readable after writable": (WriteOrderViolation, [(0, GOOD, 8, F_WRITE | F_NEXT, 3),
                                                      (1, GOOD, 8, 0, 3)]),
    # Found by this comparison (fixed in 9405aec): a zero-length writable piece went unnoticed.
    "readable after empty writable": (WriteOrderViolation, [(0, GOOD, 0, F_WRITE | F_NEXT, 3),
                                                            (1, GOOD, 8, 0, 3)]),
    "readable in table after writable": (WriteOrderViolation,
                                         [(0, TABLES, 32, F_INDIRECT, 3),
                                          (0, GOOD, 8, F_WRITE, 0, TABLES),
                                          (1, GOOD, 8, 0, 0, TABLES)]),
}

TOO_LARGE = [(0, 0, BIG, F_NEXT, 1), (1, 0, BIG, 0, 1)]  # 2 * 2 GiB readable, twice the same
NOT_NEGOTIATED = [(0, TABLES, 16, F_INDIRECT, 3), (0, GOOD, 8, 0, 0, TABLES)]


def write_and_pop(r: RawRing, descriptors) -> Popped:
    """Lay descriptors out (and, split, publish head 0); both devices pop one chain alike."""
    for d in descriptors:
        r.descriptor(*d[:5], at=d[5] if len(d) > 5 else None)
    if not r.packed:
        r.publish(0)
    [chain] = r.pop_both()
    return chain


def good_chain_follows(r: RawRing, slot_after: int) -> None:
    """The queue goes on: a good buffer placed after the bad one pops cleanly on both."""
    if r.packed:
        r.descriptor(slot_after, GOOD, 8, 0, 7)
    else:
        r.descriptor(5, GOOD, 8, F_WRITE)
        r.publish(5)
    [chain] = r.pop_both()
    assert chain.error is None and chain.writable_len == (0 if r.packed else 8)


@pytest.mark.parametrize("name", SPLIT_FAULTS)
def test_2_7_5_split_devices_refuse_a_malformed_chain_and_go_on(name):
    error, descriptors = SPLIT_FAULTS[name]
    r = RawRing(False)
    chain = write_and_pop(r, descriptors)
    assert (chain.id, chain.error, chain.pieces, chain.readable) == (0, error.__name__, (), b"")
    good_chain_follows(r, 0)


def test_2_7_6_split_devices_refuse_a_head_out_of_range_and_go_on():
    r = RawRing(False)
    r.publish(r.size)
    [chain] = r.pop_both()
    assert (chain.id, chain.error) == (r.size, HeadOutOfRange.__name__)
    good_chain_follows(r, 0)


def test_2_7_5_2_split_devices_refuse_a_chain_of_4_gib():
    chain = write_and_pop(RawRing(False, memory_size=BIG), TOO_LARGE)
    assert chain.error == ChainTooLarge.__name__


def test_2_7_5_3_split_devices_accept_direct_descriptors_ending_in_an_indirect_one():
    # §2.7.5.3.2: zero or more chained descriptors followed by one INDIRECT is valid.
    r = RawRing(False)
    r.memory.write(GOOD, b"abcdefgh")
    chain = write_and_pop(r, [(0, GOOD, 4, F_NEXT, 3), (3, TABLES, 32, F_INDIRECT, 0),
                              (0, GOOD + 4, 4, F_NEXT, 1, TABLES),
                              (1, GOOD + 64, 16, F_WRITE, 0, TABLES)])
    assert chain.error is None and chain.readable == b"abcdefgh" and chain.writable_len == 16


def test_2_7_5_3_split_devices_refuse_indirect_when_not_negotiated():
    chain = write_and_pop(RawRing(False, indirect=False), NOT_NEGOTIATED)
    assert chain.error == BadIndirectTable.__name__


def test_2_7_13_3_an_avail_index_jump_breaks_the_queue_until_reset():
    r = RawRing(False)
    r.descriptor(0, GOOD, 8, 0)
    r.publish(0, idx=r.size + 1)
    assert r.pop_error_both() == AvailIndexJump.__name__
    assert r.pop_error_both() == QueueBroken.__name__
    r.publish(idx=1)
    for device in r.devices:
        device.reset()
    [chain] = r.pop_both()
    assert (chain.id, chain.error, chain.pieces) == (0, None, ((GOOD, 8, False),))


@pytest.mark.parametrize("name", PACKED_FAULTS)
def test_2_8_packed_devices_refuse_a_malformed_list_and_go_on(name):
    error, descriptors = PACKED_FAULTS[name]
    slots = sum(len(d) == 5 for d in descriptors)
    r = RawRing(True)
    chain = write_and_pop(r, descriptors)
    assert (chain.id, chain.ndesc, chain.error) == (3, slots, error.__name__)
    assert chain.pieces == () and chain.readable == b""
    good_chain_follows(r, slots)


def test_2_8_17_packed_devices_refuse_a_list_of_4_gib():
    chain = write_and_pop(RawRing(True, memory_size=BIG), TOO_LARGE)
    assert chain.error == ChainTooLarge.__name__


def test_2_8_19_packed_devices_refuse_indirect_when_not_negotiated():
    chain = write_and_pop(RawRing(True, indirect=False), NOT_NEGOTIATED)
    assert chain.error == BadIndirectTable.__name__


def test_2_8_17_a_list_longer_than_the_ring_breaks_the_queue_until_reset():
    r = RawRing(True, size=4)
    for slot in range(4):
        r.descriptor(slot, GOOD, 8, F_NEXT, 3)
    assert r.pop_error_both() == ChainLoop.__name__
    assert r.pop_error_both() == QueueBroken.__name__
    r.memory.write(r.addresses.desc, bytes(16 * r.size))
    r.descriptor(0, GOOD, 8, 0, 3)
    for device in r.devices:
        device.reset()
    [chain] = r.pop_both()
    assert (chain.id, chain.ndesc, chain.error) == (3, 1, None)


# -- bugs the comparison found: regression tests -------------------------------------------------

def test_2_8_10_packed_driver_keeps_asking_for_used_notifications():
    # Regression. With EVENT_IDX, enable_calls() puts the next used slot in the driver event.
    # The split driver moves used_event on at every collect (fastpath/_core/split.pyx,
    # fp_split_collect_burst); the packed driver never touches off_wrap there
    # (fastpath/_core/packed.pyx, fp_packed_collect_burst), so after the first collect the event
    # names a slot already used and the device stays silent until a ring's worth more has been
    # used: a driver that waits for interrupts with fewer buffers than that in flight hangs.
    answers = {}
    for name, factory in [("compiled", compiled_driver), ("reference", reference_driver)]:
        ring = make_ring(True, 8, factory, CompiledDevice, event_idx=True)
        ring.driver.enable_calls()
        notified = []
        for _ in range(3):
            ring.driver.add(writable=[(POOL, 8)])
            [(handle, _)] = ring.device.pop(8)
            ring.device.push([(handle, b"x", 1)])
            notified.append(ring.device.should_notify())
            assert [c for c, _ in ring.driver.collect()] == [0]
        answers[name] = notified
        ring.memory.close()
    assert answers["reference"] == [True, True, True]
    assert answers["compiled"] == answers["reference"]


def test_2_8_4_packed_driver_ignores_len_of_a_used_descriptor_without_write():
    # Regression. §2.8.4: "Element Length is reserved for used descriptors without the
    # VIRTQ_DESC_F_WRITE flag, and is ignored by drivers." fp_packed_collect_burst
    # (fastpath/_core/packed.pyx) reports it as bytes written whatever the flags say.
    answers = {}
    for name, factory in [("compiled", compiled_driver), ("reference", reference_driver)]:
        ring = make_ring(True, 8, factory, ReferenceDevice)
        chain_id = ring.driver.add(readable=[(POOL, 8)])
        [(chain, _)] = ring.device.pop(8)
        ring.device.push([(chain, b"", 0)])
        ring.memory.write(ring_layout(8, RING_BASE, True).desc + 8, (1234).to_bytes(4, "little"))
        answers[name] = ring.driver.collect()
        assert answers[name][0][0] == chain_id
        ring.memory.close()
    assert answers["reference"] == [(0, 0)]
    assert answers["compiled"] == answers["reference"]


def test_2_7_5_3_guest_driver_gives_each_indirect_buffer_in_flight_its_own_table():
    # Fixed in 9405aec. GuestDriver._add used to pick table len(in flight) % size, so after a
    # collect a new buffer could take the table of one still in flight and overwrite it: here
    # B (not yet popped) read C's data.
    g = GuestDriver(size=8, indirect=True)
    device = g.device()
    g.send(b"AAAA", indirect=True)
    b_id = g.send(b"BBBB", indirect=True)
    first = Burst(1)
    device.pop(first)
    device.push(first)
    g.collect()
    c_id = g.send(b"CCCC", indirect=True)
    burst = device.new_burst()
    n = device.pop(burst)
    got = {int(burst.chains["id"][i]): burst.readable(i) for i in range(n)}
    assert got == {b_id: b"BBBB", c_id: b"CCCC"}


# -- the benchmark baseline runs and is sane ----------------------------------------------------

@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_reference_loop_moves_every_chain(packed):
    assert ref.run_reference_loop(packed, size=8, burst=3, chains=200, copy_bytes=100) > 0
