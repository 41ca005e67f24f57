"""The vhost-user port: fastpath's virtio-net back-end as a poll-mode port.

Queue q is virtio-net queue pair q of the one front-end connected (QEMU, DPDK's virtio-user,
fastpath's own): receiving takes what the driver put on its transmitq (after the frames the
device drained from it when it last stopped being served), sending fills its receiveq. The
control plane runs in `NetBackend`'s thread; `hold()` takes its gate and brings the rows up to
date with the rings the front-end has set up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from numba import njit

from fastpath._numba import NJIT, carray, u8_pointer, u32_pointer, u64_pointer
from fastpath.devices.net import DEFAULT_MAC, NetBackend
from fastpath.devices.net.kernels import (
    HELD_COLUMNS,
    HELD_COUNT,
    HELD_FRAMES_AT,
    HELD_LENGTHS_AT,
    HELD_NEXT,
    HELD_ROWS,
    HELD_STRIDE,
    net_receive,
    net_transmit,
    take_held,
)
from fastpath.pmd._kinds import PortKind, flag, register_port_kind
from fastpath.pmd._mbuf import POOL_DATA, POOL_LENGTH, free_burst
from fastpath.pmd._port import ROW_ARGS, STAT_ERRORS, Port
from fastpath.pmd._port_kernels import row_stats, take_mbufs

log = logging.getLogger("fastpath.pmd")

KIND = 1

ARG_TRANSMITQ = ROW_ARGS       # NetQueue handle of the driver's transmitq; 0: none served
ARG_RECEIVEQ = ROW_ARGS + 1    # NetQueue handle of the driver's receiveq; 0: none
ARG_HELD = ROW_ARGS + 2        # HeldFrames handle of the queue pair (always set)


@njit(**NJIT)
def _take_held(held, pool, mbufs, want):
    # The frames the device drained from the transmitq when it stopped being served.
    # SAFETY: the row's HeldFrames (owned by the port's NetBackend for its whole life) keeps
    # its state's addresses, rows and stride those of the arrays it holds; they change only
    # while the device drains into it, with the gate held, so never while this kernel runs.
    rows, stride = int(held[HELD_ROWS]), int(held[HELD_STRIDE])
    frames = carray(u8_pointer(held[HELD_FRAMES_AT]), (rows, stride))
    lengths = carray(u32_pointer(held[HELD_LENGTHS_AT]), (rows,))
    return take_held(held, frames, lengths, pool[POOL_DATA], pool[POOL_LENGTH], mbufs, want)


@njit(**NJIT)
def rx(row, pool, mbufs, max_n):
    """Frames the driver transmitted: those held from a transmitq that stopped first."""
    queue = row[ARG_TRANSMITQ]
    # SAFETY: ARG_HELD is the state array of the pair's HeldFrames, set when the port was
    # made and kept alive by its NetBackend as long as the port.
    held = carray(u64_pointer(row[ARG_HELD]), (HELD_COLUMNS,))
    pending = held[HELD_COUNT] != held[HELD_NEXT]
    if queue == 0 and not pending:
        return 0
    want = take_mbufs(row, pool, mbufs, max_n)
    if want == 0:
        return 0
    got = _take_held(held, pool, mbufs, want) if pending else 0
    if queue != 0 and got < want:
        data = pool[POOL_DATA]
        n = net_receive(queue, data.ctypes.data, data.strides[0], data.shape[1],
                        mbufs[got:].ctypes.data,
                        pool[POOL_LENGTH].ctypes.data, want - got)
        if n < 0:
            # The driver broke its ring: it is not served again until it sets the ring up
            # anew.
            row_stats(row)[STAT_ERRORS] += 1
            row[ARG_TRANSMITQ] = 0
        else:
            got += n
    free_burst(pool, mbufs, got, want)
    return got


@njit(**NJIT)
def tx(row, pool, mbufs, n):
    """Frames into the driver's receive buffers; fewer are taken when it posted too few."""
    queue = row[ARG_RECEIVEQ]
    if queue == 0:
        return 0
    data = pool[POOL_DATA]
    sent = net_transmit(queue, data.ctypes.data, data.strides[0], mbufs.ctypes.data,
                        pool[POOL_LENGTH].ctypes.data, n)
    if sent < 0:
        row_stats(row)[STAT_ERRORS] += 1
        row[ARG_RECEIVEQ] = 0
        sent = 0
    return sent


class VhostPort(Port):
    """A virtio-net vhost-user back-end on socket `path` as a port of `queues` queue pairs.

    It listens on `path` (or connects to a front-end listening there with `client=True`, and
    reconnects after it leaves). While nothing is connected it receives nothing and takes
    nothing. `mac` and `mtu` are what the device tells the driver.
    """

    kind = KIND

    def __init__(self, path: str, pool, *, queues: int = 1, client: bool = False,
                 mac: bytes = DEFAULT_MAC, mtu: int = 0, max_burst: int = 64,
                 name: str | None = None):
        super().__init__(name or f"vhost:{path}", pool, queues)
        self.backend = NetBackend(path, client=client, queue_pairs=queues, mac=mac, mtu=mtu,
                                  max_burst=max_burst)
        for q in range(queues):
            self.rows[q, ARG_HELD] = self.backend.held(q).handle
        # The queue objects each row was made from: a row a kernel zeroed (a broken ring)
        # stays zero until the front-end sets up a new queue.
        self._seen: list[list] = [[None, None] for _ in range(queues)]
        self._errors_logged = 0

    def ready(self, queue: int = 0) -> bool:
        """Whether a front-end has started queue pair `queue`."""
        return self.backend.ready(queue)

    def wait_ready(self, timeout: float | None = None, queue: int = 0) -> bool:
        """Wait until `ready(queue)`; False if `timeout` seconds pass first."""
        return self.backend.wait_ready(timeout, queue)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the back-end's gate, with the rows naming the queues set up now."""
        with self.backend.data_plane():
            self._refresh()
            yield
        errors = self.counters().errors
        if errors > self._errors_logged:
            log.error("%s: a ring broke (the driver corrupted it); it is not served until "
                      "the front-end sets it up again", self.name)
            self._errors_logged = errors

    def close(self) -> None:
        """Stop serving the socket."""
        self.backend.close()

    def _refresh(self) -> None:
        for q in range(self.queues):
            for side, (column, queue) in enumerate(zip((ARG_TRANSMITQ, ARG_RECEIVEQ),
                                                       self.backend.queues(q), strict=True)):
                if queue is self._seen[q][side]:
                    continue
                self._seen[q][side] = queue
                self.rows[q, column] = queue.handle if queue is not None else 0
                if queue is not None and column == ARG_TRANSMITQ:
                    # A polled ring needs no kicks; asking the driver not to spares it a
                    # system call per burst.
                    queue.queue.disable_kicks()


register_port_kind(PortKind(
    code=KIND, name="vhost", argument="SOCKET", options={"queues": int, "client": flag},
    help="fastpath's vhost-user back-end on SOCKET (client=1: connect to a front-end "
         "listening there)",
    make=VhostPort, rx=rx, tx=tx))
