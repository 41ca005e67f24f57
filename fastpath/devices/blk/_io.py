"""The request executor the block device needs, and that bdevs implement.

The virtio-blk device turns a request popped from a virtqueue into one `BLOCK_IO` record; an
executor (a bdev channel, in `fastpath.spdk_like`) takes records in bursts, carries them out
asynchronously and reports each as one `BLOCK_COMPLETION`, reaped by polling. Both sides are
compiled: a poller hands the device's records to the executor and the executor's completions
back to the device, a burst at a time, with no Python per request. The device defines the
contract (this module) so that it imports nothing from the layer that implements it.

Contract:
- `offset` and `length` are in bytes and multiples of the executor's block size; `length` of a
  READ or WRITE equals the sum of its iovecs' lengths.
- `iov` is the address of `iovcnt` `IOVEC` entries (Linux's struct iovec), host addresses of
  the data; the submitter keeps them, and the data, valid until the request completes. FLUSH,
  DISCARD and WRITE_ZEROES carry no iovecs.
- A WRITE or WRITE_ZEROES with `IO_FLAG_FUA` completes only once its data is stable, as if
  a FLUSH had followed it (the device's cache is in writethrough mode).
- Every request accepted completes exactly once, with its `tag` (the submitter's own cookie)
  and a status: 0, or a negative errno (`EIO`, `EINVAL` for a range or alignment the executor
  refuses, `EROFS`, `EOPNOTSUPP`, `ENOSPC`).
- Submission takes the records it can (a full executor takes fewer, never blocks) and says how
  many; the rest stay with the submitter to offer again.
"""

import errno

import numpy as np

# Operations (the values are the executor's own, not virtio-blk's request types).
IO_READ = 1
IO_WRITE = 2
IO_FLUSH = 3
IO_DISCARD = 4        # unmap: the range need not read back as anything in particular
IO_WRITE_ZEROES = 5   # the range reads back as zeros

IO_OPERATIONS = {
    IO_READ: "read",
    IO_WRITE: "write",
    IO_FLUSH: "flush",
    IO_DISCARD: "discard",
    IO_WRITE_ZEROES: "write_zeroes",
}

# Linux's struct iovec on x86-64.
IOVEC = np.dtype([("base", "<u8"), ("length", "<u8")])
assert IOVEC.itemsize == 16

BLOCK_IO = np.dtype([
    ("tag", "<u8"),       # the submitter's cookie, returned in the completion
    ("offset", "<u8"),    # bytes from the start of the device
    ("length", "<u8"),    # bytes
    ("iov", "<u8"),       # address of the IOVEC array (READ, WRITE)
    ("iovcnt", "<u4"),
    ("operation", "u1"),  # IO_*
    ("flags", "u1"),      # IO_FLAG_*
    ("reserved", "<u2"),
])
assert BLOCK_IO.itemsize == 40

# WRITE_ZEROES: the range may be deallocated (virtio-blk's unmap flag on WRITE_ZEROES).
IO_FLAG_MAY_UNMAP = 1
# WRITE, WRITE_ZEROES: complete only once the data is stable (on persistent storage, as after
# a FLUSH): the device's cache is in writethrough mode (virtio-blk's writeback field at 0).
IO_FLAG_FUA = 2

BLOCK_COMPLETION = np.dtype([
    ("tag", "<u8"),
    ("status", "<i4"),    # 0, or a negative errno
    ("reserved", "<u4"),
])
assert BLOCK_COMPLETION.itemsize == 16

STATUS_OK = 0
STATUS_IO_ERROR = -errno.EIO
STATUS_INVALID = -errno.EINVAL
STATUS_READ_ONLY = -errno.EROFS
STATUS_UNSUPPORTED = -errno.EOPNOTSUPP
STATUS_NO_SPACE = -errno.ENOSPC
