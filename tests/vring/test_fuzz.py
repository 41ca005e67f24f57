"""Seeded, bounded fuzzing of split and packed queues, device side and driver side.

Two kinds of input: rings filled with garbage (descriptors, avail/used rings, event structures,
indirect tables), and valid rings with bits flipped. Whatever the guest writes, the queue must
not crash, every segment a pop returns must lie inside one mapped region, every chain record must
be self-consistent, and every error must be one of fastpath.errors' named classes. A hypothesis
test also compares single chains against a small model of the spec's rules.

Run by hand for longer: `python tests/vring/test_fuzz.py SEED [ROUNDS]`.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastpath.errors import (
    AvailIndexJump,
    ChainLoop,
    QueueBroken,
    RingFull,
    VringError,
    error_for_code,
)
from fastpath.hv import GuestMemory
from fastpath.testing import GuestDriver
from fastpath.vring import (
    PACKED_DESC_DTYPE,
    SEG_WRITE,
    SPLIT_DESC_DTYPE,
    Burst,
    PackedDeviceQueue,
    SplitDeviceQueue,
    ring_layout,
)

TOP = 1 << 64
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
F_AVAIL, F_USED = 1 << 7, 1 << 15
ERROR_NAMES = {cls.__name__ for cls in VringError.__subclasses__()}
# Errors that stop a queue: the fuzz loop then starts a fresh device on the same ring.
STOPPING = (AvailIndexJump, QueueBroken, ChainLoop)


# --- Invariants --------------------------------------------------------------------------------


def region_bounds(memory: GuestMemory) -> list[tuple[int, int]]:
    return [(int(r["host_addr"]), int(r["host_addr"]) + int(r["size"])) for r in memory.table]


def check_popped(burst: Burst, n: int, bounds: list[tuple[int, int]]) -> None:
    """Every popped chain is either a named failure with no segments, or segments inside guest
    memory that add up to its counts, readable ones first."""
    assert 0 <= n <= len(burst.chains)
    for i in range(n):
        c = burst.chains[i]
        code = int(c["error"])
        if code:
            error_for_code(code)  # a named error, or ValueError
            assert c["nseg"] == 0 and c["readable_len"] == 0 and c["writable_len"] == 0
            continue
        first, nseg, nreadable = int(c["first_seg"]), int(c["nseg"]), int(c["nreadable"])
        assert first + nseg <= len(burst.segments)
        assert nreadable <= nseg
        segs = burst.segments[first : first + nseg]
        for k, seg in enumerate(segs):
            addr, length = int(seg["addr"]), int(seg["len"])
            assert length > 0
            assert any(lo <= addr and addr + length <= hi for lo, hi in bounds), (
                f"segment {addr:#x}+{length:#x} of chain {i} is outside guest memory"
            )
            assert bool(seg["flags"] & SEG_WRITE) == (k >= nreadable)
        assert int(segs["len"][:nreadable].sum()) == int(c["readable_len"])
        assert int(segs["len"][nreadable:].sum()) == int(c["writable_len"])
        if c["readable_len"] <= 1 << 20:
            assert len(burst.readable(i)) == c["readable_len"]


def check_error_names(*queues) -> None:
    for q in queues:
        assert set(q.errors) <= ERROR_NAMES, q.errors


# --- Garbage -----------------------------------------------------------------------------------


class Garbage:
    """Values a hostile guest would try: near region edges, holes, 2**64, tables, and noise."""

    LENGTHS = [0, 1, 15, 16, 17, 32, 48, 255, 256, 4096, 0x10000, 0x7FFF_FFFF, 0x8000_0000,
               0xFFFF_FFF0, 0xFFFF_FFFF]

    def __init__(self, rng: random.Random, g: GuestDriver):
        self.rng = rng
        self.g = g
        edges = [0, TOP - 1, TOP - 16, TOP - 4096, g.tables_base, g.pool_base]
        for r in g.memory.regions:
            edges += [r.guest_phys_addr, r.guest_phys_addr + r.size]
        self.edges = edges

    def addr(self) -> int:
        rng = self.rng
        roll = rng.random()
        if roll < 0.1:
            return rng.getrandbits(64)
        if roll < 0.35:
            return self.g.table_address(rng.randrange(self.g.size))
        if roll < 0.6:
            return self.g.buffer_address(rng.randrange(16)) + rng.randrange(0, 256)
        return (rng.choice(self.edges) + rng.randint(-64, 64)) % TOP

    def length(self) -> int:
        rng = self.rng
        roll = rng.random()
        if roll < 0.5:
            return rng.choice(self.LENGTHS)
        if roll < 0.9:
            return rng.randint(0, 4096)
        return rng.getrandbits(32)

    def flags(self, packed: bool, wrap: int) -> int:
        rng = self.rng
        if rng.random() < 0.05:
            return rng.getrandbits(16)
        flags = rng.choice([0, 0, F_NEXT, F_WRITE, F_NEXT | F_WRITE, F_INDIRECT,
                            F_INDIRECT | F_NEXT, F_INDIRECT | F_WRITE, rng.getrandbits(3)])
        if packed:
            bits = F_AVAIL if wrap else F_USED
            flags |= bits if rng.random() < 0.8 else rng.choice([0, F_AVAIL | F_USED])
        return flags

    def split_desc(self):
        rng = self.rng
        nxt = rng.randrange(self.g.size + 2) if rng.random() < 0.9 else rng.getrandbits(16)
        return (self.addr(), self.length(), self.flags(False, 1), nxt)

    def packed_desc(self, wrap: int):
        rng = self.rng
        buffer_id = rng.randrange(self.g.size + 1) if rng.random() < 0.9 else rng.getrandbits(16)
        return (self.addr(), self.length(), buffer_id, self.flags(True, wrap))

    def tables(self, count: int) -> None:
        """Fill some indirect table slots with garbage descriptors."""
        rng = self.rng
        dtype = PACKED_DESC_DTYPE if self.g.packed else SPLIT_DESC_DTYPE
        for _ in range(count):
            n = rng.randint(1, 8)
            rows = [self.packed_desc(1) if self.g.packed else self.split_desc() for _ in range(n)]
            for k in range(n):
                if rng.random() < 0.6:  # mostly plain entries, so tables get walked
                    if self.g.packed:
                        rows[k] = rows[k][:3] + (rows[k][3] & F_WRITE,)
                    else:
                        rows[k] = rows[k][:2] + (rows[k][2] & (F_WRITE | F_NEXT), k + 1)
            table = self.g.table_address(rng.randrange(self.g.size))
            self.g.memory.write(table, np.array(rows, dtype=dtype).tobytes())

    def indirect_desc(self, packed: bool, wrap: int):
        """A descriptor that points at a table, often with a plausible length."""
        rng = self.rng
        table = self.g.table_address(rng.randrange(self.g.size))
        length = 16 * rng.randint(1, 8) if rng.random() < 0.8 else self.length()
        flags = F_INDIRECT | (F_NEXT if rng.random() < 0.1 else 0)
        if packed:
            return (table, length, rng.randrange(self.g.size), flags | (F_AVAIL if wrap
                                                                        else F_USED))
        return (table, length, flags, 0)


def flip_bits(rng: random.Random, view: np.ndarray, flips: int) -> None:
    for _ in range(flips):
        i = rng.randrange(len(view))
        view[i] ^= 1 << rng.randrange(8)


# --- Fuzz loops --------------------------------------------------------------------------------


def new_ring(rng: random.Random, packed: bool) -> GuestDriver:
    size = rng.choice([1, 2, 4, 8, 16, 64]) if not packed else rng.choice([1, 2, 3, 5, 8, 17, 64])
    return GuestDriver(packed=packed, size=size, indirect=rng.random() < 0.8,
                       event_idx=rng.random() < 0.5, hole=rng.random() < 0.5, buffer_size=256,
                       buffers=1024)


def new_burst(rng: random.Random, dev) -> Burst:
    chains = rng.randint(1, 16)
    return Burst(chains, rng.choice([1, 2, 3, 8, 4 * chains + dev.size]))


def serve(rng: random.Random, dev, burst: Burst, bounds) -> int:
    """One device step: pop, check, write, push (in a random order). Returns chains popped."""
    try:
        n = dev.pop(burst)
    except STOPPING:
        assert dev.broken
        return -1
    check_popped(burst, n, bounds)
    for i in range(n):
        if burst.chains["error"][i] == 0 and burst.chains["writable_len"][i]:
            burst.write(i, rng.randbytes(min(int(burst.chains["writable_len"][i]), 600)))
        if rng.random() < 0.2:
            burst.chains["written"][i] = rng.getrandbits(32)
    if n:
        order = list(range(n))
        rng.shuffle(order)
        dev.push(burst, order[: rng.randint(1, n)] if rng.random() < 0.3 else order)
    if rng.random() < 0.3:
        dev.should_notify()
    if rng.random() < 0.1:
        (dev.enable_kicks if rng.random() < 0.5 else dev.disable_kicks)()
    return n


def fuzz_garbage(seed: int, packed: bool, rounds: int) -> dict[str, int]:
    """Rings of garbage: every field the guest owns is random, round after round."""
    rng = random.Random(seed)
    g = new_ring(rng, packed)
    junk = Garbage(rng, g)
    dev = g.device()
    burst = new_burst(rng, dev)
    bounds = region_bounds(g.memory)
    popped = 0
    for _ in range(rounds):
        size = g.size
        junk.tables(rng.randint(0, 3))
        if packed:
            pos, wrap = dev.avail_state
            for k in range(rng.randint(1, size)):
                slot = (pos + k) % size
                if rng.random() < 0.2:
                    g.desc[slot] = junk.indirect_desc(True, wrap)
                else:
                    g.desc[slot] = junk.packed_desc(wrap if slot >= pos else wrap ^ 1)
            for gpa in (g.addresses.driver, g.addresses.device):
                if rng.random() < 0.3:
                    g.memory.write(gpa, rng.randbytes(4))
        else:
            for slot in rng.sample(range(size), rng.randint(1, size)):
                g.desc[slot] = (junk.indirect_desc(False, 1) if rng.random() < 0.2
                                else junk.split_desc())
            avail = g.avail_ring()
            idx = int(avail[1])
            for k in range(size):
                avail[2 + k] = rng.randrange(size) if rng.random() < 0.9 else rng.getrandbits(16)
            roll = rng.random()
            step = rng.getrandbits(16) if roll < 0.03 else rng.randint(0, size)
            avail[1] = (idx + step) & 0xFFFF
            if rng.random() < 0.1:
                avail[0] = rng.getrandbits(16)
                avail[2 + size] = rng.getrandbits(16)
        n = serve(rng, dev, burst, bounds)
        if n < 0:  # a stopped queue: a fresh device picks up where the ring is now
            dev = g.device()
            if packed:
                dev.avail_state = dev.used_state = (rng.randrange(size), rng.randrange(2))
            else:
                dev.last_avail_idx = dev.used_idx = int(g.avail_ring()[1])
            burst = new_burst(rng, dev)
        else:
            popped += n
        # The driver collects whatever the device (and the garbage) left in the used area.
        if not packed and rng.random() < 0.3:
            used = g.used_ring()
            used[:] = [rng.getrandbits(32) if rng.random() < 0.5 else rng.randrange(size + 1)
                       for _ in range(len(used))]
            g.memory.view(g.addresses.device + 2, 2).view(np.uint16)[0] = rng.getrandbits(16)
        g.queue.collect(rng.randint(1, 64))
        assert 0 <= g.queue.num_free <= size
        check_error_names(dev, g.queue)
    return {"popped": popped}


def fuzz_mutated(seed: int, packed: bool, rounds: int) -> dict[str, int]:
    """Valid rings offered by the driver, with bits flipped before the device looks."""
    rng = random.Random(seed)
    popped = restarts = 0
    g = dev = None
    for r in range(rounds):
        if g is None or r % 40 == 0:
            g = new_ring(rng, packed)
            dev = g.device()
            burst = new_burst(rng, dev)
            bounds = region_bounds(g.memory)
            restarts += 1
        try:
            for _ in range(rng.randint(1, 4)):
                pieces = rng.randint(1, 3)
                indirect = g.indirect and rng.random() < 0.4
                if rng.random() < 0.5:
                    g.send(rng.randbytes(rng.randint(0, 256 * pieces)), pieces=pieces,
                           writable=rng.randint(0, 2), indirect=indirect)
                else:
                    g.offer(pieces, indirect=indirect)
        except (RingFull, ValueError):
            pass  # a full ring (chains lost to mutations hold their descriptors)
        areas = [g.memory.view(g.addresses.desc, 16 * g.size),
                 g.memory.view(g.tables_base, 16 * 64 * min(g.size, 8))]
        if not packed:
            areas.append(g.avail_ring().view(np.uint8))
        elif rng.random() < 0.2:
            areas.append(g.memory.view(g.addresses.driver, 4))
        if rng.random() < 0.8:
            flip_bits(rng, rng.choice(areas), rng.randint(1, 4))
        n = serve(rng, dev, burst, bounds)
        if n < 0:
            g = None
            continue
        popped += n
        g.collect()  # raises KeyError if the driver returns an id that is not in flight
        assert 0 <= g.queue.num_free <= g.size
        check_error_names(dev, g.queue)
    return {"popped": popped, "restarts": restarts}


def run(seed: int, rounds: int) -> None:
    """Every fuzz loop once with this seed (the subprocess and command-line entry point)."""
    for packed in (False, True):
        fuzz_garbage(seed, packed, rounds)
        fuzz_mutated(seed, packed, rounds)


# --- Tests -------------------------------------------------------------------------------------

LAYOUTS = pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])


@LAYOUTS
@pytest.mark.parametrize("seed", range(6))
def test_fuzz_garbage_rings_stay_inside_guest_memory(packed, seed):
    stats = fuzz_garbage(1000 * seed + 1, packed, rounds=1200)
    assert stats["popped"] > 0


@LAYOUTS
@pytest.mark.parametrize("seed", range(6))
def test_fuzz_mutated_valid_rings_stay_inside_guest_memory(packed, seed):
    stats = fuzz_mutated(1000 * seed + 2, packed, rounds=1200)
    assert stats["popped"] > 0


@pytest.mark.parametrize("seed", [7, 8])
def test_fuzz_in_a_subprocess_exits_cleanly(seed):
    # A fault in the compiled core kills the process: seen from here it is a failed test with
    # the fault handler's traceback, not a lost pytest run.
    here = os.path.dirname(os.path.abspath(__file__))
    script = os.path.join(here, "test_fuzz.py")
    done = subprocess.run([sys.executable, "-X", "faulthandler", script, str(seed), "600"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (
        f"fuzz seed {seed} exited {done.returncode}:\n{done.stderr[-3000:]}"
    )


# --- Single chains against a model of the spec's rules ----------------------------------------

MODEL_SIZE = 8
KIB = 1 << 10
# Two adjacent regions, a hole, a third region: buffers may span the first two.
MODEL_LAYOUT = [(0, 64 * KIB), (64 * KIB, 64 * KIB), (256 * KIB, 64 * KIB)]
TABLES = (0x2000, 0x2100)
E = {cls.__name__: cls.code for cls in VringError.__subclasses__()}


def model_pieces(addr: int, length: int, max_segs: int, nseg: int):
    """[addr, addr + length) cut at region boundaries, or an error code (§2.7.5, §2.8.4)."""
    out = []
    while length:
        for gpa, size in MODEL_LAYOUT:
            if gpa <= addr < gpa + size:
                break
        else:
            return E["DescriptorOutsideMemory"]
        if nseg + len(out) >= max_segs:
            return E["TooManySegments"]
        chunk = min(length, gpa + size - addr)
        out.append((addr, chunk))
        addr, length = addr + chunk, length - chunk
        if addr >= TOP and length:
            return E["DescriptorOutsideMemory"]
    return out


# An indirect table holds at most max(queue size, 1024) descriptors (the core's cap).
MAX_INDIRECT = max(MODEL_SIZE, 1024)


def model_table(addr: int, length: int) -> bool:
    return any(gpa <= addr and addr + length <= gpa + size for gpa, size in MODEL_LAYOUT)


def table_reader(memory: GuestMemory, dtype: np.dtype):
    """Reads an indirect table's entries from guest memory, as the model's tables."""
    def read(addr: int, length: int) -> list[tuple]:
        raw = np.frombuffer(memory.read(addr, length), dtype=dtype)
        return [tuple(int(x) for x in row) for row in raw]
    return read


class ChainModel:
    def __init__(self, max_segs: int):
        self.max_segs = max_segs
        self.segs: list[tuple[int, int, bool]] = []
        self.seen_write = False

    def add(self, addr: int, length: int, writable: bool) -> int:
        if writable:
            self.seen_write = True
        elif self.seen_write:
            return E["WriteOrderViolation"]
        pieces = model_pieces(addr, length, self.max_segs, len(self.segs))
        if isinstance(pieces, int):
            return pieces
        self.segs += [(a, n, writable) for a, n in pieces]
        return 0

    def result(self):
        readable = sum(n for _, n, w in self.segs if not w)
        writable = sum(n for _, n, w in self.segs if w)
        return self.segs, readable, writable


def model_split(descs, read_table, head: int, indirect_ok: bool, max_segs: int):
    """The chain at head under §2.7.5 (and §2.7.5.3 for indirect tables): an error code, or
    (segments, readable bytes, writable bytes)."""
    if head >= MODEL_SIZE:
        return E["HeadOutOfRange"]
    chain = ChainModel(max_segs)
    table, idx, visited, nested = descs, head, 0, False
    while True:
        addr, length, flags, nxt = table[idx]
        visited += 1
        if visited > len(table):
            return E["ChainLoop"]
        if flags & F_INDIRECT:
            if (nested or not indirect_ok or flags & F_NEXT or length == 0 or length % 16
                    or length // 16 > MAX_INDIRECT or not model_table(addr, length)):
                return E["BadIndirectTable"]
            table = read_table(addr, length)
            idx, visited, nested = 0, 0, True
            continue
        rc = chain.add(addr, length, bool(flags & F_WRITE))
        if rc:
            return rc
        if not flags & F_NEXT:
            return chain.result()
        idx = nxt
        if idx >= len(table):
            return E["NextOutOfRange"]


def model_packed(descs, read_table, indirect_ok: bool, max_segs: int):
    """The chain at slot 0 under §2.8.6-§2.8.7 and §2.8.19: an error code, or (segments,
    readable bytes, writable bytes, slots taken, buffer id). None if it has no end."""
    chain = ChainModel(max_segs)
    rc = 0
    for ndesc, (addr, length, buffer_id, flags) in enumerate(descs, start=1):
        if rc == 0:
            if flags & F_INDIRECT:
                if (ndesc > 1 or not indirect_ok or flags & F_NEXT or length == 0
                        or length % 16 or length // 16 > MAX_INDIRECT
                        or not model_table(addr, length)):
                    rc = E["BadIndirectTable"]
                else:
                    for e_addr, e_len, _, e_flags in read_table(addr, length):
                        if e_flags & F_INDIRECT:
                            rc = E["BadIndirectTable"]
                        else:
                            rc = chain.add(e_addr, e_len, bool(e_flags & F_WRITE))
                        if rc:
                            break
            else:
                rc = chain.add(addr, length, bool(flags & F_WRITE))
        if not flags & F_NEXT:
            return (rc, ndesc, buffer_id) if rc else (*chain.result(), ndesc, buffer_id)
    return None


model_addr = st.one_of(
    st.sampled_from([0, 64 * KIB, 128 * KIB, 256 * KIB, 320 * KIB, TOP - 16]).flatmap(
        lambda base: st.integers(-48, 48).map(lambda d: (base + d) % TOP)),
    st.integers(0x4000, 0x40000),
    st.sampled_from(TABLES),
)
model_len = st.one_of(st.sampled_from([0, 1, 16, 24, 32, 48, 64, 0x10000, 0xFFFF_FFFF]),
                      st.integers(0, 0x20000))
model_flags = st.sampled_from([0, F_NEXT, F_WRITE, F_NEXT | F_WRITE, F_INDIRECT,
                               F_INDIRECT | F_NEXT, F_INDIRECT | F_WRITE])


def model_memory() -> GuestMemory:
    return GuestMemory(MODEL_LAYOUT)


def to_host(memory: GuestMemory, segs) -> list[tuple[int, int, int]]:
    return [(memory.translate(a, n), n, SEG_WRITE if w else 0) for a, n, w in segs]


def popped_segments(burst: Burst) -> list[tuple[int, int, int]]:
    c = burst.chains[0]
    segs = burst.segments[int(c["first_seg"]) : int(c["first_seg"]) + int(c["nseg"])]
    return [(int(s["addr"]), int(s["len"]), int(s["flags"])) for s in segs]


MODEL_SETTINGS = settings(max_examples=300, derandomize=True, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))


@MODEL_SETTINGS
@given(
    descs=st.lists(st.tuples(model_addr, model_len, model_flags, st.integers(0, MODEL_SIZE + 1)),
                   min_size=MODEL_SIZE, max_size=MODEL_SIZE),
    table_entries=st.lists(st.tuples(model_addr, model_len, model_flags, st.integers(0, 5)),
                           min_size=1, max_size=8),
    head=st.integers(0, MODEL_SIZE + 1),
    indirect_ok=st.booleans(),
    max_segs=st.integers(1, 8),
)
# Once found in CI: an indirect table of 2048 descriptors, past the core's cap.
@example(descs=[(0, 0, 0, 0), (16384, 0, 0, 0), (16384, 32768, 4, 0)] + [(16384, 0, 0, 0)] * 5,
         table_entries=[(16384, 0, 0, 0)], head=2, indirect_ok=True, max_segs=1)
def test_split_chain_matches_the_spec_model(descs, table_entries, head, indirect_ok, max_segs):
    tables = {TABLES[0]: table_entries[:4], TABLES[1]: table_entries[4:]}
    with model_memory() as memory:
        addresses = ring_layout(MODEL_SIZE, 0x1000, packed=False)
        dev = SplitDeviceQueue(memory, MODEL_SIZE, addresses, indirect=indirect_ok)
        memory.write(addresses.desc, np.array(descs, dtype=SPLIT_DESC_DTYPE).tobytes())
        for gpa, rows in tables.items():
            if rows:
                memory.write(gpa, np.array(rows, dtype=SPLIT_DESC_DTYPE).tobytes())
        expected = model_split(descs, table_reader(memory, SPLIT_DESC_DTYPE), head,
                               indirect_ok, max_segs)
        avail = memory.view(addresses.driver, 6).view(np.uint16)
        avail[1:] = [1, head]
        burst = Burst(1, max_segs)
        assert dev.pop(burst) == 1
        c = burst.chains[0]
        if isinstance(expected, int):
            assert int(c["error"]) == expected
        else:
            segs, readable, writable = expected
            assert int(c["error"]) == 0
            assert popped_segments(burst) == to_host(memory, segs)
            assert (int(c["readable_len"]), int(c["writable_len"])) == (readable, writable)
            assert int(c["nreadable"]) == sum(1 for s in segs if not s[2])


@MODEL_SETTINGS
@given(
    descs=st.lists(st.tuples(model_addr, model_len, st.integers(0, MODEL_SIZE), model_flags),
                   min_size=MODEL_SIZE, max_size=MODEL_SIZE),
    table_entries=st.lists(st.tuples(model_addr, model_len, st.just(0), model_flags),
                           min_size=1, max_size=8),
    indirect_ok=st.booleans(),
    max_segs=st.integers(1, 8),
)
def test_packed_chain_matches_the_spec_model(descs, table_entries, indirect_ok, max_segs):
    tables = {TABLES[0]: table_entries[:4], TABLES[1]: table_entries[4:]}
    # Every slot is available in the first lap (wrap counter 1).
    descs = [(a, n, i, f | F_AVAIL) for a, n, i, f in descs]
    with model_memory() as memory:
        addresses = ring_layout(MODEL_SIZE, 0x1000, packed=True)
        dev = PackedDeviceQueue(memory, MODEL_SIZE, addresses, indirect=indirect_ok)
        memory.write(addresses.desc, np.array(descs, dtype=PACKED_DESC_DTYPE).tobytes())
        for gpa, rows in tables.items():
            if rows:
                memory.write(gpa, np.array(rows, dtype=PACKED_DESC_DTYPE).tobytes())
        expected = model_packed(descs, table_reader(memory, PACKED_DESC_DTYPE), indirect_ok,
                                max_segs)
        burst = Burst(1, max_segs)
        if expected is None:  # every slot says NEXT
            with pytest.raises(ChainLoop):
                dev.pop(burst)
            assert dev.broken
            return
        assert dev.pop(burst) == 1
        c = burst.chains[0]
        if len(expected) == 3:
            code, ndesc, buffer_id = expected
            assert int(c["error"]) == code
        else:
            segs, readable, writable, ndesc, buffer_id = expected
            assert int(c["error"]) == 0
            assert popped_segments(burst) == to_host(memory, segs)
            assert (int(c["readable_len"]), int(c["writable_len"])) == (readable, writable)
            assert int(c["nreadable"]) == sum(1 for s in segs if not s[2])
        assert (int(c["ndesc"]), int(c["id"])) == (ndesc, buffer_id)
        assert dev.avail_state == (ndesc % MODEL_SIZE, 1 if ndesc < MODEL_SIZE else 0)


if __name__ == "__main__":
    run(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 200)
