"""The virtio-blk device (virtio 1.2 §5.2) behind vhost-user, and the request executor it needs.

`VirtioBlk` is the device a `fastpath.vhost_user.Backend` serves: what it offers, its config
space over a `BlkDisk`, and its request queues (`BlkQueue`). A queue turns the requests on its
ring into `BLOCK_IO` records for an executor and the executor's `BLOCK_COMPLETION` records
back into status bytes and used buffers, in compiled code: `fastpath.devices.blk.kernels` has
the two functions a poller calls (`take_requests`, `complete_requests`). The executor (a bdev,
in `fastpath.spdk_like`) implements the contract of `BLOCK_IO`; the device knows nothing of it.
The wire layouts of §5.2 (request header, discard/write-zeroes range, config space, feature
bits, request types and status values) have their one home here.

`BlkFrontend` is the other side, a virtio-blk driver over `fastpath.vhost_user.Frontend`: each
request queue a `BlkDriverQueue` whose compiled `submit_requests` and `reap_completions` take
`DRIVER_REQUEST` records in and give `DRIVER_COMPLETION` records back, a burst per call.
"""

from fastpath.devices.blk import kernels
from fastpath.devices.blk._device import (
    BLK_FEATURES,
    BLK_PROTOCOL_FEATURES,
    MAX_QUEUES,
    VirtioBlk,
    blk_config,
)
from fastpath.devices.blk._driver import (
    DRIVER_COMPLETION,
    DRIVER_REQUEST,
    STATUS_NOT_WRITTEN,
    BlkConfig,
    BlkDriverQueue,
    reap_completions,
    submit_requests,
)
from fastpath.devices.blk._frontend import BlkFrontend, blk_driver_features
from fastpath.devices.blk._io import (
    BLOCK_COMPLETION,
    BLOCK_IO,
    IO_DISCARD,
    IO_FLAG_FUA,
    IO_FLAG_MAY_UNMAP,
    IO_FLUSH,
    IO_OPERATIONS,
    IO_READ,
    IO_WRITE,
    IO_WRITE_ZEROES,
    IOVEC,
    STATUS_INVALID,
    STATUS_IO_ERROR,
    STATUS_NO_SPACE,
    STATUS_OK,
    STATUS_READ_ONLY,
    STATUS_UNSUPPORTED,
)
from fastpath.devices.blk._layout import (
    CONFIG_DTYPE,
    CONFIG_SIZE,
    DISCARD_WRITE_ZEROES_DTYPE,
    DISCARD_WRITE_ZEROES_SIZE,
    OUTHDR_DTYPE,
    OUTHDR_SIZE,
    SECTOR_SIZE,
    VIRTIO_BLK_F_BLK_SIZE,
    VIRTIO_BLK_F_CONFIG_WCE,
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_GEOMETRY,
    VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_TOPOLOGY,
    VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
    WRITEBACK_OFFSET,
)
from fastpath.devices.blk._queue import BlkDisk, BlkQueue

__all__ = [
    "VirtioBlk",
    "BlkDisk",
    "BlkQueue",
    "blk_config",
    "kernels",
    "BLK_FEATURES",
    "BLK_PROTOCOL_FEATURES",
    "MAX_QUEUES",
    # The request executor's contract.
    "BLOCK_IO",
    "BLOCK_COMPLETION",
    "IOVEC",
    "IO_READ",
    "IO_WRITE",
    "IO_FLUSH",
    "IO_DISCARD",
    "IO_WRITE_ZEROES",
    "IO_FLAG_MAY_UNMAP",
    "IO_FLAG_FUA",
    "IO_OPERATIONS",
    "STATUS_OK",
    "STATUS_IO_ERROR",
    "STATUS_INVALID",
    "STATUS_READ_ONLY",
    "STATUS_UNSUPPORTED",
    "STATUS_NO_SPACE",
    # The wire (virtio 1.2 §5.2).
    "SECTOR_SIZE",
    "OUTHDR_DTYPE",
    "OUTHDR_SIZE",
    "DISCARD_WRITE_ZEROES_DTYPE",
    "DISCARD_WRITE_ZEROES_SIZE",
    "VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP",
    "VIRTIO_BLK_ID_BYTES",
    "CONFIG_DTYPE",
    "CONFIG_SIZE",
    "WRITEBACK_OFFSET",
    "VIRTIO_BLK_T_IN",
    "VIRTIO_BLK_T_OUT",
    "VIRTIO_BLK_T_FLUSH",
    "VIRTIO_BLK_T_GET_ID",
    "VIRTIO_BLK_T_DISCARD",
    "VIRTIO_BLK_T_WRITE_ZEROES",
    "VIRTIO_BLK_S_OK",
    "VIRTIO_BLK_S_IOERR",
    "VIRTIO_BLK_S_UNSUPP",
    "VIRTIO_BLK_F_SIZE_MAX",
    "VIRTIO_BLK_F_SEG_MAX",
    "VIRTIO_BLK_F_GEOMETRY",
    "VIRTIO_BLK_F_RO",
    "VIRTIO_BLK_F_BLK_SIZE",
    "VIRTIO_BLK_F_FLUSH",
    "VIRTIO_BLK_F_TOPOLOGY",
    "VIRTIO_BLK_F_CONFIG_WCE",
    "VIRTIO_BLK_F_MQ",
    "VIRTIO_BLK_F_DISCARD",
    "VIRTIO_BLK_F_WRITE_ZEROES",
    # The driver's side.
    "BlkFrontend",
    "BlkDriverQueue",
    "BlkConfig",
    "blk_driver_features",
    "submit_requests",
    "reap_completions",
    "DRIVER_REQUEST",
    "DRIVER_COMPLETION",
    "STATUS_NOT_WRITTEN",
]
