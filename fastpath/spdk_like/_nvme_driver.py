"""`NvmeDriver`: the host's side of a controller's admin queue, as SPDK's NVMe driver brings a
controller up: enable it with an admin queue pair, ask for queues (Number of Queues), read
its Identify data for the namespace's block size and capacity, and create and delete I/O
queue pairs. Admin commands are control plane: Python, one at a time.
"""

from __future__ import annotations

import time

import numpy as np

from fastpath.errors import NvmeCommandFailed
from fastpath.spdk_like._dma import HostMemory
from fastpath.spdk_like._nvme_controller import NvmeController
from fastpath.spdk_like._nvme_layout import (
    ADMIN_CREATE_IO_CQ,
    ADMIN_CREATE_IO_SQ,
    ADMIN_DELETE_IO_CQ,
    ADMIN_DELETE_IO_SQ,
    ADMIN_IDENTIFY,
    ADMIN_SET_FEATURES,
    CDW10_QSIZE_SHIFT,
    CDW11_CQID_SHIFT,
    CDW11_PC,
    CNS_CONTROLLER,
    CNS_NAMESPACE,
    FEATURE_NUMBER_OF_QUEUES,
    IDENTIFY_CONTROLLER,
    IDENTIFY_NAMESPACE,
    IDENTIFY_SIZE,
    LBAF_LBADS_SHIFT,
    PAGE_SHIFT,
    SQE,
    STATUS_NAMES,
)
from fastpath.spdk_like._nvme_qpair import NvmeQueuePair

# How long a wait for a controller on a poll host sleeps between looks, in seconds.
_WAIT = 0.0001


class NvmeDriver:
    """Drives `controller` from host memory `memory` (which the controller must reach): an
    admin queue pair of `admin_entries`, I/O queue pairs on demand.

    While it waits for an admin completion it polls the controller itself, unless a poll host
    runs it (then it waits). `timeout` bounds each wait, in seconds.
    """

    def __init__(self, controller: NvmeController, memory: HostMemory, *,
                 admin_entries: int = 32, timeout: float = 5.0):
        self.controller = controller
        self.memory = memory
        self.timeout = timeout
        self._cid = 0
        self._buffer = memory.alloc(IDENTIFY_SIZE)
        self.admin_queue = NvmeQueuePair(memory, 0, admin_entries, controller.doorbells)
        controller.enable(self.admin_queue.sq.ctypes.data, self.admin_queue.cq.ctypes.data,
                          admin_entries, admin_entries)
        self.queue_pairs: dict[int, NvmeQueuePair] = {}
        allocated = int(self.admin(ADMIN_SET_FEATURES, cdw10=FEATURE_NUMBER_OF_QUEUES,
                                   cdw11=0xFFFE_FFFE)["dw0"])
        # The queues allocated, 0's based: as many pairs as there are of the fewer kind.
        self.io_queues = min(allocated & 0xFFFF, allocated >> 16) + 1
        identify = self.identify_controller()
        namespace = self.identify_namespace()
        self.block_size = 1 << ((int(namespace["lbaf0"]) >> LBAF_LBADS_SHIFT) & 0xFF)
        self.num_blocks = int(namespace["nsze"])
        self.max_transfer = 1 << (PAGE_SHIFT + int(identify["mdts"]))

    def admin(self, opcode: int, *, nsid: int = 0, prp1: int = 0, cdw10: int = 0,
              cdw11: int = 0, check: bool = True) -> np.void:
        """Run one admin command and return its completion (a CQE); NvmeCommandFailed if
        its status is not success (unless `check` is false). TimeoutError if none comes."""
        command = np.zeros(1, dtype=SQE)
        command["opcode"] = opcode
        command["cid"] = cid = self._cid
        self._cid = (self._cid + 1) & 0xFFFF
        command["nsid"] = nsid
        command["prp1"] = prp1
        command["cdw10"] = cdw10
        command["cdw11"] = cdw11
        deadline = time.monotonic() + self.timeout
        while self.admin_queue.submit(command) == 0:
            self._wait(deadline, opcode)
        while True:
            for completion in self.admin_queue.reap():
                if completion["cid"] == cid:
                    status = int(completion["status"]) >> 1
                    if status and check:
                        raise NvmeCommandFailed(
                            f"admin command {opcode:#04x}: "
                            f"{STATUS_NAMES.get(status, hex(status))}", status)
                    return completion
            self._wait(deadline, opcode)

    def identify_controller(self) -> np.void:
        """The controller's Identify Controller data."""
        self.admin(ADMIN_IDENTIFY, prp1=self._buffer.ctypes.data, cdw10=CNS_CONTROLLER)
        return self._buffer.view(IDENTIFY_CONTROLLER)[0].copy()

    def identify_namespace(self, nsid: int = 1) -> np.void:
        """Namespace `nsid`'s Identify Namespace data (NVM command set)."""
        self.admin(ADMIN_IDENTIFY, nsid=nsid, prp1=self._buffer.ctypes.data,
                   cdw10=CNS_NAMESPACE)
        return self._buffer.view(IDENTIFY_NAMESPACE)[0].copy()

    def create_queue_pair(self, entries: int = 256) -> NvmeQueuePair:
        """A new I/O queue pair of `entries` entries (the lowest free queue id): the
        completion queue made first, then the submission queue on it."""
        free = [q for q in range(1, self.io_queues + 1) if q not in self.queue_pairs]
        if not free:
            raise ValueError(f"all {self.io_queues} I/O queue pairs are in use")
        qid = free[0]
        pair = NvmeQueuePair(self.memory, qid, entries, self.controller.doorbells)
        size = (entries - 1) << CDW10_QSIZE_SHIFT
        try:
            self.admin(ADMIN_CREATE_IO_CQ, prp1=pair.cq.ctypes.data, cdw10=qid | size,
                       cdw11=CDW11_PC)
            try:
                self.admin(ADMIN_CREATE_IO_SQ, prp1=pair.sq.ctypes.data, cdw10=qid | size,
                           cdw11=qid << CDW11_CQID_SHIFT | CDW11_PC)
            except NvmeCommandFailed:
                self.admin(ADMIN_DELETE_IO_CQ, cdw10=qid)
                raise
        except NvmeCommandFailed:
            pair.release()
            raise
        self.queue_pairs[qid] = pair
        return pair

    def delete_queue_pair(self, pair: NvmeQueuePair) -> None:
        """Delete `pair`'s queues (the submission queue's commands complete first) and free
        their memory; completions not yet reaped are lost."""
        self.admin(ADMIN_DELETE_IO_SQ, cdw10=pair.qid)
        self.admin(ADMIN_DELETE_IO_CQ, cdw10=pair.qid)
        del self.queue_pairs[pair.qid]
        pair.release()

    def _wait(self, deadline: float, opcode: int) -> None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"admin command {opcode:#04x}: no completion after "
                               f"{self.timeout} s")
        if self.controller.on_host:
            time.sleep(_WAIT)
        else:
            self.controller.poll()
