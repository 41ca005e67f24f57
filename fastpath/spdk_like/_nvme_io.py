"""The modelled controller's I/O path, compiled: commands in from the submission queues, block
requests out to the backing bdev, completions back.

`controller_round` does one round over every I/O queue: it reads the doorbells, fetches up to
a burst of commands from each submission queue, turns each into `BLOCK_IO` requests (or
fails it at once with its NVMe status, without the backing bdev seeing it), submits the
requests to the backing bdev's channel (`bdev_submit`), reaps its completions (`bdev_poll`)
and posts a completion entry for each command whose requests are all done.

The controller's state is one row of uint64 (`CTL_*`) naming its tables by address:
- submission queues (`SUB_*`) and completion queues (`COM_*`), a row per queue id, the admin
  queues in row 0 (served in Python, `NvmeController`);
- doorbells, two uint32 words per queue id (`sq_tail_doorbell`, `cq_head_doorbell`);
- the DMA map (`fastpath.spdk_like._dma`): every address a command names is checked in it;
- command slots (`SLOT_*`), a free stack of them, and MAX_IOVECS iovecs per slot;
- a scratch page for Dataset Management's ranges.
The requests not yet taken by the backing wait in a ring of BLOCK_IO (`pending`), their `tag`
the command's slot.

A command is fetched only when its completion queue will have room for it: commands in
flight to a completion queue plus the entries the host has not consumed stay below its
size, so a completion never waits for room (Base §3.3.1.5: a full queue holds size - 1).
A doorbell write out of range (a tail past the queue's end, a head past the last posted
entry) stops the queue (Base §3.3.1.2: Invalid Doorbell Write Value): it fetches nothing
more, and completions for a stopped completion queue are dropped and counted.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastpath._numba import NJIT, carray, copy_bytes, u32_pointer, u64_pointer
from fastpath.devices.blk import (
    IO_DISCARD,
    IO_FLAG_FUA,
    IO_FLAG_MAY_UNMAP,
    IO_FLUSH,
    IO_READ,
    IO_WRITE,
    IO_WRITE_ZEROES,
    STATUS_INVALID,
    STATUS_IO_ERROR,
    STATUS_NO_SPACE,
    STATUS_READ_ONLY,
    STATUS_UNSUPPORTED,
)
from fastpath.spdk_like._bdev import bdev_poll, bdev_submit
from fastpath.spdk_like._dma import REGION_COLUMNS, acquire_fence, release_fence
from fastpath.spdk_like._nvme_dptr import MAX_SGL_DATA_DESCRIPTORS, data_to_iovecs
from fastpath.spdk_like._nvme_layout import (
    CDW0_CID_SHIFT,
    CDW0_FUSE_MASK,
    CDW0_FUSE_SHIFT,
    CDW0_OPCODE_MASK,
    CDW0_PSDT_MASK,
    CDW0_PSDT_SHIFT,
    CDW10_NR_MASK,
    CDW11_AD,
    CDW12_DEAC,
    CDW12_FUA,
    CDW12_NLB_MASK,
    CQ_DW0,
    CQ_DW2,
    CQ_DW3,
    CQ_PHASE_SHIFT,
    CQ_SQID_SHIFT,
    CQ_STATUS_SHIFT,
    CQE_DWORDS,
    DSM_BLOCKS_SHIFT,
    DSM_MAX_RANGES,
    DSM_RANGE,
    DSM_SLBA_QWORD,
    NSID_ALL,
    NVM_DATASET_MANAGEMENT,
    NVM_FLUSH,
    NVM_READ,
    NVM_WRITE,
    NVM_WRITE_ZEROES,
    SQ_CDW0,
    SQ_CDW10,
    SQ_CDW11,
    SQ_CDW12,
    SQ_NSID,
    SQE_DWORDS,
    STATUS_CAPACITY_EXCEEDED,
    STATUS_INTERNAL_ERROR,
    STATUS_INVALID_FIELD,
    STATUS_INVALID_NAMESPACE,
    STATUS_INVALID_OPCODE,
    STATUS_LBA_OUT_OF_RANGE,
    STATUS_UNRECOVERED_READ_ERROR,
    STATUS_WRITE_FAULT,
    STATUS_WRITE_PROTECTED,
    cq_head_doorbell,
    qword,
    sq_tail_doorbell,
)

# Controller row (uint64).
CTL_SQS = 0               # address of the submission queue table (queues x SUB_COLUMNS)
CTL_CQS = 1               # address of the completion queue table (queues x COM_COLUMNS)
CTL_QUEUES = 2            # rows of each: queue ids 0 (admin) to queues - 1
CTL_DOORBELLS = 3         # address of the doorbells (2 x queues uint32)
CTL_REGIONS = 4           # address of the DMA map
CTL_REGION_COUNT = 5
CTL_SLOTS = 6             # address of the command slots (slots x SLOT_COLUMNS)
CTL_SLOT_COUNT = 7
CTL_FREE = 8              # address of the free slot stack (uint64)
CTL_FREE_TOP = 9          # free slots on it
CTL_IOVECS = 10           # address of the iovecs (slots x MAX_IOVECS rows of 2 uint64)
CTL_SCRATCH = 11          # address of DSM_MAX_RANGES ranges of scratch
CTL_PENDING_HEAD = 12     # requests offered from `pending` so far
CTL_PENDING_TAIL = 13     # requests put into `pending` so far
CTL_BLOCK_SHIFT = 14      # log2 of the block size
CTL_BLOCKS = 15           # the namespace's size in blocks
CTL_MAX_TRANSFER = 16     # bytes a command may move (MDTS)
CTL_BURST = 17            # commands fetched from one queue per round, at most
CTL_ADMIN_WAITING = 18    # nonzero while an admin command waits on the I/O path
CTL_SERVICE = 19          # set by a round that leaves admin work to Python
CTL_FETCHED = 20          # statistics: I/O commands fetched,
CTL_POSTED = 21           # completions posted (admin ones too),
CTL_FAILED = 22           # of which with an error status,
CTL_BAD_DOORBELLS = 23    # doorbell writes that stopped a queue,
CTL_STRAY = 24            # backing completions that named no command in flight,
CTL_LOST = 25             # completions not posted: their completion queue had stopped
CTL_COLUMNS = 26

# Submission queue table columns.
SUB_BASE = 0
SUB_ENTRIES = 1
SUB_HEAD = 2
SUB_CQID = 3
SUB_IN_FLIGHT = 4         # its commands fetched and not yet completed
SUB_STATE = 5
SUB_COLUMNS = 6

# Completion queue table columns.
COM_BASE = 0
COM_ENTRIES = 1
COM_TAIL = 2
COM_HEAD = 3              # as the host's last valid doorbell write left it
COM_PHASE = 4             # the tag of the lap the tail is in
COM_OWED = 5              # commands in flight that will complete here
COM_STATE = 6
COM_COLUMNS = 7

# Queue states.
QUEUE_ABSENT = 0
QUEUE_LIVE = 1
QUEUE_DELETING = 2        # a submission queue being deleted: nothing more is fetched
QUEUE_STOPPED = 3         # an invalid doorbell write stopped it

# Command slot columns.
SLOT_SQID = 0
SLOT_CID = 1
SLOT_OPCODE = 2
SLOT_REMAINING = 3        # requests still with the backing; 0 for a free slot
SLOT_STATUS = 4           # the first error status of its requests
SLOT_COLUMNS = 5

# The iovecs one command may need: MDTS of 32 pages, and a first page entered at an offset.
MAX_TRANSFER_PAGES = 32
MAX_IOVECS = MAX_TRANSFER_PAGES + 1
assert MAX_IOVECS >= MAX_SGL_DATA_DESCRIPTORS

# _start's outcome for a command whose requests went to `pending`.
_IN_FLIGHT = -1
_DSM_RANGE_BYTES = DSM_RANGE.itemsize
_DSM_WORDS = _DSM_RANGE_BYTES // 8


@njit(**NJIT)
def _tables(ctl):
    # The controller's tables, from the addresses in its row.
    queues = np.int64(ctl[CTL_QUEUES])
    # SAFETY: every address in the controller row names an array the NvmeController made
    # with the shape used here and keeps alive with the row.
    sqs = carray(u64_pointer(ctl[CTL_SQS]), (queues, SUB_COLUMNS))
    cqs = carray(u64_pointer(ctl[CTL_CQS]), (queues, COM_COLUMNS))
    doorbells = carray(u32_pointer(ctl[CTL_DOORBELLS]), (2 * queues,))
    return sqs, cqs, doorbells


@njit(**NJIT)
def post_completion(ctl, cqid, sqid, cid, status, dw0):
    """Post a completion entry for command `cid` of submission queue `sqid` on completion
    queue `cqid` (which has room): its status, its dword 0, and the submission queue's head."""
    sqs, cqs, _ = _tables(ctl)
    entries = np.int64(cqs[cqid, COM_ENTRIES])
    tail = np.int64(cqs[cqid, COM_TAIL])
    phase = np.int64(cqs[cqid, COM_PHASE])
    # SAFETY: a live completion queue's base and entries were checked against the DMA map
    # when the queue was created.
    cq = carray(u32_pointer(cqs[cqid, COM_BASE]), (entries, CQE_DWORDS))
    cq[tail, CQ_DW0] = np.uint32(dw0)
    cq[tail, CQ_DW0 + 1] = 0
    cq[tail, CQ_DW2] = np.uint32(sqs[sqid, SUB_HEAD] | sqid << CQ_SQID_SHIFT)
    # The phase tag goes in the entry's last write (Base §3.3.3.2).
    release_fence()
    cq[tail, CQ_DW3] = np.uint32(cid | phase << CQ_PHASE_SHIFT | status << CQ_STATUS_SHIFT)
    tail += 1
    if tail == entries:
        tail = 0
        cqs[cqid, COM_PHASE] = phase ^ 1
    cqs[cqid, COM_TAIL] = tail
    ctl[CTL_POSTED] += 1
    if status != 0:
        ctl[CTL_FAILED] += 1


@njit(**NJIT)
def _queue_request(ctl, pending, tag, operation, offset, length, iov, iovcnt, flags):
    # Put one request into `pending` (which has room).
    tail = np.int64(ctl[CTL_PENDING_TAIL])
    io = pending[tail & (pending.shape[0] - 1)]
    io.tag = tag
    io.offset = offset
    io.length = length
    io.iov = iov
    io.iovcnt = iovcnt
    io.operation = operation
    io.flags = flags
    ctl[CTL_PENDING_TAIL] = tail + 1


@njit(**NJIT)
def _out_of_range(ctl, slba, blocks):
    # Whether blocks [slba, slba + blocks) leave the namespace (slba as the host wrote it,
    # any 64-bit value).
    size = ctl[CTL_BLOCKS]
    return slba >= size or np.uint64(blocks) > size - slba


@njit(**NJIT)
def _start_dataset_management(ctl, sqe, slot, slots, iov, count, pending):
    # Read the command's ranges (in iov[:count]); each range to deallocate becomes a discard.
    ranges = np.int64(sqe[SQ_CDW10] & CDW10_NR_MASK) + 1
    # SAFETY: the scratch area holds DSM_MAX_RANGES ranges; the pieces in iov were checked
    # against the DMA map and add up to `ranges` ranges' bytes.
    scratch = carray(u64_pointer(ctl[CTL_SCRATCH]), (DSM_MAX_RANGES, _DSM_WORDS))
    done = 0
    for k in range(count):
        copy_bytes(scratch.ctypes.data + done, iov[k, 0], iov[k, 1])
        done += np.int64(iov[k, 1])
    for k in range(ranges):
        blocks = scratch[k, 0] >> np.uint64(DSM_BLOCKS_SHIFT)
        if blocks != 0 and _out_of_range(ctl, scratch[k, DSM_SLBA_QWORD], blocks):
            return STATUS_LBA_OUT_OF_RANGE
    if not sqe[SQ_CDW11] & CDW11_AD:
        # Without Deallocate the ranges are hints, which the model takes and ignores.
        return 0
    shift = np.int64(ctl[CTL_BLOCK_SHIFT])
    requests = 0
    for k in range(ranges):
        blocks = scratch[k, 0] >> np.uint64(DSM_BLOCKS_SHIFT)
        if blocks != 0:
            offset = scratch[k, DSM_SLBA_QWORD] << np.uint64(shift)
            _queue_request(ctl, pending, slot, IO_DISCARD, offset, blocks << np.uint64(shift),
                           0, 0, 0)
            requests += 1
    if requests == 0:
        return 0
    slots[slot, SLOT_REMAINING] = requests
    return _IN_FLIGHT


@njit(**NJIT)
def _start(ctl, sqe, sqid, slot, slots, pending, regions):
    # Check one command and queue its requests: returns _IN_FLIGHT, or the status it completes
    # with at once. The checks go in this order: opcode, fused operation and PSDT, namespace,
    # transfer size, LBA range, data pointer.
    cdw0 = sqe[SQ_CDW0]
    opcode = np.int64(cdw0 & CDW0_OPCODE_MASK)
    slots[slot, SLOT_SQID] = sqid
    slots[slot, SLOT_CID] = cdw0 >> CDW0_CID_SHIFT
    slots[slot, SLOT_OPCODE] = opcode
    slots[slot, SLOT_STATUS] = 0
    if (opcode != NVM_FLUSH and opcode != NVM_WRITE and opcode != NVM_READ
            and opcode != NVM_WRITE_ZEROES and opcode != NVM_DATASET_MANAGEMENT):
        return STATUS_INVALID_OPCODE
    # No fused operations; PSDT 11b is reserved.
    if (cdw0 >> CDW0_FUSE_SHIFT) & CDW0_FUSE_MASK or (
            (cdw0 >> CDW0_PSDT_SHIFT) & CDW0_PSDT_MASK == CDW0_PSDT_MASK):
        return STATUS_INVALID_FIELD
    nsid = sqe[SQ_NSID]
    if opcode == NVM_FLUSH:
        if nsid != 1 and nsid != NSID_ALL:
            return STATUS_INVALID_NAMESPACE
        _queue_request(ctl, pending, slot, IO_FLUSH, 0, 0, 0, 0, 0)
        slots[slot, SLOT_REMAINING] = 1
        return _IN_FLIGHT
    if nsid != 1:
        return STATUS_INVALID_NAMESPACE
    # SAFETY: the slot's own MAX_IOVECS rows of the iovec array the controller keeps.
    iov = carray(u64_pointer(ctl[CTL_IOVECS] + slot * MAX_IOVECS * 16), (MAX_IOVECS, 2))
    if opcode == NVM_DATASET_MANAGEMENT:
        nbytes = (np.int64(sqe[SQ_CDW10] & CDW10_NR_MASK) + 1) * _DSM_RANGE_BYTES
        count = data_to_iovecs(regions, sqe, nbytes, iov, MAX_IOVECS)
        if count < 0:
            return -count
        return _start_dataset_management(ctl, sqe, slot, slots, iov, count, pending)
    shift = np.int64(ctl[CTL_BLOCK_SHIFT])
    slba = qword(sqe, SQ_CDW10)
    blocks = np.int64(sqe[SQ_CDW12] & CDW12_NLB_MASK) + 1
    length = blocks << shift
    if opcode != NVM_WRITE_ZEROES and length > np.int64(ctl[CTL_MAX_TRANSFER]):
        return STATUS_INVALID_FIELD
    if _out_of_range(ctl, slba, blocks):
        return STATUS_LBA_OUT_OF_RANGE
    offset = slba << np.uint64(shift)
    # Force Unit Access asks for stable data: the request's FUA (a read's FUA only says where
    # to read from, which a model has no choice of).
    flags = IO_FLAG_FUA if opcode != NVM_READ and sqe[SQ_CDW12] & CDW12_FUA else 0
    if opcode == NVM_WRITE_ZEROES:
        if sqe[SQ_CDW12] & CDW12_DEAC:
            flags |= IO_FLAG_MAY_UNMAP
        _queue_request(ctl, pending, slot, IO_WRITE_ZEROES, offset, length, 0, 0, flags)
    else:
        count = data_to_iovecs(regions, sqe, length, iov, MAX_IOVECS)
        if count < 0:
            return -count
        _queue_request(ctl, pending, slot, IO_READ if opcode == NVM_READ else IO_WRITE, offset,
                       length, iov.ctypes.data, count, flags)
    slots[slot, SLOT_REMAINING] = 1
    return _IN_FLIGHT


@njit(**NJIT)
def _read_completion_heads(ctl, cqs, doorbells):
    # Take each live completion queue's head doorbell, if the host moved it validly: within
    # the queue, and not past the last entry posted.
    for qid in range(cqs.shape[0]):
        if cqs[qid, COM_STATE] != QUEUE_LIVE:
            continue
        head = np.int64(doorbells[cq_head_doorbell(qid)])
        old = np.int64(cqs[qid, COM_HEAD])
        if head == old:
            continue
        entries = np.int64(cqs[qid, COM_ENTRIES])
        posted = (np.int64(cqs[qid, COM_TAIL]) - old) % entries
        if head >= entries or (head - old) % entries > posted:
            cqs[qid, COM_STATE] = QUEUE_STOPPED
            ctl[CTL_BAD_DOORBELLS] += 1
        else:
            cqs[qid, COM_HEAD] = head


@njit(**NJIT)
def _fetch(ctl, qid, sqs, cqs, doorbells, slots, free, pending, regions):
    # Fetch up to a burst of commands from submission queue qid; returns how many.
    if sqs[qid, SUB_STATE] != QUEUE_LIVE:
        return 0
    cqid = np.int64(sqs[qid, SUB_CQID])
    if cqs[cqid, COM_STATE] != QUEUE_LIVE:
        return 0
    entries = np.int64(sqs[qid, SUB_ENTRIES])
    tail = np.int64(doorbells[sq_tail_doorbell(qid)])
    if tail >= entries:
        sqs[qid, SUB_STATE] = QUEUE_STOPPED
        ctl[CTL_BAD_DOORBELLS] += 1
        return 0
    # The doorbell is read before the entries it publishes.
    acquire_fence()
    head = np.int64(sqs[qid, SUB_HEAD])
    # SAFETY: a live submission queue's base and entries were checked against the DMA map
    # when the queue was created.
    sq = carray(u32_pointer(sqs[qid, SUB_BASE]), (entries, SQE_DWORDS))
    cq_entries = np.int64(cqs[cqid, COM_ENTRIES])
    capacity = pending.shape[0]
    fetched = 0
    while head != tail and fetched < np.int64(ctl[CTL_BURST]):
        used = (np.int64(cqs[cqid, COM_TAIL]) - np.int64(cqs[cqid, COM_HEAD])) % cq_entries
        if np.int64(cqs[cqid, COM_OWED]) + used >= cq_entries - 1:
            break
        if ctl[CTL_FREE_TOP] == 0:
            break
        if capacity - np.int64(ctl[CTL_PENDING_TAIL] - ctl[CTL_PENDING_HEAD]) < DSM_MAX_RANGES:
            break
        ctl[CTL_FREE_TOP] -= 1
        slot = np.int64(free[ctl[CTL_FREE_TOP]])
        sqe = sq[head]
        head = (head + 1) % entries
        sqs[qid, SUB_HEAD] = head
        fetched += 1
        outcome = _start(ctl, sqe, qid, slot, slots, pending, regions)
        if outcome == _IN_FLIGHT:
            sqs[qid, SUB_IN_FLIGHT] += 1
            cqs[cqid, COM_OWED] += 1
        else:
            post_completion(ctl, cqid, qid, slots[slot, SLOT_CID], outcome, 0)
            free[ctl[CTL_FREE_TOP]] = slot
            ctl[CTL_FREE_TOP] += 1
    ctl[CTL_FETCHED] += fetched
    return fetched


@njit(**NJIT)
def _offer(ctl, pending, channel):
    # Offer the waiting requests to the backing, in order, in up to two contiguous pieces.
    capacity = pending.shape[0]
    head = np.int64(ctl[CTL_PENDING_HEAD])
    tail = np.int64(ctl[CTL_PENDING_TAIL])
    while head != tail:
        first = head & (capacity - 1)
        n = min(tail - head, capacity - first)
        taken = bdev_submit(channel, pending, first, n)
        head += taken
        if taken < n:
            break
    ctl[CTL_PENDING_HEAD] = head


@njit(**NJIT)
def _nvme_status(status, opcode):
    # The NVMe status of a request the backing failed with a negative errno.
    if status == STATUS_IO_ERROR:
        if opcode == NVM_READ:
            return STATUS_UNRECOVERED_READ_ERROR
        if opcode == NVM_DATASET_MANAGEMENT:
            return STATUS_INTERNAL_ERROR
        return STATUS_WRITE_FAULT
    if status == STATUS_READ_ONLY:
        return STATUS_WRITE_PROTECTED
    if status == STATUS_INVALID:
        return STATUS_INVALID_FIELD
    if status == STATUS_UNSUPPORTED:
        return STATUS_INVALID_OPCODE
    if status == STATUS_NO_SPACE:
        return STATUS_CAPACITY_EXCEEDED
    return STATUS_INTERNAL_ERROR


@njit(**NJIT)
def _finish(ctl, tag, status, sqs, cqs, slots, free):
    # One completion of the backing: once a command's last request is back, post its
    # completion.
    if tag >= ctl[CTL_SLOT_COUNT] or slots[tag, SLOT_REMAINING] == 0:
        ctl[CTL_STRAY] += 1
        return
    slot = np.int64(tag)
    if status != 0 and slots[slot, SLOT_STATUS] == 0:
        slots[slot, SLOT_STATUS] = _nvme_status(status, np.int64(slots[slot, SLOT_OPCODE]))
    slots[slot, SLOT_REMAINING] -= 1
    if slots[slot, SLOT_REMAINING] != 0:
        return
    sqid = np.int64(slots[slot, SLOT_SQID])
    cqid = np.int64(sqs[sqid, SUB_CQID])
    sqs[sqid, SUB_IN_FLIGHT] -= 1
    cqs[cqid, COM_OWED] -= 1
    if cqs[cqid, COM_STATE] == QUEUE_LIVE:
        post_completion(ctl, cqid, sqid, slots[slot, SLOT_CID], slots[slot, SLOT_STATUS], 0)
    else:
        ctl[CTL_LOST] += 1
    free[ctl[CTL_FREE_TOP]] = slot
    ctl[CTL_FREE_TOP] += 1


@njit(**NJIT)
def controller_round(ctl, pending, completions, channel):
    """One round of the controller's I/O path over the backing bdev `channel` (its row; see
    the module's doc); returns the commands fetched and the backing's completions reaped.
    Sets ctl[CTL_SERVICE] when the admin queue has work for Python."""
    sqs, cqs, doorbells = _tables(ctl)
    # SAFETY: as in _tables: arrays of the NvmeController, of these shapes.
    regions = carray(u64_pointer(ctl[CTL_REGIONS]), (np.int64(ctl[CTL_REGION_COUNT]),
                                                      REGION_COLUMNS))
    slots = carray(u64_pointer(ctl[CTL_SLOTS]), (np.int64(ctl[CTL_SLOT_COUNT]), SLOT_COLUMNS))
    free = carray(u64_pointer(ctl[CTL_FREE]), (np.int64(ctl[CTL_SLOT_COUNT]),))
    _read_completion_heads(ctl, cqs, doorbells)
    work = 0
    for qid in range(1, sqs.shape[0]):
        work += _fetch(ctl, qid, sqs, cqs, doorbells, slots, free, pending, regions)
    _offer(ctl, pending, channel)
    n = bdev_poll(channel, completions, completions.shape[0])
    for k in range(n):
        _finish(ctl, completions[k].tag, completions[k].status, sqs, cqs, slots, free)
    work += n
    if sqs[0, SUB_STATE] == QUEUE_LIVE and (
            doorbells[sq_tail_doorbell(0)] != sqs[0, SUB_HEAD] or ctl[CTL_ADMIN_WAITING]):
        ctl[CTL_SERVICE] = 1
    return work
