"""`NvmePoller`: a modelled NVMe controller as a poller of the poll host.

Each round the host runs `controller_round` on the controller's tables and its backing bdev
channel (no Python between commands); when the admin queue has work, the round asks the host
for service and the admin commands run in Python between kernel calls, on the host's thread.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastpath._numba import NJIT, carray, u64_pointer, void_pointer
from fastpath.devices.blk import BLOCK_COMPLETION, BLOCK_IO
from fastpath.pmd import HOST_SERVICE, POLLER_ARGS, Poller, register_poller
from fastpath.spdk_like._bdev import CH_COLUMNS
from fastpath.spdk_like._nvme_controller import NvmeController
from fastpath.spdk_like._nvme_io import CTL_COLUMNS, CTL_SERVICE, controller_round

KIND = 19

ARG_CONTROLLER = POLLER_ARGS       # address of the controller's row (CTL_*)
ARG_PENDING = POLLER_ARGS + 1      # address of its BLOCK_IO ring of waiting requests
ARG_PENDING_COUNT = POLLER_ARGS + 2
ARG_COMPLETIONS = POLLER_ARGS + 3  # address of its BLOCK_COMPLETION burst
ARG_COMPLETION_COUNT = POLLER_ARGS + 4
ARG_CHANNEL = POLLER_ARGS + 5      # address of the backing channel's row


@njit(**NJIT)
def poll(row, host):
    """A round of the controller; asks for service when its admin queue has work."""
    # SAFETY: the controller's own arrays, of these shapes, and its backing channel's row,
    # which the NvmePoller keeps alive while it is on a host.
    ctl = carray(u64_pointer(row[ARG_CONTROLLER]), (CTL_COLUMNS,))
    pending = carray(void_pointer(row[ARG_PENDING]), (np.int64(row[ARG_PENDING_COUNT]),),
                     BLOCK_IO)
    completions = carray(void_pointer(row[ARG_COMPLETIONS]),
                         (np.int64(row[ARG_COMPLETION_COUNT]),), BLOCK_COMPLETION)
    channel = carray(u64_pointer(row[ARG_CHANNEL]), (CH_COLUMNS,))
    work = controller_round(ctl, pending, completions, channel)
    if ctl[CTL_SERVICE]:
        host[HOST_SERVICE] = 1
    return work


register_poller(KIND, "nvme-controller", poll)


class NvmePoller(Poller):
    """Runs `controller` on the poll host it is added to."""

    kind = KIND

    def __init__(self, controller: NvmeController):
        if controller.poller is not None:
            raise ValueError("the controller has a poller already")
        super().__init__()
        self.controller = controller
        controller.poller = self
        row = self.row
        row[ARG_CONTROLLER] = controller.ctl.ctypes.data
        row[ARG_PENDING] = controller.pending.ctypes.data
        row[ARG_PENDING_COUNT] = len(controller.pending)
        row[ARG_COMPLETIONS] = controller.completions.ctypes.data
        row[ARG_COMPLETION_COUNT] = len(controller.completions)
        row[ARG_CHANNEL] = controller.channel.row.ctypes.data

    def service(self) -> None:
        """The admin commands the last kernel call left to Python."""
        self.controller.service_admin()
