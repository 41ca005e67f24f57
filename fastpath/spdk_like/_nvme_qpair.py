"""`NvmeQueuePair`: the host's side of one I/O submission queue and its completion queue.

Both queues are arrays in host memory (Base §3.3.1): the host writes commands at the
submission queue's tail and publishes them by writing the tail to the queue's doorbell; the
controller posts completions at the completion queue's tail, inverting the phase tag on each
lap, and the host consumes them at its head, handing the entries back through the head
doorbell. A submission queue is full when its tail is one behind its head (Base §3.3.1.5): one
entry stays empty; the host learns the head from the SQ Head Pointer of each completion.

The host's state is one row of uint64 (`QP_*`), which compiled code takes: `qpair_push` writes
one command, `qpair_ring` publishes the commands written, `qpair_reap` consumes a burst of
completions. The Python methods do the same, a call per burst.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastpath._numba import NJIT, carray, u32_pointer
from fastpath.spdk_like._dma import HostMemory, acquire_fence, release_fence
from fastpath.spdk_like._nvme_layout import (
    CQ_DW2,
    CQ_DW3,
    CQ_PHASE_SHIFT,
    CQE,
    CQE_DWORDS,
    SQE,
    SQE_DWORDS,
    cq_head_doorbell,
    sq_tail_doorbell,
)

# Host queue pair row (uint64).
QP_SQ = 0             # address of the submission queue (entries x 16 dwords)
QP_CQ = 1             # address of the completion queue (entries x 4 dwords)
QP_ENTRIES = 2        # entries of each queue
QP_SQ_TAIL = 3        # where the next command goes
QP_SQ_HEAD = 4        # the controller's head, as the last completion reported it
QP_CQ_HEAD = 5        # the next completion to consume
QP_PHASE = 6          # the phase tag of a new completion at QP_CQ_HEAD
QP_SQ_DOORBELL = 7    # address of the submission queue's tail doorbell (uint32)
QP_CQ_DOORBELL = 8    # address of the completion queue's head doorbell (uint32)
QP_BAD_HEADS = 9      # completions whose SQ head was past the queue's end (ignored)
QP_COLUMNS = 10


@njit(**NJIT)
def qpair_space(row):
    """Commands the submission queue takes now: entries - 1 less those not yet consumed."""
    entries = np.int64(row[QP_ENTRIES])
    return entries - 1 - (np.int64(row[QP_SQ_TAIL]) - np.int64(row[QP_SQ_HEAD])) % entries


@njit(**NJIT)
def qpair_push(row, command):
    """Write `command` (16 dwords) at the tail; returns 1, or 0 when the queue is full. The
    controller sees it once `qpair_ring` publishes it."""
    if qpair_space(row) == 0:
        return 0
    entries = np.int64(row[QP_ENTRIES])
    tail = np.int64(row[QP_SQ_TAIL])
    # SAFETY: QP_SQ is the address of the pair's submission queue of `entries` entries, in
    # host memory the NvmeQueuePair keeps alive.
    sq = carray(u32_pointer(row[QP_SQ]), (entries, SQE_DWORDS))
    for k in range(SQE_DWORDS):
        sq[tail, k] = command[k]
    row[QP_SQ_TAIL] = (tail + 1) % entries
    return 1


@njit(**NJIT)
def qpair_ring(row):
    """Publish every command written: the tail to the submission queue's doorbell."""
    # The entries are written before the doorbell that hands them over.
    release_fence()
    # SAFETY: QP_SQ_DOORBELL is the address of a doorbell word of the controller's array,
    # which outlives its queue pairs.
    doorbell = carray(u32_pointer(row[QP_SQ_DOORBELL]), (1,))
    doorbell[0] = np.uint32(row[QP_SQ_TAIL])


@njit(**NJIT)
def qpair_submit(row, commands, first, n):
    """Write commands[first:first + n] (rows of 16 dwords) and publish them; returns how many
    the queue took (fewer when it fills)."""
    taken = 0
    for k in range(first, first + n):
        if qpair_push(row, commands[k]) == 0:
            break
        taken += 1
    if taken:
        qpair_ring(row)
    return taken


@njit(**NJIT)
def qpair_reap(row, completions, max_n):
    """Consume up to max_n new completions into completions[:n] (rows of 4 dwords) and hand
    their entries back through the head doorbell; returns n."""
    entries = np.int64(row[QP_ENTRIES])
    head = np.int64(row[QP_CQ_HEAD])
    phase = np.int64(row[QP_PHASE])
    # SAFETY: QP_CQ is the address of the pair's completion queue of `entries` entries, in
    # host memory the NvmeQueuePair keeps alive.
    cq = carray(u32_pointer(row[QP_CQ]), (entries, CQE_DWORDS))
    n = 0
    while n < max_n:
        # The phase tag is written last (Base §3.3.3.2): an entry whose tag is the lap's
        # is new, and the rest of it is read only after the tag.
        if (cq[head, CQ_DW3] >> CQ_PHASE_SHIFT) & 1 != phase:
            break
        acquire_fence()
        for k in range(CQE_DWORDS):
            completions[n, k] = cq[head, k]
        sq_head = np.int64(cq[head, CQ_DW2] & 0xFFFF)
        if sq_head < entries:
            row[QP_SQ_HEAD] = sq_head
        else:
            row[QP_BAD_HEADS] += 1
        head += 1
        if head == entries:
            head = 0
            phase ^= 1
        n += 1
    if n:
        row[QP_CQ_HEAD] = head
        row[QP_PHASE] = phase
        # The entries are read before the doorbell gives them back.
        release_fence()
        # SAFETY: as in qpair_ring, the controller's head doorbell word of this queue.
        doorbell = carray(u32_pointer(row[QP_CQ_DOORBELL]), (1,))
        doorbell[0] = np.uint32(head)
    return n


class NvmeQueuePair:
    """The host's side of I/O queue pair `qid` of `entries` entries (2 or more), its queues in
    `memory`, its doorbells words of the controller's `doorbells` array. Made by a driver,
    which has the controller create the queues (`NvmeDriver.create_queue_pair`)."""

    def __init__(self, memory: HostMemory, qid: int, entries: int, doorbells: np.ndarray):
        if entries < 2:
            raise ValueError(f"a queue has 2 entries or more, not {entries}")
        self.memory = memory
        self.qid = qid
        self.entries = entries
        self.doorbells = doorbells
        self.sq = memory.alloc(entries * SQE.itemsize).view(SQE)
        self.cq = memory.alloc(entries * CQE.itemsize).view(CQE)
        self.row = np.zeros(QP_COLUMNS, dtype=np.uint64)
        self.row[QP_SQ] = self.sq.ctypes.data
        self.row[QP_CQ] = self.cq.ctypes.data
        self.row[QP_ENTRIES] = entries
        # A new queue's completion entries are zero: the first lap's tag is 1 (Base §3.3.1.1).
        self.row[QP_PHASE] = 1
        self.row[QP_SQ_DOORBELL] = doorbells[sq_tail_doorbell(qid):].ctypes.data
        self.row[QP_CQ_DOORBELL] = doorbells[cq_head_doorbell(qid):].ctypes.data

    @property
    def space(self) -> int:
        """Commands the submission queue takes now."""
        return int(qpair_space(self.row))

    def submit(self, commands: np.ndarray) -> int:
        """Write and publish `commands` (an SQE array, or one SQE); returns how many the
        queue took, in order."""
        words = np.ascontiguousarray(commands, dtype=SQE).view(np.uint32)
        words = words.reshape(-1, SQE_DWORDS)
        return int(qpair_submit(self.row, words, 0, len(words)))

    def reap(self, max_n: int | None = None) -> np.ndarray:
        """The new completions (a CQE array), up to max_n (a queue's worth by default)."""
        completions = np.zeros((max_n or self.entries, CQE_DWORDS), dtype=np.uint32)
        n = qpair_reap(self.row, completions, len(completions))
        return completions[:n].copy().view(CQE).reshape(n)

    def release(self) -> None:
        """Give the queues' memory back (once the controller deleted them)."""
        self.memory.free(self.sq.view(np.uint8))
        self.memory.free(self.cq.view(np.uint8))
