"""The TAP port: frames to and from the kernel's network stack through a TAP interface
(`tap:NAME`).

What tx_burst sends, the kernel receives on interface NAME (as if a cable brought it in);
what the kernel sends out of NAME, rx_burst receives. Each queue is one file descriptor of
/dev/net/tun (several with IFF_MULTI_QUEUE, among which the kernel spreads flows), read and
written without the GIL by fastpath._core.fdio. Opening an interface needs CAP_NET_ADMIN.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from numba import njit, types

from fastpath._numba import NJIT, POINTER, core_function
from fastpath.pmd._kinds import PortKind, register_port_kind
from fastpath.pmd._mbuf import POOL_DATA, POOL_LENGTH, MbufPool, free_burst
from fastpath.pmd._port import ROW_ARGS, ROW_STATS, STAT_ERRORS, Port
from fastpath.pmd._port_kernels import row_stats, take_mbufs

_i32 = types.int32
_u32 = types.uint32

# (fd, frames, stride, room, slots or 0, lengths, max_n, dropped count or 0) -> frames or -errno
fd_read_burst = core_function("fdio", "fp_fd_read_burst",
                              _i32(_i32, POINTER, _u32, _u32, POINTER, POINTER, _u32, POINTER))
# (fd, frames, stride, slots or 0, lengths, n, dropped count or 0) -> frames taken or -errno
fd_write_burst = core_function("fdio", "fp_fd_write_burst",
                               _i32(_i32, POINTER, _u32, POINTER, POINTER, _u32, POINTER))

KIND = 4

ARG_OPEN = ROW_ARGS        # 1 while the queue's fd is open
ARG_FD = ROW_ARGS + 1      # the queue's /dev/net/tun fd

TUN_DEVICE = "/dev/net/tun"
MAX_QUEUES = 256           # the kernel's limit on a multi-queue TAP's queues

# <linux/if_tun.h> and <linux/if.h>
_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_MULTI_QUEUE = 0x0100
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFNAMSIZ = 16
_IFREQ = struct.Struct("16sH22x")   # struct ifreq: the name, then ifr_flags in the union


@njit(**NJIT)
def _errors_address(row):
    return row[ROW_STATS] + STAT_ERRORS * 8


@njit(**NJIT)
def rx(row, pool, mbufs, max_n):
    """Frames the kernel sent out of the interface; one too long for an mbuf is dropped and
    counted in the queue's errors, as is a failed read."""
    if row[ARG_OPEN] == 0:
        return 0
    want = take_mbufs(row, pool, mbufs, max_n)
    if want == 0:
        return 0
    data = pool[POOL_DATA]
    got = fd_read_burst(row[ARG_FD], data.ctypes.data, data.strides[0], data.shape[1],
                        mbufs.ctypes.data,
                        pool[POOL_LENGTH].ctypes.data, want, _errors_address(row))
    if got < 0:
        row_stats(row)[STAT_ERRORS] += 1
        got = 0
    free_burst(pool, mbufs, got, want)
    return got


@njit(**NJIT)
def tx(row, pool, mbufs, n):
    """Frames into the kernel; fewer when its queue is full. A frame the kernel refuses is
    taken and dropped, counted in the queue's errors, so that it cannot hold up the rest."""
    if row[ARG_OPEN] == 0:
        return 0
    data = pool[POOL_DATA]
    sent = fd_write_burst(row[ARG_FD], data.ctypes.data, data.strides[0], mbufs.ctypes.data,
                          pool[POOL_LENGTH].ctypes.data, n, _errors_address(row))
    if sent < 0:
        row_stats(row)[STAT_ERRORS] += 1
        sent = 1
    return sent


def check_interface_name(name: str) -> None:
    """ValueError unless `name` is a name Linux accepts for an interface: 1 to 15 bytes,
    no '/', ':' or white space, not '.' or '..'."""
    encoded = name.encode(errors="replace")
    if (not 1 <= len(encoded) < _IFNAMSIZ or name in (".", "..")
            or any(c in "/:" or c.isspace() for c in name)):
        raise ValueError(f"an interface name is 1 to {_IFNAMSIZ - 1} bytes without '/', ':' "
                         f"or white space, not {name!r}")


class TapPort(Port):
    """TAP interface NAME as a port of `queues` queues (more than one: a multi-queue TAP).

    The interface is made if it does not exist (`created` tells), and its link brought up. When
    the port closes its fds, an interface it made goes away again; an existing (persistent)
    one stays. PermissionError without CAP_NET_ADMIN, FileNotFoundError without a TUN/TAP
    driver, ValueError for a bad name or an interface that is not a TAP of this kind.
    `interface` is the interface's name, `ifindex` its index, `fds` the queues' descriptors.
    """

    kind = KIND

    def __init__(self, name: str, pool: MbufPool, *, queues: int = 1):
        check_interface_name(name)
        if not 1 <= queues <= MAX_QUEUES:
            raise ValueError(f"a TAP has 1 to {MAX_QUEUES} queues, not {queues}")
        super().__init__(f"tap:{name}", pool, queues)
        self.interface = name
        self.fds: list[int] = []
        self.created = not _exists(name)
        flags = _IFF_TAP | _IFF_NO_PI | (_IFF_MULTI_QUEUE if queues > 1 else 0)
        try:
            for q in range(queues):
                fd = _open_queue(name, flags)
                self.fds.append(fd)
                self.rows[q, ARG_FD] = fd
                self.rows[q, ARG_OPEN] = 1
            _bring_up(name)
            self.ifindex = socket.if_nametoindex(name)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the queues' fds (an interface the port made goes away with them)."""
        self.rows[:, ROW_ARGS:] = 0
        while self.fds:
            os.close(self.fds.pop())


def _exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _open_queue(name: str, flags: int) -> int:
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no TUN/TAP device: the kernel lacks the tun "
                                "driver (modprobe tun), or /dev/net/tun is not in this "
                                "container", TUN_DEVICE) from None
    except PermissionError:
        raise PermissionError(errno.EACCES, "may not open the TUN/TAP device",
                              TUN_DEVICE) from None
    try:
        fcntl.ioctl(fd, _TUNSETIFF, _IFREQ.pack(name.encode(), flags))
    except OSError as e:
        os.close(fd)
        raise _explain(e, name) from None
    return fd


def _explain(e: OSError, name: str) -> Exception:
    if e.errno == errno.EPERM:
        return PermissionError(errno.EPERM, f"opening TAP {name} needs CAP_NET_ADMIN (root)")
    if e.errno == errno.EBUSY:
        return OSError(errno.EBUSY, f"TAP {name} is in use (opened without multi-queue by "
                       f"someone else)")
    if e.errno == errno.EINVAL:
        return ValueError(f"interface {name} exists and is not a TAP this port can open "
                          f"(another kind of interface, or a TAP made with other flags: "
                          f"packet information, multi-queue): {e.strerror}")
    return e


def _bring_up(name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as control:
        request = _IFREQ.pack(name.encode(), 0)
        _, flags = _IFREQ.unpack(fcntl.ioctl(control, _SIOCGIFFLAGS, request))
        if not flags & _IFF_UP:
            fcntl.ioctl(control, _SIOCSIFFLAGS, _IFREQ.pack(name.encode(), flags | _IFF_UP))


register_port_kind(PortKind(
    code=KIND, name="tap", argument="NAME", options={"queues": int},
    help="a TAP interface NAME of the kernel's network stack (made if missing; root)",
    make=TapPort, rx=rx, tx=tx))
