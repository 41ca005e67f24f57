"""The compiled request path held to the plain-Python reference (fastpath.testing.reference.blk)
over random mixes of requests, well-formed and hostile, completed in random orders with random
executor results: both hand the executor the same requests and leave the guest's memory, the
disk and the counters the same, byte for byte."""

import errno

import pytest
from blk_guest import GAP, POOL_BYTES, RING_TYPES, Twins, blk_range, data, header
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpath.devices.blk import (
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    BlkDisk,
)

CAPACITY = 1 << 20
SECTORS = CAPACITY // 512
KINDS = [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
         VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES]
RESULTS = [0, 0, 0, -errno.EIO, -errno.EOPNOTSUPP, -errno.EINVAL]

sectors = st.one_of(st.integers(0, 64).map(lambda k: 8 * k), st.integers(0, 64),
                    st.integers(SECTORS - 16, SECTORS + 16),
                    st.sampled_from([1 << 55, (1 << 64) - 1, (1 << 63) + 8]),
                    st.integers(0, (1 << 64) - 1))
lengths = st.one_of(st.sampled_from([0, 512, 1024, 4096, 8192]), st.integers(0, 5000))
range_sizes = st.one_of(st.sampled_from([0, 8, 16, 64, 4096, 4104, (1 << 32) - 1]),
                        st.integers(0, 64))


def rarely(value, common=None, odds: int = 8):
    """`common` most of the time, `value` one time in `odds`."""
    return st.sampled_from([common] * (odds - 1) + [value])


@st.composite
def blk_requests(draw):
    """One chain: a request of any type, framed any way, now and then broken on purpose."""
    kind = draw(st.one_of(*[st.sampled_from(KINDS)] * 4, st.integers(0, (1 << 32) - 1)))
    head = header(kind, draw(sectors), draw(st.integers(0, (1 << 32) - 1)))
    cut = draw(st.one_of(rarely(0), rarely(8), rarely(15)))
    if cut is not None:
        head = head[:cut]
    n = draw(lengths)
    pieces = draw(st.integers(1, 4))
    step = -(-n // pieces) or 1
    out, into = [], []
    if kind == VIRTIO_BLK_T_OUT:
        payload = data(n, draw(st.integers(0, 255)))
        out = [payload[k:k + step] for k in range(0, n, step)]
    elif kind in (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_GET_ID):
        into = [min(step, n - k) for k in range(0, n, step)]
    elif kind in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
        flags = st.sampled_from([0, 0, 0, 1, 1, 2, 3, 1 << 31])
        ranges = b"".join(blk_range(draw(sectors), draw(range_sizes), draw(flags))
                          for _ in range(draw(st.sampled_from([1, 1, 1, 1, 0, 2]))))
        cut = draw(rarely(draw(st.integers(0, max(len(ranges) - 1, 0)))))
        ranges = ranges[:cut] if cut is not None else ranges
        out = [ranges] if ranges else []
    out += [data(draw(st.sampled_from([16, 512])))] * draw(rarely(1, 0))
    into += [draw(st.sampled_from([20, 512]))] * draw(rarely(1, 0))
    framing = draw(st.sampled_from(["apart", "joined", "split"]))
    if framing == "joined" and out:
        readable = [head + out[0]] + out[1:]
    elif framing == "split" and len(head) > 1:
        readable = [head[:len(head) // 2], head[len(head) // 2:]] + out
    else:
        readable = [head] + out
    readable = [r for r in readable if r]
    status = draw(st.sampled_from(["apart"] * 12 + ["joined"] * 4 + ["missing", "readable",
                                                                     "wide", "empty"]))
    if status == "joined" and into:
        into[-1] += 1
    elif status == "readable":
        readable.append(b"\x5a")
    elif status == "wide":
        into.append(3)
    elif status == "empty":
        into.append(0)
    elif status != "missing":
        into.append(1)
    return readable, into, draw(st.booleans())


@st.composite
def schedules(draw):
    """Rounds of: requests offered, a burst taken, some requests completed in some order."""
    rounds = []
    for _ in range(draw(st.integers(1, 5))):
        rounds.append((draw(st.lists(blk_requests(), max_size=6)),
                       draw(st.integers(1, 8)),
                       draw(st.lists(st.integers(0, 31), max_size=8)),
                       draw(st.lists(st.sampled_from(RESULTS), max_size=4))))
    return rounds


disks = st.builds(BlkDisk, st.just(CAPACITY), block_size=st.sampled_from([512, 4096]),
                  read_only=st.booleans(), seg_max=st.integers(1, 4),
                  max_discard_sectors=st.sampled_from([8, 4096, (1 << 32) - 1]),
                  max_write_zeroes_sectors=st.sampled_from([8, 4096]),
                  serial=st.binary(max_size=20).map(lambda b: bytes(x & 0x7F for x in b)))


@pytest.mark.parametrize("ring", RING_TYPES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(schedule=schedules(), disk=disks, event_idx=st.booleans(), writethrough=st.booleans(),
       max_burst=st.integers(1, 16))
def test_compiled_path_does_what_the_reference_does(ring, schedule, disk, event_idx,
                                                     writethrough, max_burst):
    twins = Twins(ring == "packed", disk, event_idx=event_idx, writethrough=writethrough,
                  max_burst=max_burst)
    for requests, max_n, picks, results in schedule:
        for readable, into, indirect in requests:
            twins.add(readable, into, indirect=indirect and len(readable) + len(into) <= 64)
        twins.take(max_n)
        twins.complete(picks, results)
        twins.check()
    while twins.take(64):
        pass
    twins.complete([0] * len(twins.pending), [])
    twins.check()
    assert not twins.pending and twins.served.queue.in_flight == 0


@pytest.mark.parametrize("ring", RING_TYPES)
def test_chains_outside_guest_memory_are_dropped_alike(ring):
    twins = Twins(ring == "packed", BlkDisk(CAPACITY))
    twins.add([header(VIRTIO_BLK_T_OUT, 0), data(512)], [1])
    twins.add_raw([(1 << 40, 16)], [(twins.compiled.pool + POOL_BYTES - GAP, 1)])
    twins.add([header(VIRTIO_BLK_T_IN, 0)], [512, 1])
    assert twins.take(8) == 2
    twins.complete([0, 0], [])
    twins.check()
    assert twins.served.queue.counters["bad_chain"] == 1
