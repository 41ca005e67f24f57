"""The virtio-blk device (virtio 1.2 §5.2) behind vhost-user (to come), and the request
executor it needs (`BLOCK_IO` in, `BLOCK_COMPLETION` out), which bdevs implement."""

from fastpath.devices.blk._io import (
    BLOCK_COMPLETION,
    BLOCK_IO,
    IO_DISCARD,
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

__all__ = [
    "BLOCK_IO",
    "BLOCK_COMPLETION",
    "IOVEC",
    "IO_READ",
    "IO_WRITE",
    "IO_FLUSH",
    "IO_DISCARD",
    "IO_WRITE_ZEROES",
    "IO_FLAG_MAY_UNMAP",
    "IO_OPERATIONS",
    "STATUS_OK",
    "STATUS_IO_ERROR",
    "STATUS_INVALID",
    "STATUS_READ_ONLY",
    "STATUS_UNSUPPORTED",
    "STATUS_NO_SPACE",
]
