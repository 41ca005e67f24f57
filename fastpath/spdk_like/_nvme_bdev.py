"""The nvme bdev: a bdev that drives a modelled NVMe controller, as SPDK's NVMe bdev drives a
device, through one I/O queue pair per channel.

Requests become commands: a read or write of up to the controller's maximum transfer (MDTS)
and MAX_SGL_DATA_DESCRIPTORS pieces per command, its buffers described by PRPs where they
fit and an SGL otherwise; write zeroes of up to 65536 blocks per Write Zeroes; a discard of
up to 2**32 - 1 blocks per Dataset Management range (Deallocate); a flush, one Flush. A
request larger than one command is split, and completes once every command of it has, with
the first error. Each command has a tracker (its command id) with a page of host memory for
its PRP list, SGL segment or range.

Compiled on both sides: `start` queues a request in the channel; `kick` turns queued requests
into commands on the submission queue and rings its doorbell; `reap` consumes completions,
finishes requests and issues what waited for a tracker or for room in the queue. The
controller runs on a poll host (its own by default, on a thread of its own), its backing the
bdev the spec names (`nvme:malloc:64M`). The controller reaches the whole process's memory
(passthrough): its host is this bdev, whose requests' buffers the submitter vouches for (the
executor contract of `fastpath.devices.blk`); its queues and lists live in host memory of
the bdev's own.
"""

from __future__ import annotations

import errno

import numpy as np
from numba import njit

from fastpath._numba import NJIT, carray, u32_pointer, u64_pointer
from fastpath.devices.blk import (
    IO_FLAG_FUA,
    IO_FLAG_MAY_UNMAP,
    IO_FLUSH,
    IO_READ,
    IO_WRITE,
    IO_WRITE_ZEROES,
)
from fastpath.pmd import PollHost
from fastpath.spdk_like._bdev import (
    CH_ARGS,
    Bdev,
    BdevChannel,
    BdevKind,
    complete_now,
    open_bdev,
    register_bdev_kind,
)
from fastpath.spdk_like._dma import HostMemory
from fastpath.spdk_like._nvme_controller import NvmeController
from fastpath.spdk_like._nvme_dptr import MAX_SGL_DATA_DESCRIPTORS, build_data_pointer
from fastpath.spdk_like._nvme_driver import NvmeDriver
from fastpath.spdk_like._nvme_layout import (
    CDW0_CID_SHIFT,
    CDW11_AD,
    CDW12_DEAC,
    CDW12_FUA,
    CQ_DW3,
    CQ_STATUS_SHIFT,
    CQE_DWORDS,
    DSM_BLOCKS_SHIFT,
    DSM_SLBA_QWORD,
    NVM_DATASET_MANAGEMENT,
    NVM_FLUSH,
    NVM_READ,
    NVM_WRITE,
    NVM_WRITE_ZEROES,
    PAGE_SIZE,
    SCT_MEDIA,
    SCT_SHIFT,
    SQ_CDW0,
    SQ_CDW10,
    SQ_CDW11,
    SQ_CDW12,
    SQ_NSID,
    SQ_PRP1,
    SQE_DWORDS,
    STATUS_CAPACITY_EXCEEDED,
    STATUS_DATA_TRANSFER_ERROR,
    STATUS_INTERNAL_ERROR,
    STATUS_INVALID_OPCODE,
    STATUS_WRITE_PROTECTED,
    set_qword,
)
from fastpath.spdk_like._nvme_poller import NvmePoller
from fastpath.spdk_like._nvme_qpair import (
    QP_COLUMNS,
    qpair_push,
    qpair_reap,
    qpair_ring,
    qpair_space,
)

KIND = 5

ARG_STATE = CH_ARGS   # address of the channel's own state row (NV_*)

# The channel's state row (uint64).
NV_QPAIR = 0              # address of its queue pair's row (QP_*)
NV_REQUESTS = 1           # address of the request table (depth x REQ_COLUMNS)
NV_FREE_REQUESTS = 2      # address of the free request stack (depth)
NV_FREE_REQUEST_TOP = 3
NV_ORDER = 4              # address of the ring of requests with commands still to issue
NV_ORDER_MASK = 5
NV_ORDER_HEAD = 6
NV_ORDER_TAIL = 7
NV_TRACKERS = 8           # address of the tracker table: the request of each command id
NV_FREE_TRACKERS = 9      # address of the free tracker stack
NV_FREE_TRACKER_TOP = 10
NV_TRACKER_COUNT = 11
NV_PAGES = 12             # address of the trackers' pages (a page each, in host memory)
NV_COMMAND = 13           # address of a command being built (16 dwords)
NV_PIECES = 14            # address of the pieces of one command (MAX pieces x 2 uint64)
NV_CQES = 15              # address of a burst of completion entries (CQE_BURST x 4 dwords)
NV_BLOCK_SHIFT = 16
NV_MAX_TRANSFER = 17      # bytes a read or write command moves at most
NV_STRAY = 18             # completions naming no command in flight
NV_COLUMNS = 19

# Request table columns.
REQ_TAG = 0
REQ_OPERATION = 1
REQ_FLAGS = 2
REQ_OFFSET = 3
REQ_LENGTH = 4
REQ_IOV = 5
REQ_IOVCNT = 6
REQ_ISSUED = 7            # bytes its commands so far cover
REQ_CURSOR = 8            # the iovec the next command starts in...
REQ_CURSOR_OFFSET = 9     # ...and where in it
REQ_OUTSTANDING = 10      # its commands in flight
REQ_STATUS = 11           # the first error (a negative errno in two's complement), or 0
REQ_ALL_ISSUED = 12
REQ_COLUMNS = 13

# Commands' limits beyond MDTS: NLB is 16 bits (Write Zeroes), a range's length 32 bits.
MAX_WRITE_ZEROES_BLOCKS = 1 << 16
MAX_RANGE_BLOCKS = (1 << 32) - 1
CQE_BURST = 64
_NO_TRACKER = (1 << 64) - 1
# A status field's code and type, without Do Not Retry and the other flags.
_CODE_MASK = 0x7FF


@njit(**NJIT)
def _state(channel):
    # SAFETY: ARG_STATE names the state row the NvmeBdev made for this channel and keeps
    # alive with it.
    return carray(u64_pointer(channel[ARG_STATE]), (NV_COLUMNS,))


@njit(**NJIT)
def _requests(state):
    # SAFETY: the channel's request table and free stack, of the channel's depth.
    depth = np.int64(state[NV_ORDER_MASK]) + 1
    return (carray(u64_pointer(state[NV_REQUESTS]), (depth, REQ_COLUMNS)),
            carray(u64_pointer(state[NV_FREE_REQUESTS]), (depth,)),
            carray(u64_pointer(state[NV_ORDER]), (depth,)))


@njit(**NJIT)
def start(channel, io):
    """Take a request: it waits in the channel's order until `kick` issues its commands."""
    state = _state(channel)
    requests, free, order = _requests(state)
    # The bdev layer keeps no more than the channel's depth in flight: a slot is free.
    state[NV_FREE_REQUEST_TOP] -= 1
    slot = free[state[NV_FREE_REQUEST_TOP]]
    request = requests[slot]
    request[REQ_TAG] = io.tag
    request[REQ_OPERATION] = io.operation
    request[REQ_FLAGS] = io.flags
    request[REQ_OFFSET] = io.offset
    request[REQ_LENGTH] = io.length
    request[REQ_IOV] = io.iov
    request[REQ_IOVCNT] = io.iovcnt
    request[REQ_ISSUED] = 0
    request[REQ_CURSOR] = 0
    request[REQ_CURSOR_OFFSET] = 0
    request[REQ_OUTSTANDING] = 0
    request[REQ_STATUS] = 0
    request[REQ_ALL_ISSUED] = 0
    order[state[NV_ORDER_TAIL] & state[NV_ORDER_MASK]] = slot
    state[NV_ORDER_TAIL] += 1
    return 1


@njit(**NJIT)
def _data_pieces(state, request, pieces, last):
    # The pieces of the next read or write command of `request` into pieces[:n]: up to the
    # maximum transfer and MAX_SGL_DATA_DESCRIPTORS pieces, whole blocks unless `last` bytes
    # remain; returns (n, bytes). Leaves the request's cursor at the command's end.
    # SAFETY: the submitter's iovec array of REQ_IOVCNT entries (the executor contract).
    iov = carray(u64_pointer(request[REQ_IOV]), (np.int64(request[REQ_IOVCNT]), 2))
    limit = min(last, np.int64(state[NV_MAX_TRANSFER]))
    index = np.int64(request[REQ_CURSOR])
    offset = np.int64(request[REQ_CURSOR_OFFSET])
    n = 0
    nbytes = 0
    while nbytes < limit and n < MAX_SGL_DATA_DESCRIPTORS and index < iov.shape[0]:
        take = min(np.int64(iov[index, 1]) - offset, limit - nbytes)
        if take > 0:
            pieces[n, 0] = iov[index, 0] + np.uint64(offset)
            pieces[n, 1] = take
            n += 1
            nbytes += take
            offset += take
        if offset == np.int64(iov[index, 1]):
            index += 1
            offset = 0
    if nbytes < last:
        # Not the request's last command: cut it back to whole blocks.
        excess = nbytes & ((np.int64(1) << np.int64(state[NV_BLOCK_SHIFT])) - 1)
        nbytes -= excess
        while excess > 0:
            cut = min(excess, np.int64(pieces[n - 1, 1]))
            pieces[n - 1, 1] -= cut
            excess -= cut
            offset -= cut
            while offset < 0:
                index -= 1
                offset += np.int64(iov[index, 1])
            if pieces[n - 1, 1] == 0:
                n -= 1
    request[REQ_CURSOR] = index
    request[REQ_CURSOR_OFFSET] = offset
    return n, nbytes


@njit(**NJIT)
def _build(state, request, cid, page, command, pieces):
    # Build the next command of `request` in `command`; returns the bytes it covers, or -1
    # for one that cannot be built (a block over more pieces than a command takes).
    for k in range(SQE_DWORDS):
        command[k] = 0
    operation = request[REQ_OPERATION]
    shift = np.int64(state[NV_BLOCK_SHIFT])
    position = request[REQ_OFFSET] + request[REQ_ISSUED]
    slba = position >> np.uint64(shift)
    last = np.int64(request[REQ_LENGTH] - request[REQ_ISSUED])
    fua = CDW12_FUA if request[REQ_FLAGS] & IO_FLAG_FUA else 0
    command[SQ_NSID] = 1
    set_qword(command, SQ_CDW10, slba)
    if operation == IO_FLUSH:
        opcode = NVM_FLUSH
        nbytes = 0
    elif operation == IO_READ or operation == IO_WRITE:
        opcode = NVM_READ if operation == IO_READ else NVM_WRITE
        n, nbytes = _data_pieces(state, request, pieces, last)
        if nbytes == 0 or build_data_pointer(pieces, n, page, command) != 0:
            return -1
        command[SQ_CDW12] = ((nbytes >> shift) - 1) | (fua if operation == IO_WRITE else 0)
    elif operation == IO_WRITE_ZEROES:
        opcode = NVM_WRITE_ZEROES
        nbytes = min(last, MAX_WRITE_ZEROES_BLOCKS << shift)
        deallocate = CDW12_DEAC if request[REQ_FLAGS] & IO_FLAG_MAY_UNMAP else 0
        command[SQ_CDW12] = ((nbytes >> shift) - 1) | deallocate | fua
    else:
        opcode = NVM_DATASET_MANAGEMENT
        nbytes = min(last, MAX_RANGE_BLOCKS << shift)
        # SAFETY: the tracker's own page of host memory, which holds a range.
        entry = carray(u64_pointer(page), (2,))
        entry[0] = np.uint64(nbytes >> shift) << np.uint64(DSM_BLOCKS_SHIFT)
        entry[DSM_SLBA_QWORD] = slba
        set_qword(command, SQ_CDW10, 0)
        set_qword(command, SQ_PRP1, page)
        command[SQ_CDW11] = CDW11_AD
    command[SQ_CDW0] |= np.uint32(opcode | cid << CDW0_CID_SHIFT)
    return nbytes


@njit(**NJIT)
def _release(state, slot):
    # The request's status (a negative errno or 0); its slot is free again.
    requests, free, _ = _requests(state)
    value = np.int64(requests[slot, REQ_STATUS] & np.uint64(0xFFFFFFFF))
    free[state[NV_FREE_REQUEST_TOP]] = slot
    state[NV_FREE_REQUEST_TOP] += 1
    return value - (np.int64(1) << 32) if value >= (np.int64(1) << 31) else value


@njit(**NJIT)
def _issue(channel, state):
    # Issue commands for the waiting requests, in order, while trackers and queue entries
    # last; ring the doorbell once.
    requests, _, order = _requests(state)
    count = np.int64(state[NV_TRACKER_COUNT])
    # SAFETY: the channel's tracker table, free stack, pages, command and pieces, and its
    # queue pair's row, made for it by the NvmeBdev and kept alive with it.
    trackers = carray(u64_pointer(state[NV_TRACKERS]), (count,))
    free = carray(u64_pointer(state[NV_FREE_TRACKERS]), (count,))
    command = carray(u32_pointer(state[NV_COMMAND]), (SQE_DWORDS,))
    pieces = carray(u64_pointer(state[NV_PIECES]), (MAX_SGL_DATA_DESCRIPTORS, 2))
    qpair = carray(u64_pointer(state[NV_QPAIR]), (QP_COLUMNS,))
    pushed = 0
    while state[NV_ORDER_HEAD] != state[NV_ORDER_TAIL]:
        slot = np.int64(order[state[NV_ORDER_HEAD] & state[NV_ORDER_MASK]])
        request = requests[slot]
        while request[REQ_ALL_ISSUED] == 0:
            if state[NV_FREE_TRACKER_TOP] == 0 or qpair_space(qpair) == 0:
                break
            cid = np.int64(free[state[NV_FREE_TRACKER_TOP] - 1])
            page = state[NV_PAGES] + np.uint64(cid * PAGE_SIZE)
            nbytes = _build(state, request, cid, page, command, pieces)
            if nbytes < 0:
                if request[REQ_STATUS] == 0:
                    request[REQ_STATUS] = np.uint64(-errno.EINVAL & 0xFFFFFFFF)
                request[REQ_ALL_ISSUED] = 1
                break
            state[NV_FREE_TRACKER_TOP] -= 1
            trackers[cid] = slot
            qpair_push(qpair, command)
            pushed += 1
            request[REQ_OUTSTANDING] += 1
            request[REQ_ISSUED] += nbytes
            if request[REQ_ISSUED] == request[REQ_LENGTH]:
                request[REQ_ALL_ISSUED] = 1
        if request[REQ_ALL_ISSUED] == 0:
            break
        state[NV_ORDER_HEAD] += 1
        if request[REQ_OUTSTANDING] == 0:
            # Refused before any command went out: it completes now.
            complete_now(channel, request[REQ_TAG], _release(state, slot))
    if pushed:
        qpair_ring(qpair)


@njit(**NJIT)
def _errno(status):
    # The executor's status for an NVMe status field (0: success); Do Not Retry and the
    # other flags above the code and its type do not matter here.
    code = status & _CODE_MASK
    if code == 0:
        return 0
    if code == STATUS_WRITE_PROTECTED & _CODE_MASK:
        return -errno.EROFS
    if code == STATUS_INVALID_OPCODE & _CODE_MASK:
        return -errno.EOPNOTSUPP
    if code == STATUS_CAPACITY_EXCEEDED & _CODE_MASK:
        return -errno.ENOSPC
    if (code >> SCT_SHIFT == SCT_MEDIA or code == STATUS_DATA_TRANSFER_ERROR & _CODE_MASK
            or code == STATUS_INTERNAL_ERROR & _CODE_MASK):
        # The media, the transfer or the device failed the I/O.
        return -errno.EIO
    # The rest say the command was malformed or out of range.
    return -errno.EINVAL


@njit(**NJIT)
def kick(channel):
    """Issue the commands of the requests started since the last round."""
    _issue(channel, _state(channel))


@njit(**NJIT)
def reap(channel, completions, first, max_n):
    """Consume the queue pair's completions: finish the requests whose commands are all
    done (into completions[first:], up to max_n), then issue what waited for them."""
    state = _state(channel)
    requests, _, _ = _requests(state)
    count = np.int64(state[NV_TRACKER_COUNT])
    # SAFETY: as in _issue.
    trackers = carray(u64_pointer(state[NV_TRACKERS]), (count,))
    free = carray(u64_pointer(state[NV_FREE_TRACKERS]), (count,))
    cqes = carray(u32_pointer(state[NV_CQES]), (CQE_BURST, CQE_DWORDS))
    qpair = carray(u64_pointer(state[NV_QPAIR]), (QP_COLUMNS,))
    n = qpair_reap(qpair, cqes, CQE_BURST)
    got = 0
    for k in range(n):
        cid = np.int64(cqes[k, CQ_DW3] & 0xFFFF)
        if cid >= count or trackers[cid] == _NO_TRACKER:
            state[NV_STRAY] += 1
            continue
        slot = np.int64(trackers[cid])
        trackers[cid] = _NO_TRACKER
        free[state[NV_FREE_TRACKER_TOP]] = cid
        state[NV_FREE_TRACKER_TOP] += 1
        request = requests[slot]
        status = _errno(np.int64(cqes[k, CQ_DW3] >> CQ_STATUS_SHIFT))
        if status != 0 and request[REQ_STATUS] == 0:
            request[REQ_STATUS] = np.uint64(status & 0xFFFFFFFF)
        request[REQ_OUTSTANDING] -= 1
        if request[REQ_OUTSTANDING] == 0 and request[REQ_ALL_ISSUED] != 0:
            tag = request[REQ_TAG]
            status = _release(state, slot)
            if got < max_n:
                completions[first + got].tag = tag
                completions[first + got].status = status
                got += 1
            else:
                # No room in this burst: the bdev layer's ring holds it for the next.
                complete_now(channel, tag, status)
    if n:
        _issue(channel, state)
    return got


class _ChannelState:
    """What one channel of an nvme bdev keeps: its queue pair and the arrays its state row
    names."""

    def __init__(self, bdev: NvmeBdev, depth: int):
        self.pair = bdev.driver.create_queue_pair(bdev.entries)
        trackers = bdev.entries - 1
        capacity = 1 << (depth - 1).bit_length()
        self.requests = np.zeros((capacity, REQ_COLUMNS), dtype=np.uint64)
        self.free_requests = np.arange(capacity, dtype=np.uint64)
        self.order = np.zeros(capacity, dtype=np.uint64)
        self.trackers = np.full(trackers, _NO_TRACKER, dtype=np.uint64)
        self.free_trackers = np.arange(trackers, dtype=np.uint64)
        self.pages = bdev.memory.alloc(trackers * PAGE_SIZE)
        self.command = np.zeros(SQE_DWORDS, dtype=np.uint32)
        self.pieces = np.zeros((MAX_SGL_DATA_DESCRIPTORS, 2), dtype=np.uint64)
        self.cqes = np.zeros((CQE_BURST, CQE_DWORDS), dtype=np.uint32)
        row = self.row = np.zeros(NV_COLUMNS, dtype=np.uint64)
        row[NV_QPAIR] = self.pair.row.ctypes.data
        row[NV_REQUESTS] = self.requests.ctypes.data
        row[NV_FREE_REQUESTS] = self.free_requests.ctypes.data
        row[NV_FREE_REQUEST_TOP] = capacity
        row[NV_ORDER] = self.order.ctypes.data
        row[NV_ORDER_MASK] = capacity - 1
        row[NV_TRACKERS] = self.trackers.ctypes.data
        row[NV_FREE_TRACKERS] = self.free_trackers.ctypes.data
        row[NV_FREE_TRACKER_TOP] = trackers
        row[NV_TRACKER_COUNT] = trackers
        row[NV_PAGES] = self.pages.ctypes.data
        row[NV_COMMAND] = self.command.ctypes.data
        row[NV_PIECES] = self.pieces.ctypes.data
        row[NV_CQES] = self.cqes.ctypes.data
        row[NV_BLOCK_SHIFT] = bdev.block_size.bit_length() - 1
        row[NV_MAX_TRANSFER] = bdev.driver.max_transfer


class NvmeBdev(Bdev):
    """A bdev on a modelled NVMe controller whose namespace is `backing` (which the nvme bdev
    owns and closes): each channel drives the controller through an I/O queue pair of
    `entries` entries (at most `io_queues` channels at once). The controller runs on `host`,
    or on a poll host of its own, on its own thread, that sleeps a millisecond at a time when
    idle."""

    kind = KIND

    def __init__(self, backing: Bdev, *, name: str = "nvme", io_queues: int = 4,
                 entries: int = 128, host: PollHost | None = None):
        if not 2 <= entries <= PAGE_SIZE:
            raise ValueError(f"a queue pair has 2 to {PAGE_SIZE} entries, not {entries}")
        super().__init__(name, backing.size, block_size=backing.block_size,
                         read_only=backing.read_only)
        self.backing = backing
        self.entries = entries
        self._backing_channel = backing.open_channel(_CONTROLLER_SLOTS)
        # Per queue pair: its queues and a page per tracker; and the admin queues, the
        # driver's Identify page.
        pages_per_pair = -(-entries * 80 // PAGE_SIZE) + 2 + entries
        self.memory = HostMemory((io_queues * pages_per_pair + 8) * PAGE_SIZE)
        self.controller = NvmeController(self._backing_channel, [self.memory],
                                         io_queues=io_queues, slots=_CONTROLLER_SLOTS,
                                         passthrough=True)
        self.poller = NvmePoller(self.controller)
        self._own_host = host is None
        self.host = host or PollHost(f"nvme-{name}", idle_rounds=_IDLE_ROUNDS, sleep_ms=1)
        self.host.add(self.poller)
        if self._own_host:
            self.host.start()
        self.driver = NvmeDriver(self.controller, self.memory)
        if (self.driver.block_size, self.driver.num_blocks) != (self.block_size,
                                                                self.num_blocks):
            raise AssertionError("the controller's namespace is not its backing")

    def _open_channel(self, channel: BdevChannel) -> None:
        channel.nvme = _ChannelState(self, channel.depth)
        channel.row[ARG_STATE] = channel.nvme.row.ctypes.data

    def _close_channel(self, channel: BdevChannel) -> None:
        state = channel.nvme
        self.driver.delete_queue_pair(state.pair)
        self.memory.free(state.pages)

    def close(self) -> None:
        """Close the channels, stop the controller and close the backing."""
        super().close()
        if self.poller.host is not None:
            if self._own_host:
                self.host.stop()
            self.host.remove(self.poller)
            self._backing_channel.close()
            self.backing.close()


# I/O commands the bdev's controller holds at once, and the depth of its backing channel.
_CONTROLLER_SLOTS = 256
# Rounds without work before the bdev's own host sleeps a millisecond.
_IDLE_ROUNDS = 4096


def _make(argument: str, *, name: str = "nvme", block_size: int | None = None,
          queues: int = 4, entries: int = 128, read_only: bool = False) -> NvmeBdev:
    # nvme:SPEC: the backing bdev from its own spec; block_size and read_only go to it.
    options = {"read_only": read_only} if read_only else {}
    if block_size is not None:
        options["block_size"] = block_size
    backing = open_bdev(argument, name=f"{name}-backing", **options)
    try:
        return NvmeBdev(backing, name=name, io_queues=queues, entries=entries)
    except BaseException:
        backing.close()
        raise


register_bdev_kind(BdevKind(
    code=KIND, name="nvme", argument="BDEV",
    options={"block_size": int, "queues": int, "entries": int},
    help="a modelled NVMe controller whose namespace is the bdev BDEV names (nvme:malloc:64M), "
         "a queue pair per channel",
    make=_make, start=start, kick=kick, reap=reap))
