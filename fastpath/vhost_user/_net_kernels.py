"""The core's virtio-net and eventfd functions as Numba sees them (fastpath/_core/net.pxd,
notify.pxd), for poll loops that serve net queues and drivers that kick, without the GIL."""

from numba import types

from fastpath._numba import POINTER, core_function

_i32 = types.int32
_u32 = types.uint32

# (net queue, frames, stride, slots or 0, lengths, max_n) -> frames received or FP_E_*
net_receive = core_function("net", "fp_net_receive",
                            _i32(POINTER, POINTER, _u32, POINTER, POINTER, _u32))
# (net queue, frames, stride, slots or 0, lengths, n) -> frames taken or FP_E_*
net_transmit = core_function("net", "fp_net_transmit",
                             _i32(POINTER, POINTER, _u32, POINTER, POINTER, _u32))
# (fds, n, timeout_ms) -> eventfds that fired, 0 on timeout, or -errno
eventfd_wait = core_function("notify", "fp_eventfd_wait", _i32(POINTER, _u32, _i32))
# (eventfd) -> 0 or -errno: a kick or a call
eventfd_signal = core_function("notify", "fp_eventfd_signal", _i32(_i32))
