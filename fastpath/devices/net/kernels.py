"""The core's virtio-net functions as Numba sees them (fastpath/_core/net.pxd), for poll loops
that serve net queues without the GIL; and the kernel that hands out the frames a transmitq left
as it stopped being served."""

import numpy as np
from numba import njit, types

from fastpath._numba import NJIT, POINTER, copy_bytes, core_function

_i32 = types.int32
_u32 = types.uint32

# (net queue, frames, stride, room, slots or 0, lengths, max_n) -> frames received or FP_E_*
net_receive = core_function("net", "fp_net_receive",
                            _i32(POINTER, POINTER, _u32, _u32, POINTER, POINTER, _u32))
# (net queue, max_n) -> frames the receiveq takes now without waiting for a translation, or
# FP_E_*
net_room = core_function("net", "fp_net_room", _i32(POINTER, _u32))
# (net queue, frames, stride, slots or 0, lengths, n) -> frames taken or FP_E_*
net_transmit = core_function("net", "fp_net_transmit",
                             _i32(POINTER, POINTER, _u32, POINTER, POINTER, _u32))

# A HeldFrames store's state (uint64 columns): frames taken off a transmitq as it stopped
# being served, kept for the next receive on its queue pair (see _net_queue.HeldFrames).
HELD_COUNT = 0        # frames held: rows [0, count) of its arrays
HELD_NEXT = 1         # the next of them to give out
HELD_DROPPED = 2      # frames given up on: longer than the row they were to go into
HELD_FRAMES_AT = 3    # address of its uint8 (rows, stride) frames array
HELD_LENGTHS_AT = 4   # address of its uint32 (rows,) lengths array
HELD_ROWS = 5
HELD_STRIDE = 6
HELD_COLUMNS = 8


@njit(**NJIT)
def take_held(state, held_frames, held_lengths, frames, lengths, slots, max_n):
    """Move up to max_n held frames, oldest first, into `frames` by the core's burst
    convention (the k-th into row s = slots[k], or k when `slots` is None, its length into
    lengths[s]); one longer than a row is dropped and counted. Returns the frames moved.

    `state` is the store's state; `held_frames` and `held_lengths` its arrays."""
    room = np.uint64(frames.shape[1])
    stride = np.uint64(frames.strides[0])
    held_stride = np.uint64(held_frames.shape[1])
    frames_at = np.uint64(frames.ctypes.data)
    held_at = np.uint64(held_frames.ctypes.data)
    k = state[HELD_NEXT]
    count = state[HELD_COUNT]
    out = 0
    while k < count and out < max_n:
        length = held_lengths[k]
        if length > room:
            state[HELD_DROPPED] += np.uint64(1)
        else:
            s = np.uint64(out) if slots is None else np.uint64(slots[out])
            # SAFETY: the frame fits a row of `frames` (checked above), row k of the store
            # exists (k < count <= its rows), and row s of `frames` is the caller's to fill
            # (slots name rows of that array, as for fp_net_receive).
            copy_bytes(frames_at + s * stride, held_at + k * held_stride, np.uint64(length))
            lengths[s] = length
            out += 1
        k += np.uint64(1)
    if k == count:
        state[HELD_COUNT] = 0   # all given out: the rows are free again
        k = np.uint64(0)
    state[HELD_NEXT] = k
    return out
