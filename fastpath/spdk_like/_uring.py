"""io_uring for bdevs: the compiled core's ring (fastpath._core.uring) as kernels call it, and
`Uring`, the same ring for Python (set-up and tests).

Every function returns a count or a negative errno and never raises. A ring is a handle (an
address as an integer) from `uring_create` or `Uring.handle`; one thread uses it at a time.
Requests are queued (`uring_queue_*`: 0, or -EBUSY when the ring is full and the caller keeps
the request), handed to the kernel together (`uring_submit`), and their completions reaped a
burst at a time (`uring_reap`): each request queued completes exactly once, with its user_data
and what the system call would return (bytes moved, 0 or -errno).
"""

from numba import types

from fastpath._core.uring import (
    FP_URING_DATASYNC,
    FP_URING_PUNCH_HOLE,
    FP_URING_ZERO_RANGE,
    Uring,
    direct_io_alignment,
)
from fastpath._numba import POINTER, core_function

_i32 = types.int32
_u32 = types.uint32
_u64 = types.uint64
_i64 = types.int64

URING_DATASYNC = FP_URING_DATASYNC
URING_PUNCH_HOLE = FP_URING_PUNCH_HOLE
URING_ZERO_RANGE = FP_URING_ZERO_RANGE

# (entries, IORING_SETUP_* flags, address of the handle's word) -> 0 or -errno
uring_create = core_function("uring", "fp_uring_create", _i32(_u32, _u32, POINTER))
# (ring): drains what is outstanding, then frees the ring
uring_destroy = core_function("uring", "fp_uring_destroy", types.void(POINTER))
# (ring) -> requests that may be queued now
uring_space = core_function("uring", "fp_uring_space", _u32(POINTER))
# (ring) -> requests queued or in flight, not yet reaped
uring_outstanding = core_function("uring", "fp_uring_outstanding", _u32(POINTER))
# (ring, fd, iovec address, iovcnt, offset, user_data) -> 0 or -EBUSY
uring_queue_readv = core_function("uring", "fp_uring_queue_readv",
                                  _i32(POINTER, _i32, POINTER, _u32, _u64, _u64))
# (ring, fd, iovec address, iovcnt, offset, 0 or URING_DATASYNC, user_data)
#   -> 0, -EBUSY or -EINVAL
uring_queue_writev = core_function("uring", "fp_uring_queue_writev",
                                   _i32(POINTER, _i32, POINTER, _u32, _u64, _u32, _u64))
# (ring, fd, 0 or URING_DATASYNC, user_data) -> 0, -EBUSY or -EINVAL
uring_queue_fsync = core_function("uring", "fp_uring_queue_fsync",
                                  _i32(POINTER, _i32, _u32, _u64))
# (ring, fd, URING_PUNCH_HOLE or URING_ZERO_RANGE, offset, length, user_data)
#   -> 0, -EBUSY or -EINVAL; completes with -EOPNOTSUPP where the file system lacks the mode
uring_queue_fallocate = core_function("uring", "fp_uring_queue_fallocate",
                                      _i32(POINTER, _i32, _u32, _u64, _u64, _u64))
# (ring) -> requests handed to the kernel, or -errno
uring_submit = core_function("uring", "fp_uring_submit", _i32(POINTER))
# (ring, user_data address, results address, max_n, wait_ns) -> completions reaped, or -errno
uring_reap = core_function("uring", "fp_uring_reap", _i32(POINTER, POINTER, POINTER, _u32, _i64))

__all__ = [
    "URING_DATASYNC",
    "URING_PUNCH_HOLE",
    "URING_ZERO_RANGE",
    "Uring",
    "direct_io_alignment",
    "uring_create",
    "uring_destroy",
    "uring_outstanding",
    "uring_queue_fallocate",
    "uring_queue_fsync",
    "uring_queue_readv",
    "uring_queue_writev",
    "uring_reap",
    "uring_space",
    "uring_submit",
]
