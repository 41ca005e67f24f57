"""The ring port: frames between processes through a shared-memory ring (`ring:NAME`).

The ring lives in the file /dev/shm/fastpath-ring-NAME, which every port on NAME maps. One ring
per name: what a port sends on it, a port receives from it, so one process's tx_burst feeds
another's rx_burst (and a port that does both loops back to itself). The ring has one producer
and one consumer: at most one port should send on a name, and one receive.

Who formats the ring: every port holds a shared flock(2) on the file while it is open. A port
that finds itself alone on the file (it gets the lock exclusively) formats it; one that finds
others attaches and takes the geometry they made. The last port to close removes the file. A
process that dies leaves the file, with no lock held, so the next port on the name formats it
afresh; `RingPort.remove` deletes it outright.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import re

from numba import njit, types

from fastpath._core.ring import RING_MAGIC, Ring, format_ring, ring_bytes
from fastpath._numba import NJIT, POINTER, carray, core_function, u64_pointer
from fastpath.pmd._kinds import PortKind, flag, register_port_kind
from fastpath.pmd._mbuf import POOL_DATA, POOL_LENGTH, MbufPool, free_burst
from fastpath.pmd._port import ROW_ARGS, STAT_ERRORS, Port
from fastpath.pmd._port_kernels import row_stats, take_mbufs

log = logging.getLogger("fastpath.pmd")

_i32 = types.int32
_u32 = types.uint32

# (ring, frames, stride, slots or 0, lengths, n) -> frames taken or FP_E_BROKEN
ring_enqueue = core_function("ring", "fp_ring_enqueue",
                             _i32(POINTER, POINTER, _u32, POINTER, POINTER, _u32))
# (ring, frames, stride, room, slots or 0, lengths, max_n) -> frames placed or FP_E_BROKEN
ring_dequeue = core_function("ring", "fp_ring_dequeue",
                             _i32(POINTER, POINTER, _u32, _u32, POINTER, POINTER, _u32))

KIND = 3

ARG_RX_RING = ROW_ARGS         # the ring's core handle for receiving; 0: none (closed, broken)
ARG_TX_RING = ROW_ARGS + 1     # the same handle for sending; 0: none
ARG_TOO_LONG = ROW_ARGS + 2    # address of the header's too_long count (u64)
ARG_RX_DROPPED = ROW_ARGS + 3  # address of the header's rx_dropped count (u64)

DIRECTORY = "/dev/shm"
PREFIX = "fastpath-ring-"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")


@njit(**NJIT)
def _counter(address):
    # SAFETY: the addresses passed are those of the ring's head and tail counters inside the
    # shared mapping the RingPort holds open while its rows are in use.
    return carray(u64_pointer(address), (1,))


@njit(**NJIT)
def rx(row, pool, mbufs, max_n):
    """Frames the ring's producer enqueued; one too long for an mbuf is dropped and counted
    in the queue's errors."""
    ring = row[ARG_RX_RING]
    if ring == 0:
        return 0
    want = take_mbufs(row, pool, mbufs, max_n)
    if want == 0:
        return 0
    data = pool[POOL_DATA]
    dropped = _counter(row[ARG_RX_DROPPED])
    before = dropped[0]
    got = ring_dequeue(ring, data.ctypes.data, data.strides[0], data.shape[1], mbufs.ctypes.data,
                       pool[POOL_LENGTH].ctypes.data, want)
    if got < 0:
        # The producer wrote an impossible index: nothing more is taken from this ring.
        row_stats(row)[STAT_ERRORS] += 1
        row[ARG_RX_RING] = 0
        got = 0
    else:
        row_stats(row)[STAT_ERRORS] += dropped[0] - before
    free_burst(pool, mbufs, got, want)
    return got


@njit(**NJIT)
def tx(row, pool, mbufs, n):
    """Frames into the ring, fewer when it is full. A frame longer than a ring slot is taken
    and dropped, counted in the queue's errors (and in the ring's too_long)."""
    ring = row[ARG_TX_RING]
    if ring == 0:
        return 0
    data = pool[POOL_DATA]
    too_long = _counter(row[ARG_TOO_LONG])
    before = too_long[0]
    sent = ring_enqueue(ring, data.ctypes.data, data.strides[0], mbufs.ctypes.data,
                        pool[POOL_LENGTH].ctypes.data, n)
    if sent < 0:
        row_stats(row)[STAT_ERRORS] += 1
        row[ARG_TX_RING] = 0
        sent = 0
    else:
        row_stats(row)[STAT_ERRORS] += too_long[0] - before
    return sent


def ring_path(name: str) -> str:
    """The file ring NAME lives in; ValueError for a name that is not letters, digits and
    - _ . (up to 200 of them, not . or ..)."""
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"a ring name is 1 to 200 letters, digits, '-', '_' and '.', "
                         f"not {name!r}")
    return os.path.join(DIRECTORY, PREFIX + name)


class RingPort(Port):
    """Ring NAME (/dev/shm/fastpath-ring-NAME) as a one-queue port: tx_burst enqueues, rx_burst
    dequeues.

    `create=None` formats a ring of `slots` slots (a power of two) of `slot_size` bytes when no
    other port has the file open, and attaches to the ring others made otherwise (taking their
    geometry: see `slots` and `slot_size`). `create=True` insists on formatting
    (FileExistsError when another port has the ring), `create=False` on attaching
    (FileNotFoundError when there is no ring). A file there that is not a fastpath ring, or
    whose header is impossible, is refused with ValueError and left alone. `created` tells
    whether this port formatted the ring; `path` is its file. With `receive=False` or
    `send=False` the port only sends or only receives: a process that feeds a ring another
    one empties then takes nothing back from it.
    """

    kind = KIND

    def __init__(self, name: str, pool: MbufPool, *, slots: int = 1024, slot_size: int = 2048,
                 create: bool | None = None, receive: bool = True, send: bool = True):
        self.path = ring_path(name)
        size = ring_bytes(slots, slot_size)
        super().__init__(f"ring:{name}", pool, 1)
        self._fd = -1
        self._map = None
        self._ring = None
        self._broken_logged = False
        self._fd, self.created = _open_locked(self.path, size, slots, slot_size, create)
        try:
            length = os.fstat(self._fd).st_size
            if length == 0:
                raise ValueError(f"{self.path} is empty: not a fastpath ring")
            self._map = mmap.mmap(self._fd, length)
            self._ring = Ring(self._map)
        except BaseException:
            self._release(unlink=False)
            raise
        self._directions = [column for column, wanted in ((ARG_RX_RING, receive),
                                                          (ARG_TX_RING, send)) if wanted]
        for column in self._directions:
            self.rows[0, column] = self._ring.handle
        self.rows[0, ARG_TOO_LONG] = self._ring.too_long_address
        self.rows[0, ARG_RX_DROPPED] = self._ring.rx_dropped_address

    @property
    def slots(self) -> int:
        """How many frames the ring holds."""
        return self._ring.slots

    @property
    def slot_size(self) -> int:
        """The longest frame the ring carries."""
        return self._ring.slot_size

    @property
    def pending(self) -> int:
        """Frames in the ring, sent and not yet received."""
        return self._ring.pending

    @property
    def too_long(self) -> int:
        """Frames senders dropped because they are longer than a slot (since formatting)."""
        return self._ring.too_long

    @property
    def rx_dropped(self) -> int:
        """Frames receivers dropped because they did not fit an mbuf (since formatting)."""
        return self._ring.rx_dropped

    def service(self) -> None:
        """Report a ring that broke (a peer wrote an impossible index), once."""
        if self._ring is None or self._broken_logged:
            return
        if any(self.rows[0, column] == 0 for column in self._directions):
            log.error("%s: the ring's indices are inconsistent (a peer corrupted it); it "
                      "is not used until the port is opened again", self.name)
            self._broken_logged = True

    def close(self) -> None:
        """Unmap the ring; the last port on the name removes its file."""
        self._release(unlink=True)

    def _release(self, unlink: bool) -> None:
        if self._fd < 0:
            return
        self.rows[:, ROW_ARGS:] = 0
        self._ring = None
        if self._map is not None:
            self._map.close()
            self._map = None
        if unlink:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                # Nobody else holds the file: it goes, unless a new ring took the name since.
                if _is_linked(self._fd, self.path):
                    os.unlink(self.path)
        os.close(self._fd)
        self._fd = -1

    @staticmethod
    def remove(name: str) -> bool:
        """Delete ring NAME's file (left behind by a process that died); returns whether there
        was one. Ports still open on it keep their ring; new ones make a new file."""
        try:
            os.unlink(ring_path(name))
        except FileNotFoundError:
            return False
        return True


def _is_linked(fd: int, path: str) -> bool:
    # Whether the file open as fd is still the one at path.
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _open_locked(path: str, size: int, slots: int, slot_size: int,
                 create: bool | None) -> tuple[int, bool]:
    """Open the ring file holding a shared lock, formatting it first when this is the only
    port on it (and `create` allows). Returns (fd, formatted)."""
    flags = os.O_RDWR | os.O_CLOEXEC | (0 if create is False else os.O_CREAT)
    while True:
        fd = os.open(path, flags, 0o600)
        try:
            alone = _lock(fd)
            linked = _is_linked(fd, path)
            if linked and create is True and not alone:
                raise FileExistsError(errno.EEXIST, "another port has this ring open", path)
            if linked and alone and create is not False:
                _format(fd, path, size, slots, slot_size)
            if alone:
                # A port that opens the file while the lock is converted may find it alone
                # and format it again: harmless, this one maps it only afterwards.
                fcntl.flock(fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        if linked:
            return fd, alone and create is not False
        # The last port on that file removed it between our open and our lock.
        os.close(fd)
        if create is False:
            raise FileNotFoundError(errno.ENOENT, "no ring there", path)


def _lock(fd: int) -> bool:
    # A shared lock for as long as the port is open; True when it came exclusive (no other
    # port has the file), and is still to be made shared.
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fcntl.flock(fd, fcntl.LOCK_SH)
        return False
    return True


def _format(fd: int, path: str, size: int, slots: int, slot_size: int) -> None:
    # Nobody else has the file open as a ring (we hold it exclusively).
    if os.fstat(fd).st_size:
        start = os.pread(fd, len(RING_MAGIC), 0)
        if start != RING_MAGIC:
            raise ValueError(f"{path} is not a fastpath ring (it starts {start!r}); "
                             f"not overwriting it")
        os.ftruncate(fd, 0)
    # Reserve the memory now: a tmpfs that runs out later would kill the process (SIGBUS).
    os.posix_fallocate(fd, 0, size)
    with mmap.mmap(fd, size) as memory:
        format_ring(memory, slots, slot_size)


def _from_spec(name: str, pool: MbufPool, **options) -> RingPort:
    # The command line's rx=0 and tx=0 are the port's receive=False and send=False.
    receive, send = options.pop("rx", True), options.pop("tx", True)
    return RingPort(name, pool, receive=receive, send=send, **options)


register_port_kind(PortKind(
    code=KIND, name="ring", argument="NAME",
    options={"slots": int, "slot_size": int, "rx": flag, "tx": flag},
    help="a shared-memory ring NAME: what one process sends, another receives (rx=0: "
         "only send; tx=0: only receive)",
    make=_from_spec, rx=rx, tx=tx))
