"""The mbuf pool: bursts taken and given back from compiled code, against a model that is a
plain Python set of free mbufs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpath.pmd import MbufPool


def test_a_new_pool_hands_out_every_mbuf_once():
    pool = MbufPool(64, 256)
    mbufs = pool.burst(64)
    assert pool.alloc(mbufs, 64) == 64
    assert sorted(mbufs) == list(range(64))
    assert pool.available == 0 and pool.in_use == 64


def test_a_short_pool_gives_what_it_has():
    pool = MbufPool(10)
    mbufs = pool.burst(32)
    assert pool.alloc(mbufs, 32) == 10
    assert pool.alloc(mbufs, 32) == 0
    pool.release(mbufs, 10)
    assert pool.available == 10


def test_frames_round_trip_through_an_mbuf():
    pool = MbufPool(4, 128)
    pool.put(2, b"frame bytes")
    assert pool.frame(2) == b"frame bytes"
    with pytest.raises(ValueError, match="does not fit"):
        pool.put(1, bytes(129))


@pytest.mark.parametrize("count, room", [(0, 2048), (1 << 25, 2048), (16, 32), (16, 1 << 17)])
def test_impossible_pools_are_refused(count, room):
    with pytest.raises(ValueError):
        MbufPool(count, room)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=40))
def test_alloc_and_release_match_a_set_of_free_mbufs(steps):
    pool = MbufPool(48, 64)
    free = set(range(48))
    held: list[int] = []
    for take, n in steps:
        if take:
            mbufs = pool.burst(max(n, 1))
            got = pool.alloc(mbufs, n)
            assert got == min(n, len(free))
            taken = [int(m) for m in mbufs[:got]]
            assert set(taken) <= free and len(set(taken)) == got
            free -= set(taken)
            held += taken
        else:
            back, held = held[:n], held[n:]
            pool.release(np.array(back, dtype=np.uint32), len(back))
            free |= set(back)
        assert pool.available == len(free)
