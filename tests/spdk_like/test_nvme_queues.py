"""Queue pairs as NVMe Base 2.0 §3.3.1 has them: phase tags inverting each lap, the full
queue rule, completion queues that never overflow, doorbell writes out of range, and several
pairs on a controller polled from another thread."""

import threading
import time

import numpy as np
import pytest
from nvme_helpers import Rig, command, status_of

from fastpath.spdk_like._nvme_layout import (
    ADMIN_CREATE_IO_CQ,
    ADMIN_CREATE_IO_SQ,
    ADMIN_DELETE_IO_CQ,
    ADMIN_DELETE_IO_SQ,
    CDW11_PC,
    CQE,
    NVM_FLUSH,
    NVM_READ,
    NVM_WRITE,
    PAGE_SIZE,
    SQE,
    cq_head_doorbell,
    sq_tail_doorbell,
)


@pytest.fixture(scope="module")
def rig():
    return Rig()


@pytest.fixture
def pair(rig):
    pair = rig.driver.create_queue_pair(4)
    yield pair
    rig.driver.delete_queue_pair(pair)


def flushes(first, n):
    return np.concatenate([command(NVM_FLUSH, cid) for cid in range(first, first + n)])


def test_the_phase_tag_inverts_on_each_lap_of_the_completion_queue(rig, pair):
    # A 4-entry queue, 41 commands: ten laps and a bit. The k-th completion of the queue is
    # posted with tag 1 on even laps and 0 on odd ones (Base §3.3.3.2, Figure 91).
    seen = 0
    for first in range(0, 41, 3):
        n = min(3, 41 - first)
        for completion in rig.run(pair, flushes(first, n)):
            lap = seen // 4
            assert int(completion["status"]) & 1 == (1 if lap % 2 == 0 else 0)
            assert completion["cid"] == seen
            assert status_of(completion) == 0
            seen += 1
    # The queue in memory holds the last lap's entries: 41 = 10 laps of 4 and one more.
    phases = pair.cq["status"] & 1
    assert phases.tolist() == [1, 0, 0, 0]


def test_a_full_submission_queue_takes_no_more_until_completions_move_its_head(rig, pair):
    # Full when the tail is one behind the head (Base §3.3.1.5): 3 of 4 entries.
    assert pair.space == 3
    assert pair.submit(flushes(0, 5)) == 3
    assert pair.space == 0
    rig.controller.poll()
    # The controller took them, but the host learns that only from the completions' SQ head.
    assert pair.space == 0
    completions = pair.reap()
    assert len(completions) == 3
    assert completions["sq_head"].tolist() == [3, 3, 3]
    assert completions["sq_id"].tolist() == [pair.qid] * 3
    assert pair.space == 3


def test_a_completion_queue_is_never_overrun_by_a_host_that_does_not_consume(rig):
    # An 8-entry submission queue on a 4-entry completion queue: the controller fetches only
    # what the completion queue has room for (3: one entry stays empty), and more as the host
    # hands entries back through the head doorbell.
    memory, controller = rig.memory, rig.controller
    cq = memory.alloc(4 * CQE.itemsize).view(CQE)
    sq = memory.alloc(8 * SQE.itemsize).view(SQE)
    qid = rig.driver.io_queues
    rig.driver.admin(ADMIN_CREATE_IO_CQ, prp1=cq.ctypes.data, cdw10=qid | 3 << 16,
                     cdw11=CDW11_PC)
    rig.driver.admin(ADMIN_CREATE_IO_SQ, prp1=sq.ctypes.data, cdw10=qid | 7 << 16,
                     cdw11=qid << 16 | CDW11_PC)
    try:
        sq[:7] = np.concatenate([command(NVM_FLUSH, cid) for cid in range(7)])
        controller.doorbells[sq_tail_doorbell(qid)] = 7
        for _ in range(5):
            controller.poll()
        assert (cq["status"] & 1).tolist() == [1, 1, 1, 0]
        assert cq["cid"][:3].tolist() == [0, 1, 2]
        # The host consumes two: two more fit (one entry still stays empty).
        controller.doorbells[cq_head_doorbell(qid)] = 2
        for _ in range(5):
            controller.poll()
        assert (cq["status"] & 1).tolist() == [0, 1, 1, 1]
        assert cq["cid"].tolist() == [4, 1, 2, 3]
        assert not controller.queue_stopped(qid)
    finally:
        rig.driver.admin(ADMIN_DELETE_IO_SQ, cdw10=qid)
        rig.driver.admin(ADMIN_DELETE_IO_CQ, cdw10=qid)


@pytest.mark.parametrize("doorbell", ["sq_tail_past_the_end", "cq_head_past_the_tail"])
def test_a_doorbell_write_out_of_range_stops_the_queue(rig, doorbell):
    controller = rig.controller
    pair = rig.driver.create_queue_pair(8)
    try:
        bad = controller.statistics.bad_doorbells
        if doorbell == "sq_tail_past_the_end":
            controller.doorbells[sq_tail_doorbell(pair.qid)] = 8
        else:
            # One completion posted and consumed: a head of 2 claims one never posted.
            assert status_of(rig.run(pair, flushes(0, 1))[0]) == 0
            controller.doorbells[cq_head_doorbell(pair.qid)] = 2
        controller.poll()
        assert controller.queue_stopped(pair.qid)
        assert controller.statistics.bad_doorbells == bad + 1
        # Nothing more is fetched from a stopped queue.
        fetched = controller.statistics.fetched
        pair.submit(flushes(5, 1))
        controller.poll()
        assert controller.statistics.fetched == fetched
    finally:
        rig.driver.delete_queue_pair(pair)


def reap_one(pair, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        completions = pair.reap(1)
        if len(completions):
            return completions[0]
    raise AssertionError(f"no completion on queue {pair.qid} in {timeout} s")


def test_several_queue_pairs_on_a_controller_polled_from_another_thread(rig):
    # The host's threads and the controller's on different cores where there are two: the
    # doorbells and phase tags carry every command and completion across.
    pairs = [rig.driver.create_queue_pair(16) for _ in range(rig.driver.io_queues)]
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            rig.controller.poll()

    server = threading.Thread(target=serve)
    server.start()
    try:
        block = rig.driver.block_size
        buffers = {}
        for round_ in range(20):
            for index, pair in enumerate(pairs):
                slba = (round_ * len(pairs) + index) * 8
                data = rig.memory.alloc(8 * block)
                data[:] = (np.arange(8 * block) + slba) % 251
                buffers[slba] = data
                assert pair.submit(command(NVM_WRITE, round_, slba=slba, blocks=8,
                                           prp1=data.ctypes.data,
                                           prp2=data.ctypes.data + PAGE_SIZE)) == 1
            for pair in pairs:
                completion = reap_one(pair)
                assert status_of(completion) == 0
                assert completion["cid"] == round_
        for slba, data in buffers.items():
            target = rig.memory.alloc(8 * block)
            pair = pairs[0]
            pair.submit(command(NVM_READ, 1, slba=slba, blocks=8, prp1=target.ctypes.data,
                                prp2=target.ctypes.data + PAGE_SIZE))
            assert status_of(reap_one(pair)) == 0
            assert (target == data).all()
            rig.memory.free(target)
            rig.memory.free(data)
    finally:
        stop.set()
        server.join()
        for pair in pairs:
            rig.driver.delete_queue_pair(pair)
