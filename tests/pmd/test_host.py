"""The poll host: pollers of any kind in one table, hosts on two cores exchanging messages
through mailboxes."""

import os
import time
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from fastpath import _numba
from fastpath._numba import KindDispatch
from fastpath.pmd import (
    MESSAGE_WORDS,
    ForwardingLoop,
    Mailbox,
    MbufPool,
    NullPort,
    Poller,
    PollHost,
    Relay,
    Stream,
)
from fastpath.pmd.fwd import setup_engine


def messages(first: int, n: int) -> np.ndarray:
    out = np.zeros((n, MESSAGE_WORDS), dtype=np.uint64)
    out[:, 0] = np.arange(first, first + n)
    return out


def test_messages_go_round_between_two_hosts_on_two_cores_and_none_is_lost():
    # Two relays, each on its own host and core, each taking from the other's outbox: the
    # messages seeded go round until the hosts stop, and every hop is one relay's count.
    cpus = sorted(os.sched_getaffinity(0))
    a = PollHost("host-a", cpu=cpus[0])
    b = PollHost("host-b", cpu=cpus[-1])
    a_to_b, b_to_a = Mailbox(64), Mailbox(64)
    relay_a, relay_b = Relay(b_to_a, a_to_b, burst=8), Relay(a_to_b, b_to_a, burst=8)
    a.add(relay_a)
    b.add(relay_b)
    assert a_to_b.send(messages(0, 40)) == 40
    a.start()
    b.start()
    time.sleep(0.3)
    a.stop()
    b.stop()
    left = np.concatenate([a_to_b.take(), b_to_a.take(), relay_a.held(), relay_b.held()])
    assert sorted(left[:, 0].tolist()) == list(range(40))
    hops = int(left[:, MESSAGE_WORDS - 1].sum())
    assert hops == relay_a.relayed + relay_b.relayed
    # Both hosts moved messages, many times round (not one pass).
    assert relay_a.relayed > 40 and relay_b.relayed > 40
    assert not relay_a.broken and not relay_b.broken


def test_one_host_runs_pollers_of_different_kinds_together():
    pool = MbufPool(256)
    host = PollHost()
    source = NullPort(pool)
    loop = ForwardingLoop([Stream(source, 0, source, 0)], setup_engine("txonly", size=64),
                          pool, burst=16, host=host)
    inbox, outbox = Mailbox(16), Mailbox(16)
    relay = Relay(inbox, outbox)
    host.add(relay)
    inbox.send(messages(0, 5))
    work = host.step(100)
    assert loop.moved == 16 * 100
    assert relay.relayed == 5
    assert work == loop.moved + relay.relayed
    assert outbox.take()[:, MESSAGE_WORDS - 1].tolist() == [1] * 5


def test_a_removed_poller_keeps_its_row_and_is_no_longer_polled():
    host = PollHost()
    inbox, outbox = Mailbox(16), Mailbox(16)
    relay = Relay(inbox, outbox)
    host.add(relay)
    inbox.send(messages(0, 3))
    host.step(1)
    host.remove(relay)
    assert relay.relayed == 3 and relay.host is None
    inbox.send(messages(3, 3))
    host.step(10)
    assert relay.relayed == 3 and inbox.pending == 3
    with pytest.raises(ValueError, match="already"):
        other = PollHost()
        other.add(relay)
        host.add(relay)


def test_a_row_of_no_registered_kind_does_nothing():
    class Stranger(Poller):
        kind = 999

    host = PollHost()
    host.add(Stranger())
    assert host.step(10) == 0


def test_an_idle_host_sleeps_until_its_time_is_up():
    host = PollHost(idle_rounds=4, sleep_ms=50)
    host.add(Relay(Mailbox(16), Mailbox(16)))
    started = time.monotonic()
    assert host.step() == 0
    assert time.monotonic() - started >= 0.04
    assert host.wakes() == {"kicks_read": 0, "sleeps": 1, "woken_by_eventfd": 0}


def test_idle_rounds_count_across_calls_so_a_long_backoff_still_sleeps():
    # Regression: the idle count restarted with every call, so a backoff longer than a call's
    # rounds never slept.
    host = PollHost(idle_rounds=5000, sleep_ms=0, rounds=1024)
    host.add(Relay(Mailbox(16), Mailbox(16)))
    for _ in range(4):
        host.step()
    assert host.wakes()["sleeps"] == 0
    host.step()
    assert host.wakes()["sleeps"] == 1


class KickedRelay(Relay):
    """A relay whose host sleeps on an eventfd of the test's."""

    def __init__(self, kick_fd):
        super().__init__(Mailbox(16), Mailbox(16))
        self.kick_fd = kick_fd

    @property
    def wake_fds(self):
        return [self.kick_fd]


def test_a_sleeping_host_counts_the_kicks_that_woke_it():
    kick_fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        host = PollHost(idle_rounds=1, sleep_ms=5000)
        host.add(KickedRelay(kick_fd))
        host.wake_fds_changed()
        for _ in range(3):
            os.eventfd_write(kick_fd, 1)
        started = time.monotonic()
        host.step()
        assert time.monotonic() - started < 1
        assert host.wakes() == {"kicks_read": 3, "sleeps": 1, "woken_by_eventfd": 1}
    finally:
        os.close(kick_fd)


def test_a_full_mailbox_takes_what_fits_and_keeps_the_order():
    box = Mailbox(8)
    assert box.send(messages(0, 5)) == 5
    assert box.send(messages(5, 5)) == 3
    assert box.take(6)[:, 0].tolist() == [0, 1, 2, 3, 4, 5]
    assert box.take()[:, 0].tolist() == [6, 7]


def test_a_mailbox_holds_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        Mailbox(12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 12)), max_size=40))
def test_a_mailbox_behaves_as_a_bounded_queue(operations):
    box = Mailbox(8)
    reference: deque[int] = deque()
    sent = 0
    for is_send, n in operations:
        if is_send:
            took = box.send(messages(sent, n))
            fits = min(n, 8 - len(reference))
            assert took == fits
            reference.extend(range(sent, sent + fits))
            sent += n
        else:
            got = box.take(n)[:, 0].tolist()
            assert got == [reference.popleft() for _ in range(min(n, len(reference)))]
        assert box.pending == len(reference)


@pytest.fixture
def probe_registry():
    # A registry's kinds are part of the cache stamp of kernels above pmd: the probe's must not
    # outlive the test, or kernels this process compiles later would not match the cache
    # other processes write.
    yield
    _numba._REGISTRIES.pop("probe_by_kind", None)


def test_a_kind_registered_after_its_dispatch_was_compiled_is_refused(probe_registry):
    @njit
    def nothing(row):
        return 0

    dispatch = KindDispatch("probe_by_kind", 1, nothing)
    dispatch.register(1, "one", nothing)
    call = dispatch.function

    @njit
    def run(row):
        return call(row)

    assert run(np.ones(1, dtype=np.uint64)) == 0
    with pytest.raises(RuntimeError, match="before a kernel"):
        dispatch.register(2, "two", nothing)
