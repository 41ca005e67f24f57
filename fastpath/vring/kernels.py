"""The core's queue functions as Numba sees them, for kernels that drive queues.

A kernel takes a queue's `handle` and the `.ctypes.data` of its record arrays, and calls these
once per burst. Signatures mirror fastpath/_core/{split,packed,chain,notify}.pxd. A device
queue that records what is in flight (`DeviceQueue.track_inflight`) does so inside these same
calls: its pops return the chains a restart left in flight first, and its pushes record them
used, with nothing for the kernel to do.
"""

from numba import njit, types

from fastpath._numba import NJIT, POINTER, core_function

_i32 = types.int32
_u32 = types.uint32

# A ring's notifications are eventfds (fastpath/_core/notify.pxd), whichever device it serves.
# (eventfd) -> 0 or -errno: a kick or a call
eventfd_signal = core_function("notify", "fp_eventfd_signal", _i32(_i32))
# (fds, n, timeout_ms, counts_read) -> eventfds that fired, 0 on timeout, or -errno; adds the
# counts it read to *counts_read
eventfd_wait = core_function("notify", "fp_eventfd_wait", _i32(POINTER, _u32, _i32, POINTER))

# (queue, chains, max_chains, segments, max_segments) -> chains popped or FP_E_*
split_pop_burst = core_function("split", "fp_split_pop_burst", _i32(POINTER, POINTER, _u32,
                                                                     POINTER, _u32))
packed_pop_burst = core_function("packed", "fp_packed_pop_burst", _i32(POINTER, POINTER, _u32,
                                                                        POINTER, _u32))
# (queue, chains, n) -> chains pushed
split_push_burst = core_function("split", "fp_split_push_burst", _i32(POINTER, POINTER, _u32))
packed_push_burst = core_function("packed", "fp_packed_push_burst", _i32(POINTER, POINTER, _u32))
# (queue, driver chains, n, segments) -> chains added
split_add_burst = core_function("split", "fp_split_add_burst", _i32(POINTER, POINTER, _u32,
                                                                     POINTER))
packed_add_burst = core_function("packed", "fp_packed_add_burst", _i32(POINTER, POINTER, _u32,
                                                                        POINTER))
# (queue, used elements, max_n) -> elements collected
split_collect_burst = core_function("split", "fp_split_collect_burst",
                                    _i32(POINTER, POINTER, _u32))
packed_collect_burst = core_function("packed", "fp_packed_collect_burst",
                                     _i32(POINTER, POINTER, _u32))
# (chains, n, segments, destination, stride) -> bytes copied
gather_burst = core_function("chain", "fp_gather_burst",
                             types.uint64(POINTER, _u32, POINTER, POINTER, _u32))
# (queue) -> whether the other side wants a notification / kick for what moved since last asked
split_device_should_notify = core_function("split", "fp_split_device_should_notify",
                                           types.int32(POINTER))
packed_device_should_notify = core_function("packed", "fp_packed_device_should_notify",
                                            types.int32(POINTER))
split_driver_should_kick = core_function("split", "fp_split_driver_should_kick",
                                         types.int32(POINTER))
packed_driver_should_kick = core_function("packed", "fp_packed_driver_should_kick",
                                          types.int32(POINTER))
# (queue, enabled) -> what arrived meanwhile (re-check before sleeping if non-zero)
split_device_set_kicks = core_function("split", "fp_split_device_set_kicks",
                                       _i32(POINTER, types.int32))
packed_device_set_kicks = core_function("packed", "fp_packed_device_set_kicks",
                                        _i32(POINTER, types.int32))
split_driver_set_calls = core_function("split", "fp_split_driver_set_calls",
                                       _i32(POINTER, types.int32))
packed_driver_set_calls = core_function("packed", "fp_packed_driver_set_calls",
                                        _i32(POINTER, types.int32))


# The same operations for either ring type: `packed` picks the core function, once per call.
# Kernels that serve both ring types call these instead of branching themselves.


@njit(**NJIT)
def add_burst(packed, driver, chains, n, segments):
    """Driver: offer chains[:n]; returns how many were added."""
    if packed:
        return packed_add_burst(driver, chains, n, segments)
    return split_add_burst(driver, chains, n, segments)


@njit(**NJIT)
def pop_burst(packed, device, chains, n, segments, max_segments):
    """Device: pop up to n chains, those a restart left in flight first; returns how many, or
    an FP_E_* code (< 0)."""
    if packed:
        return packed_pop_burst(device, chains, n, segments, max_segments)
    return split_pop_burst(device, chains, n, segments, max_segments)


@njit(**NJIT)
def push_burst(packed, device, chains, n):
    """Device: return chains[:n] as used; returns how many were accepted."""
    if packed:
        return packed_push_burst(device, chains, n)
    return split_push_burst(device, chains, n)


@njit(**NJIT)
def collect_burst(packed, driver, used, n):
    """Driver: collect up to n used elements; returns how many."""
    if packed:
        return packed_collect_burst(driver, used, n)
    return split_collect_burst(driver, used, n)


@njit(**NJIT)
def device_should_notify(packed, device):
    """Device: whether the driver wants a notification for what was pushed since last asked."""
    if packed:
        return packed_device_should_notify(device)
    return split_device_should_notify(device)


@njit(**NJIT)
def driver_should_kick(packed, driver):
    """Driver: whether the device wants a kick for what was added since last asked."""
    if packed:
        return packed_driver_should_kick(driver)
    return split_driver_should_kick(driver)


@njit(**NJIT)
def device_set_kicks(packed, device, enabled):
    """Device: ask for kicks (1) or not (0); non-zero back means pop again before sleeping
    (chains a restart left in flight to pop again included: no kick comes for them)."""
    if packed:
        return packed_device_set_kicks(device, enabled)
    return split_device_set_kicks(device, enabled)


@njit(**NJIT)
def driver_set_calls(packed, driver, enabled):
    """Driver: ask for calls (1) or not (0); non-zero back means collect again before sleeping."""
    if packed:
        return packed_driver_set_calls(driver, enabled)
    return split_driver_set_calls(driver, enabled)
