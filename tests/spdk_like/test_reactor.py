"""Reactors: a poll host per core, messages between them through lock-free mailboxes, with
handlers registered by kind; bdev jobs on several reactors at once."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from numba import njit

from fastpath._numba import NJIT
from fastpath.pmd import MESSAGE_WORDS, mailbox_send
from fastpath.spdk_like import (
    MESSAGE_ADD,
    MESSAGE_STORE,
    IoJob,
    MallocBdev,
    Reactors,
    register_message,
)

PING = 100


@njit(**NJIT)
def _ping(message, reactor):
    # word 1: the mailbox this reactor answers through; word 2: the other way; word 3: hops
    # left. The answer swaps the mailboxes, so each side always sends through its own.
    if message[3] == 0:
        return 1
    answer = np.empty((1, MESSAGE_WORDS), dtype=np.uint64)
    answer[0, 0] = message[0]
    answer[0, 1] = message[2]
    answer[0, 2] = message[1]
    answer[0, 3] = message[3] - np.uint64(1)
    lengths = np.full(1, MESSAGE_WORDS * 8, dtype=np.uint32)
    while mailbox_send(message[1], answer, lengths, 0, 1) == 0:
        pass
    return 1


register_message(PING, "test-ping", _ping)


def _wait(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def _cpus():
    cpus = sorted(os.sched_getaffinity(0))
    return [cpus[0], cpus[-1]]


def test_python_s_messages_reach_a_running_reactor_in_order():
    counters = np.zeros(2, dtype=np.uint64)
    with Reactors(_cpus()) as reactors:
        reactors.start()
        messages = np.zeros((100, MESSAGE_WORDS), dtype=np.uint64)
        messages[:, 0] = MESSAGE_ADD
        messages[:, 1] = counters.ctypes.data
        messages[:, 2] = np.arange(100)
        assert reactors.send(1, messages) == 100
        last = np.array([[MESSAGE_STORE, counters[1:].ctypes.data, 7, 0]], dtype=np.uint64)
        assert reactors.send(1, last) == 1
        _wait(lambda: counters[1] == 7)
        # Everything sent before the store was handled before it.
        assert counters[0] == sum(range(100))
        assert reactors.message_pollers[1].handled == 101


def test_a_message_goes_back_and_forth_between_two_reactors_on_two_cores():
    with Reactors(_cpus()) as reactors:
        there, back = reactors.mailbox(0, 1), reactors.mailbox(1, 0)
        hops = 1000
        # As if reactor 0 had sent it: reactor 1 answers through `back`.
        start = np.array([[PING, back.handle, there.handle, hops]], dtype=np.uint64)
        assert there.send(start) == 1
        reactors.start()
        pollers = reactors.message_pollers
        _wait(lambda: pollers[0].handled + pollers[1].handled == hops + 1)
        assert abs(pollers[0].handled - pollers[1].handled) <= 1
        assert pollers[0].unknown == pollers[1].unknown == 0


def test_a_message_of_no_registered_kind_is_counted_and_dropped():
    with Reactors([None]) as reactors:
        reactors.send(0, np.array([[9999, 0, 0, 0]], dtype=np.uint64))
        reactors[0].step(10)
        assert reactors.message_pollers[0].unknown == 1


def test_jobs_on_two_reactors_share_one_bdev_through_their_own_channels():
    with MallocBdev(4 << 20) as bdev, Reactors(_cpus()) as reactors:
        jobs = [IoJob(bdev.open_channel(16), "randwrite", queue_depth=16, io_size=4096,
                      seed=k + 1) for k in range(2)]
        for reactor, job in zip(reactors, jobs, strict=True):
            reactor.add(job)
        reactors.start()
        _wait(lambda: all(job.completed > 1000 for job in jobs))
        for job in jobs:
            job.drain()
        _wait(lambda: all(job.in_flight == 0 for job in jobs))
        reactors.stop()
        assert bdev.statistics().write_ops == sum(job.completed for job in jobs)
        assert all(job.failed == 0 for job in jobs)


def test_reactors_refuse_cpus_the_process_may_not_use():
    with pytest.raises(ValueError, match="may run on"):
        Reactors([max(os.sched_getaffinity(0)) + 1])
