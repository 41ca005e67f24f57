"""`NvmeController`: a modelled NVMe controller with one namespace, over a bdev channel.

The controller serves its I/O queues in compiled code (`_nvme_io.controller_round`, no
Python per command) and its admin queue in Python, as a control plane: Identify (controller
and namespace data: a host reads the block size and capacity there), Create and Delete I/O
Completion and Submission Queues, and the Number of Queues feature. Other admin opcodes get
Invalid Command Opcode. Enabling it (`enable`) stands for the host writing AQA, ASQ and ACQ
and setting CC.EN (Base §3.5.1); memory pages are 4 KiB (CC.MPS = 0), and queues must be
physically contiguous (CAP.CQR = 1).

What the model leaves out: interrupts (hosts poll), metadata and protection information,
fused operations, namespaces other than 1, arbitration other than round robin, controller
reset, and admin commands beyond those above.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from fastpath.devices.blk import BLOCK_COMPLETION, BLOCK_IO
from fastpath.spdk_like._bdev import BdevChannel
from fastpath.spdk_like._dma import REGION_COLUMNS, HostMemory, dma_inside, dma_map
from fastpath.spdk_like._nvme_dptr import prp_to_iovecs
from fastpath.spdk_like._nvme_io import (
    COM_BASE,
    COM_COLUMNS,
    COM_ENTRIES,
    COM_HEAD,
    COM_OWED,
    COM_PHASE,
    COM_STATE,
    COM_TAIL,
    CTL_ADMIN_WAITING,
    CTL_BAD_DOORBELLS,
    CTL_BLOCK_SHIFT,
    CTL_BLOCKS,
    CTL_BURST,
    CTL_COLUMNS,
    CTL_CQS,
    CTL_DOORBELLS,
    CTL_FAILED,
    CTL_FETCHED,
    CTL_FREE,
    CTL_FREE_TOP,
    CTL_IOVECS,
    CTL_LOST,
    CTL_MAX_TRANSFER,
    CTL_POSTED,
    CTL_QUEUES,
    CTL_REGION_COUNT,
    CTL_REGIONS,
    CTL_SCRATCH,
    CTL_SERVICE,
    CTL_SLOT_COUNT,
    CTL_SLOTS,
    CTL_SQS,
    CTL_STRAY,
    MAX_IOVECS,
    MAX_TRANSFER_PAGES,
    QUEUE_ABSENT,
    QUEUE_DELETING,
    QUEUE_LIVE,
    QUEUE_STOPPED,
    SLOT_COLUMNS,
    SUB_BASE,
    SUB_COLUMNS,
    SUB_CQID,
    SUB_ENTRIES,
    SUB_HEAD,
    SUB_IN_FLIGHT,
    SUB_STATE,
    controller_round,
    post_completion,
)
from fastpath.spdk_like._nvme_layout import (
    ADMIN_CREATE_IO_CQ,
    ADMIN_CREATE_IO_SQ,
    ADMIN_DELETE_IO_CQ,
    ADMIN_DELETE_IO_SQ,
    ADMIN_GET_FEATURES,
    ADMIN_IDENTIFY,
    ADMIN_SET_FEATURES,
    CDW0_FUSE_MASK,
    CDW0_FUSE_SHIFT,
    CDW0_PSDT_MASK,
    CDW0_PSDT_SHIFT,
    CDW10_FID_MASK,
    CDW10_QID_MASK,
    CDW10_QSIZE_SHIFT,
    CDW11_CQID_SHIFT,
    CDW11_PC,
    CNS_CONTROLLER,
    CNS_NAMESPACE,
    CNTRLTYPE_IO,
    CQE,
    DSM_MAX_RANGES,
    DSM_RANGE,
    FEATURE_NUMBER_OF_QUEUES,
    IDENTIFY_CONTROLLER,
    IDENTIFY_NAMESPACE,
    IDENTIFY_SIZE,
    LBAF_LBADS_SHIFT,
    ONCS_DATASET_MANAGEMENT,
    ONCS_WRITE_ZEROES,
    PAGE_SHIFT,
    PAGE_SIZE,
    SGLS_SUPPORTED,
    SQE,
    STATUS_INVALID_CQ,
    STATUS_INVALID_FIELD,
    STATUS_INVALID_NAMESPACE,
    STATUS_INVALID_OPCODE,
    STATUS_INVALID_QUEUE_DELETION,
    STATUS_INVALID_QUEUE_ID,
    STATUS_INVALID_QUEUE_SIZE,
    STATUS_PRP_OFFSET_INVALID,
    STATUS_SUCCESS,
    VERSION_2_0,
    VWC_PRESENT,
    cq_head_doorbell,
    sq_tail_doorbell,
)

# The largest queue the controller creates (CAP.MQES + 1).
MAX_QUEUE_ENTRIES = 4096
# Completions of the backing reaped per round, at most.
_REAP_BURST = 64
# The end of x86-64's lower canonical half: where user space ends.
_USER_SPACE_END = 1 << 47


@dataclass
class ControllerStatistics:
    """What a controller did: I/O commands fetched, completions posted (admin ones too) and
    of those failed, doorbell writes that stopped a queue, completions of the backing that
    named no command, and completions dropped because their queue had stopped."""

    fetched: int
    posted: int
    failed: int
    bad_doorbells: int
    stray: int
    lost: int


def _ascii(text: str, size: int) -> bytes:
    # Identify's strings: ASCII, left-justified, padded with spaces (Base §5.17.2.1).
    return text.encode("ascii")[:size].ljust(size, b" ")


class NvmeController:
    """A controller with `io_queues` I/O queue pairs (ids 1 to io_queues) of up to
    MAX_QUEUE_ENTRIES entries, namespace 1 the blocks of the bdev `channel` is a channel of,
    reaching host memory only in `memories` (and, with `passthrough`, anywhere in the
    process's user address space: an IOMMU in passthrough, for a host whose buffers are
    vouched for). `slots` bounds the I/O commands in flight; `burst` the commands fetched from
    one queue per round.

    Call `poll` for a round, or run it on a poll host (`NvmePoller`); a host driver enables it
    and creates its queues through the admin queue (`NvmeDriver`).
    """

    def __init__(self, channel: BdevChannel, memories: list[HostMemory], *, io_queues: int = 4,
                 slots: int = 256, burst: int = 32, passthrough: bool = False,
                 serial: str = "FASTPATH0001", model: str = "fastpath modelled NVMe controller"):
        block_size = channel.bdev.block_size
        if block_size > PAGE_SIZE:
            raise ValueError(f"a block is at most a memory page ({PAGE_SIZE} bytes), not "
                             f"{block_size}")
        if not 1 <= io_queues <= 1024 or not 1 <= slots <= 65536 or not 1 <= burst <= 4096:
            raise ValueError("io_queues is 1 to 1024, slots 1 to 65536, burst 1 to 4096")
        self.channel = channel
        self.memories = list(memories)
        self.block_size = block_size
        self.blocks = channel.bdev.num_blocks
        queues = io_queues + 1
        self.sqs = np.zeros((queues, SUB_COLUMNS), dtype=np.uint64)
        self.cqs = np.zeros((queues, COM_COLUMNS), dtype=np.uint64)
        self.doorbells = np.zeros(2 * queues, dtype=np.uint32)
        self.regions = dma_map(self.memories)
        if passthrough:
            user_space = np.array([[PAGE_SIZE, _USER_SPACE_END]], dtype=np.uint64)
            self.regions = np.concatenate([self.regions, user_space]).reshape(-1, REGION_COLUMNS)
        self.slots = np.zeros((slots, SLOT_COLUMNS), dtype=np.uint64)
        self.free = np.arange(slots, dtype=np.uint64)
        self.iovecs = np.zeros((slots * MAX_IOVECS, 2), dtype=np.uint64)
        self.scratch = np.zeros((DSM_MAX_RANGES, DSM_RANGE.itemsize // 8), dtype=np.uint64)
        # Room for every slot's request and one Dataset Management's worth more: a command is
        # fetched only while DSM_MAX_RANGES requests fit.
        self.pending = np.zeros(1 << (slots + DSM_MAX_RANGES - 1).bit_length(), dtype=BLOCK_IO)
        self.completions = np.zeros(_REAP_BURST, dtype=BLOCK_COMPLETION)
        ctl = self.ctl = np.zeros(CTL_COLUMNS, dtype=np.uint64)
        ctl[CTL_SQS] = self.sqs.ctypes.data
        ctl[CTL_CQS] = self.cqs.ctypes.data
        ctl[CTL_QUEUES] = queues
        ctl[CTL_DOORBELLS] = self.doorbells.ctypes.data
        ctl[CTL_REGIONS] = self.regions.ctypes.data
        ctl[CTL_REGION_COUNT] = len(self.regions)
        ctl[CTL_SLOTS] = self.slots.ctypes.data
        ctl[CTL_SLOT_COUNT] = slots
        ctl[CTL_FREE] = self.free.ctypes.data
        ctl[CTL_FREE_TOP] = slots
        ctl[CTL_IOVECS] = self.iovecs.ctypes.data
        ctl[CTL_SCRATCH] = self.scratch.ctypes.data
        ctl[CTL_BLOCK_SHIFT] = block_size.bit_length() - 1
        ctl[CTL_BLOCKS] = self.blocks
        ctl[CTL_MAX_TRANSFER] = MAX_TRANSFER_PAGES * PAGE_SIZE
        ctl[CTL_BURST] = burst
        self.identify_controller = self._identify_controller(slots, serial, model)
        self.identify_namespace = self._identify_namespace()
        self._admin_sq: np.ndarray | None = None
        # The NvmePoller that runs the controller on a poll host, once one does.
        self.poller = None
        # Delete I/O Submission Queue commands waiting for the queue's commands: (qid, cid).
        self._deleting: list[tuple[int, int]] = []

    @property
    def io_queues(self) -> int:
        """I/O queue ids the controller has (1 to io_queues)."""
        return len(self.sqs) - 1

    @property
    def enabled(self) -> bool:
        """Whether `enable` gave the controller its admin queues."""
        return self._admin_sq is not None

    def enable(self, admin_sq: int, admin_cq: int, sq_entries: int, cq_entries: int) -> None:
        """Take the admin queues at host addresses admin_sq and admin_cq (AQA, ASQ, ACQ) and
        start serving them (CC.EN = 1). ValueError for queues the controller cannot use."""
        if self.enabled:
            raise ValueError("the controller is enabled already")
        for name, address, entries, entry in (("submission", admin_sq, sq_entries, SQE),
                                              ("completion", admin_cq, cq_entries, CQE)):
            if not 2 <= entries <= MAX_QUEUE_ENTRIES:
                raise ValueError(f"the admin {name} queue has 2 to {MAX_QUEUE_ENTRIES} entries, "
                                 f"not {entries}")
            if address % PAGE_SIZE or not dma_inside(self.regions, address,
                                                     entries * entry.itemsize):
                raise ValueError(f"the admin {name} queue at {address:#x} is not page aligned "
                                 f"in the controller's host memory")
        self._create_cq(0, admin_cq, cq_entries)
        self._create_sq(0, admin_sq, sq_entries, 0)
        buffer = (ctypes.c_uint8 * (sq_entries * SQE.itemsize)).from_address(admin_sq)
        self._admin_sq = np.frombuffer(buffer, dtype=SQE)

    @property
    def on_host(self) -> bool:
        """Whether a poll host runs the controller (then only its thread may)."""
        return self.poller is not None and self.poller.host is not None

    def poll(self) -> int:
        """One round: the I/O queues in compiled code, then the admin queue if it has work;
        returns the I/O work done (commands fetched, requests completed). For a controller
        no poll host runs."""
        if self.on_host:
            raise RuntimeError(f"{self.poller.host!r} runs the controller")
        work = controller_round(self.ctl, self.pending, self.completions, self.channel.row)
        self.service_admin()
        return int(work)

    def service_admin(self) -> None:
        """If the last round asked for it, serve the admin queue: finish deletions whose
        queue has drained, then every command published, while the admin completion queue
        has room."""
        if not self.ctl[CTL_SERVICE] or not self.enabled:
            return
        self.ctl[CTL_SERVICE] = 0
        for qid, cid in list(self._deleting):
            if self.sqs[qid, SUB_IN_FLIGHT] == 0:
                self._deleting.remove((qid, cid))
                self.sqs[qid] = 0
                self.cqs[0, COM_OWED] -= 1
                self._complete_admin(cid, STATUS_SUCCESS)
        self.ctl[CTL_ADMIN_WAITING] = len(self._deleting)
        sq, cq = self.sqs[0], self.cqs[0]
        entries = int(sq[SUB_ENTRIES])
        tail = int(self.doorbells[sq_tail_doorbell(0)])
        if sq[SUB_STATE] != QUEUE_LIVE:
            return
        if tail >= entries:
            sq[SUB_STATE] = QUEUE_STOPPED
            self.ctl[CTL_BAD_DOORBELLS] += 1
            return
        while int(sq[SUB_HEAD]) != tail and cq[COM_STATE] == QUEUE_LIVE:
            used = (int(cq[COM_TAIL]) - int(cq[COM_HEAD])) % int(cq[COM_ENTRIES])
            if used + int(cq[COM_OWED]) >= int(cq[COM_ENTRIES]) - 1:
                break
            command = self._admin_sq[int(sq[SUB_HEAD])].copy()
            sq[SUB_HEAD] = (int(sq[SUB_HEAD]) + 1) % entries
            outcome = self._admin_command(command)
            if outcome is not None:
                self._complete_admin(int(command["cid"]), *outcome)
        self.ctl[CTL_ADMIN_WAITING] = len(self._deleting)

    @property
    def statistics(self) -> ControllerStatistics:
        """Counts of what the controller did so far."""
        ctl = self.ctl
        return ControllerStatistics(int(ctl[CTL_FETCHED]), int(ctl[CTL_POSTED]),
                                    int(ctl[CTL_FAILED]), int(ctl[CTL_BAD_DOORBELLS]),
                                    int(ctl[CTL_STRAY]), int(ctl[CTL_LOST]))

    def queue_stopped(self, qid: int) -> bool:
        """Whether an invalid doorbell write stopped submission queue `qid` or its
        completion queue."""
        cqid = int(self.sqs[qid, SUB_CQID])
        return QUEUE_STOPPED in (self.sqs[qid, SUB_STATE], self.cqs[cqid, COM_STATE])

    # --- admin commands ---

    def _complete_admin(self, cid: int, status: int, dw0: int = 0) -> None:
        if self.cqs[0, COM_STATE] == QUEUE_LIVE:
            post_completion(self.ctl, 0, 0, cid, status, dw0)

    def _admin_command(self, command: np.void) -> tuple[int, int] | None:
        # The (status, dword 0) of one admin command, or None for one that completes later.
        cdw0 = int(command["opcode"]) | int(command["flags"]) << 8
        if (cdw0 >> CDW0_FUSE_SHIFT) & CDW0_FUSE_MASK or (
                cdw0 >> CDW0_PSDT_SHIFT) & CDW0_PSDT_MASK:
            # Admin commands take PRPs only over PCIe (Base §3.3.3.1), and none is fused.
            return STATUS_INVALID_FIELD, 0
        opcode = int(command["opcode"])
        handlers = {
            ADMIN_IDENTIFY: self._identify,
            ADMIN_CREATE_IO_CQ: self._create_io_cq,
            ADMIN_CREATE_IO_SQ: self._create_io_sq,
            ADMIN_DELETE_IO_SQ: self._delete_io_sq,
            ADMIN_DELETE_IO_CQ: self._delete_io_cq,
            ADMIN_SET_FEATURES: self._features,
            ADMIN_GET_FEATURES: self._features,
        }
        handler = handlers.get(opcode)
        if handler is None:
            return STATUS_INVALID_OPCODE, 0
        return handler(command)

    def _identify(self, command: np.void) -> tuple[int, int]:
        cns = int(command["cdw10"]) & 0xFF
        if cns == CNS_CONTROLLER:
            data = self.identify_controller
        elif cns == CNS_NAMESPACE:
            if int(command["nsid"]) != 1:
                return STATUS_INVALID_NAMESPACE, 0
            data = self.identify_namespace
        else:
            return STATUS_INVALID_FIELD, 0
        iov = np.zeros((2, 2), dtype=np.uint64)
        count = prp_to_iovecs(self.regions, command["prp1"], command["prp2"], IDENTIFY_SIZE,
                              iov, len(iov))
        if count < 0:
            return -count, 0
        source = data.tobytes()
        done = 0
        for address, length in iov[:count].tolist():
            ctypes.memmove(address, source[done:done + length], length)
            done += length
        return STATUS_SUCCESS, 0

    def _queue_arguments(self, command: np.void) -> tuple[int, int] | int:
        # (qid, entries) of a Create command, or the status refusing them.
        cdw10 = int(command["cdw10"])
        qid = cdw10 & CDW10_QID_MASK
        entries = (cdw10 >> CDW10_QSIZE_SHIFT) + 1
        if not 1 <= qid <= self.io_queues:
            return STATUS_INVALID_QUEUE_ID
        if not 2 <= entries <= MAX_QUEUE_ENTRIES:
            return STATUS_INVALID_QUEUE_SIZE
        if not int(command["cdw11"]) & CDW11_PC:
            return STATUS_INVALID_FIELD
        if int(command["prp1"]) % PAGE_SIZE:
            return STATUS_PRP_OFFSET_INVALID
        return qid, entries

    def _create_io_cq(self, command: np.void) -> tuple[int, int]:
        arguments = self._queue_arguments(command)
        if isinstance(arguments, int):
            return arguments, 0
        qid, entries = arguments
        if self.cqs[qid, COM_STATE] != QUEUE_ABSENT:
            return STATUS_INVALID_QUEUE_ID, 0
        if not dma_inside(self.regions, int(command["prp1"]), entries * CQE.itemsize):
            return STATUS_INVALID_FIELD, 0
        self._create_cq(qid, int(command["prp1"]), entries)
        return STATUS_SUCCESS, 0

    def _create_io_sq(self, command: np.void) -> tuple[int, int]:
        arguments = self._queue_arguments(command)
        if isinstance(arguments, int):
            return arguments, 0
        qid, entries = arguments
        if self.sqs[qid, SUB_STATE] != QUEUE_ABSENT:
            return STATUS_INVALID_QUEUE_ID, 0
        cqid = int(command["cdw11"]) >> CDW11_CQID_SHIFT
        if not 1 <= cqid <= self.io_queues or self.cqs[cqid, COM_STATE] == QUEUE_ABSENT:
            return STATUS_INVALID_CQ, 0
        if not dma_inside(self.regions, int(command["prp1"]), entries * SQE.itemsize):
            return STATUS_INVALID_FIELD, 0
        self._create_sq(qid, int(command["prp1"]), entries, cqid)
        return STATUS_SUCCESS, 0

    def _delete_io_sq(self, command: np.void) -> tuple[int, int] | None:
        qid = int(command["cdw10"]) & CDW10_QID_MASK
        if not 1 <= qid <= self.io_queues or self.sqs[qid, SUB_STATE] in (QUEUE_ABSENT,
                                                                          QUEUE_DELETING):
            return STATUS_INVALID_QUEUE_ID, 0
        if self.sqs[qid, SUB_IN_FLIGHT] == 0:
            self.sqs[qid] = 0
            return STATUS_SUCCESS, 0
        # Its commands in flight complete first (the backing executor cannot take them back);
        # the deletion's completion follows them.
        self.sqs[qid, SUB_STATE] = QUEUE_DELETING
        self.cqs[0, COM_OWED] += 1
        self._deleting.append((qid, int(command["cid"])))
        return None

    def _delete_io_cq(self, command: np.void) -> tuple[int, int]:
        qid = int(command["cdw10"]) & CDW10_QID_MASK
        if not 1 <= qid <= self.io_queues or self.cqs[qid, COM_STATE] == QUEUE_ABSENT:
            return STATUS_INVALID_QUEUE_ID, 0
        users = (self.sqs[1:, SUB_STATE] != QUEUE_ABSENT) & (self.sqs[1:, SUB_CQID] == qid)
        if users.any():
            return STATUS_INVALID_QUEUE_DELETION, 0
        self.cqs[qid] = 0
        return STATUS_SUCCESS, 0

    def _features(self, command: np.void) -> tuple[int, int]:
        if int(command["cdw10"]) & CDW10_FID_MASK != FEATURE_NUMBER_OF_QUEUES:
            return STATUS_INVALID_FIELD, 0
        # Whatever was asked for, the controller has io_queues of each (0's based).
        allocated = self.io_queues - 1
        return STATUS_SUCCESS, allocated | allocated << 16

    def _create_cq(self, qid: int, base: int, entries: int) -> None:
        self.cqs[qid] = 0
        self.cqs[qid, COM_BASE] = base
        self.cqs[qid, COM_ENTRIES] = entries
        # The host zeroed the queue: the first lap's entries carry phase tag 1.
        self.cqs[qid, COM_PHASE] = 1
        self.cqs[qid, COM_STATE] = QUEUE_LIVE
        self.doorbells[cq_head_doorbell(qid)] = 0

    def _create_sq(self, qid: int, base: int, entries: int, cqid: int) -> None:
        self.sqs[qid] = 0
        self.sqs[qid, SUB_BASE] = base
        self.sqs[qid, SUB_ENTRIES] = entries
        self.sqs[qid, SUB_CQID] = cqid
        self.sqs[qid, SUB_STATE] = QUEUE_LIVE
        self.doorbells[sq_tail_doorbell(qid)] = 0

    def _identify_controller(self, slots: int, serial: str, model: str) -> np.ndarray:
        data = np.zeros(1, dtype=IDENTIFY_CONTROLLER)
        data["sn"] = _ascii(serial, 20)
        data["mn"] = _ascii(model, 40)
        data["fr"] = _ascii("1.0", 8)
        # MDTS: a power of two of the minimum memory page size.
        data["mdts"] = MAX_TRANSFER_PAGES.bit_length() - 1
        data["ver"] = VERSION_2_0
        data["cntrltype"] = CNTRLTYPE_IO
        # SQES and CQES: required and largest entry sizes, powers of two (64 and 16 bytes).
        data["sqes"] = 6 << 4 | 6
        data["cqes"] = 4 << 4 | 4
        data["maxcmd"] = min(slots, 0xFFFF)
        data["nn"] = 1
        data["oncs"] = ONCS_DATASET_MANAGEMENT | ONCS_WRITE_ZEROES
        data["vwc"] = VWC_PRESENT
        data["sgls"] = SGLS_SUPPORTED
        assert 1 << (PAGE_SHIFT + int(data["mdts"][0])) == MAX_TRANSFER_PAGES * PAGE_SIZE
        return data

    def _identify_namespace(self) -> np.ndarray:
        data = np.zeros(1, dtype=IDENTIFY_NAMESPACE)
        data["nsze"] = data["ncap"] = data["nuse"] = self.blocks
        data["lbaf0"] = (self.block_size.bit_length() - 1) << LBAF_LBADS_SHIFT
        return data
