"""SPDK-style block I/O: bdevs behind one asynchronous API, an IoJob that benchmarks them,
reactors on the poll host, NVMe-like queue pairs and the vhost-user-blk target.

`open_bdev("malloc:64M")` makes a bdev from a spec; `bdev.open_channel(depth)` gives a thread
its channel, whose `submit` and `poll` (or, in compiled code, `bdev_submit` and `bdev_poll` on
`channel.row`) move `fastpath.devices.blk.BLOCK_IO` requests and `BLOCK_COMPLETION`s in bursts.
A bdev kind registers itself with `register_bdev_kind`.

NVMe: `NvmeController` models a controller over a bdev channel (its I/O queues served by a
compiled round, on a poll host with `NvmePoller`); `NvmeDriver` brings one up from
`HostMemory` and creates `NvmeQueuePair`s; `open_bdev("nvme:malloc:64M")` (`NvmeBdev`) drives
a controller through a queue pair per channel.

vhost-user-blk: `BlkTarget` serves virtio-blk devices' queues over a bdev on a reactor
(`fastpath vhost-blk`); `open_bdev("vhost:SOCKET")` (`VhostBdev`) is the other side, a bdev
whose disk is a vhost-user-blk back-end, driven through `fastpath.devices.blk.BlkFrontend`.
"""

from fastpath.spdk_like import (  # noqa: F401  (the built-in kinds register)
    _file,
    _malloc,
    _null,
    _nvme_bdev,
)
from fastpath.spdk_like._bdev import (
    BDEV_KINDS,
    CH_ARGS,
    CH_COLUMNS,
    Bdev,
    BdevChannel,
    BdevKind,
    BdevStatistics,
    bdev_poll,
    bdev_submit,
    complete_now,
    open_bdev,
    parse_size,
    register_bdev_kind,
)
from fastpath.spdk_like._blk_target import BlkTarget
from fastpath.spdk_like._dma import HostMemory
from fastpath.spdk_like._file import FileBdev
from fastpath.spdk_like._job import WORKLOADS, IoJob
from fastpath.spdk_like._malloc import MallocBdev
from fastpath.spdk_like._null import NullBdev
from fastpath.spdk_like._nvme_bdev import NvmeBdev
from fastpath.spdk_like._nvme_controller import ControllerStatistics, NvmeController
from fastpath.spdk_like._nvme_driver import NvmeDriver
from fastpath.spdk_like._nvme_poller import NvmePoller
from fastpath.spdk_like._nvme_qpair import NvmeQueuePair
from fastpath.spdk_like._reactor import (
    MESSAGE_ADD,
    MESSAGE_STORE,
    MessagePoller,
    Reactor,
    Reactors,
    register_message,
)
from fastpath.spdk_like._vhost_bdev import VhostBdev

__all__ = [
    "Bdev",
    "BdevChannel",
    "BdevKind",
    "BdevStatistics",
    "BlkTarget",
    "BDEV_KINDS",
    "CH_ARGS",
    "CH_COLUMNS",
    "FileBdev",
    "IoJob",
    "MallocBdev",
    "MESSAGE_ADD",
    "MESSAGE_STORE",
    "MessagePoller",
    "Reactor",
    "Reactors",
    "register_message",
    "VhostBdev",
    "NullBdev",
    # NVMe: the modelled controller, the host's side of it, and the bdev driving one.
    "NvmeController",
    "ControllerStatistics",
    "NvmePoller",
    "NvmeDriver",
    "NvmeQueuePair",
    "HostMemory",
    "NvmeBdev",
    "bdev_poll",
    "bdev_submit",
    "complete_now",
    "open_bdev",
    "parse_size",
    "register_bdev_kind",
    "WORKLOADS",
]
