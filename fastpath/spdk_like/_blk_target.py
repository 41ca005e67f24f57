"""`BlkTarget`: the vhost-user-blk target, composing the virtio-blk device with a bdev on a
reactor, as SPDK's vhost-blk target does.

One poller serves every request queue of every attached device: each round, for each queue, it
takes a burst of requests (`fastpath.devices.blk.kernels.take_requests`), submits them to that
queue's own bdev channel, reaps the channel's completions and hands them back
(`complete_requests`). No Python runs per request. A queue whose ring stopped or was disabled
with requests in flight stays in the table, taking nothing new, until the bdev has completed
them; at GET_VRING_BASE the control plane serves the stopping queue itself until its requests
are done, so that the ring's base covers them.

The control plane holds the gate while it changes a device; the host holds it while inside its
kernel, as the net forwarder does.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from numba import njit

from fastpath._numba import NJIT, carray, u64_pointer, void_pointer
from fastpath.devices.blk import (
    BLOCK_COMPLETION,
    BLOCK_IO,
    IOVEC,
    BlkQueue,
    VirtioBlk,
)
from fastpath.devices.blk import kernels as blk
from fastpath.pmd import POLLER_ARGS, Poller, PollHost, register_poller
from fastpath.spdk_like._bdev import CH_COLUMNS, Bdev, BdevChannel, bdev_poll, bdev_submit
from fastpath.vhost_user import Gate
from fastpath.vring import CHAIN_DTYPE, SEGMENT_DTYPE

log = logging.getLogger("fastpath.spdk_like")

KIND = 18

# Table columns (uint64), a row per queue served.
Q_STATE = 0           # the BlkQueue's arrays, by address...
Q_CHAINS = 1
Q_SEGMENTS = 2
Q_HEADS = 3
Q_INFLIGHT = 4
Q_IOVECS = 5
Q_BURST = 6           # ...and their lengths: chains and heads
Q_SEGMENT_COUNT = 7
Q_SLOTS = 8           # inflight (the ring's size)
Q_IOVEC_COUNT = 9
Q_CHANNEL = 10        # the queue's bdev channel's row
Q_IOS = 11            # BLOCK_IO (burst,): requests taken, not yet all submitted
Q_COMPLETIONS = 12    # BLOCK_COMPLETION (burst,)
Q_FIRST = 13          # the first of the taken requests the bdev has not accepted yet
Q_PENDING = 14        # how many
Q_TAKE = 15           # 1: take new requests; 0: only complete those in flight
Q_BROKEN = 16         # 1 once the ring was found broken (nothing more is taken)
Q_COLUMNS = 17

ARG_TABLE = POLLER_ARGS
ARG_QUEUES = POLLER_ARGS + 1


@njit(**NJIT)
def serve_queue(entry):
    """One round of one queue: submit what waits, take and submit more, complete what the
    bdev finished. Returns the requests moved."""
    burst = np.int64(entry[Q_BURST])
    # SAFETY: every address is of an array the BlkTarget keeps alive (the BlkQueue's own, the
    # channel's row, the staging arrays) for as long as the row is in its table, with these
    # dtypes and lengths.
    queue = (carray(u64_pointer(entry[Q_STATE]), (blk.STATE_COLUMNS,)),
             carray(void_pointer(entry[Q_CHAINS]), (burst,), CHAIN_DTYPE),
             carray(void_pointer(entry[Q_SEGMENTS]), (np.int64(entry[Q_SEGMENT_COUNT]),),
                    SEGMENT_DTYPE),
             carray(void_pointer(entry[Q_HEADS]), (burst,), blk.REQUEST_HEAD_DTYPE),
             carray(void_pointer(entry[Q_INFLIGHT]), (np.int64(entry[Q_SLOTS]),),
                    blk.INFLIGHT_DTYPE),
             carray(void_pointer(entry[Q_IOVECS]), (np.int64(entry[Q_IOVEC_COUNT]),), IOVEC))
    channel = carray(u64_pointer(entry[Q_CHANNEL]), (CH_COLUMNS,))
    ios = carray(void_pointer(entry[Q_IOS]), (burst,), BLOCK_IO)
    completions = carray(void_pointer(entry[Q_COMPLETIONS]), (burst,), BLOCK_COMPLETION)
    moved = 0
    pending = np.int64(entry[Q_PENDING])
    if pending > 0:
        first = np.int64(entry[Q_FIRST])
        taken = bdev_submit(channel, ios, first, pending)
        entry[Q_FIRST] = first + taken
        pending -= taken
        entry[Q_PENDING] = pending
    if pending == 0 and entry[Q_TAKE] != 0 and entry[Q_BROKEN] == 0:
        n = blk.take_requests(queue, ios, burst)
        if n < 0:
            entry[Q_BROKEN] = 1
        elif n > 0:
            taken = bdev_submit(channel, ios, 0, n)
            entry[Q_FIRST] = taken
            entry[Q_PENDING] = n - taken
            moved += n
    done = bdev_poll(channel, completions, burst)
    if done > 0:
        blk.complete_requests(queue, completions, done)
        moved += done
    return moved


@njit(**NJIT)
def poll(row, host):
    """Every queue of the table, one round each."""
    queues = np.int64(row[ARG_QUEUES])
    # SAFETY: the BlkTarget's table of `queues` rows, alive while the poller is on a host.
    table = carray(u64_pointer(row[ARG_TABLE]), (queues, Q_COLUMNS))
    moved = 0
    for q in range(queues):
        moved += serve_queue(table[q])
    return moved


register_poller(KIND, "vhost-user-blk queues", poll)


class _Served:
    """One queue's side of the target: its bdev channel and staging arrays."""

    def __init__(self, queue: BlkQueue, channel: BdevChannel, burst: int):
        self.queue = queue
        self.channel = channel
        self.ios = np.zeros(burst, dtype=BLOCK_IO)
        self.completions = np.zeros(burst, dtype=BLOCK_COMPLETION)
        self.entry = np.zeros(Q_COLUMNS, dtype=np.uint64)
        state, chains, segments, heads, inflight, iovecs = queue.arrays
        for column, array in ((Q_STATE, state), (Q_CHAINS, chains), (Q_SEGMENTS, segments),
                              (Q_HEADS, heads), (Q_INFLIGHT, inflight), (Q_IOVECS, iovecs),
                              (Q_IOS, self.ios), (Q_COMPLETIONS, self.completions)):
            self.entry[column] = array.ctypes.data
        self.entry[Q_BURST] = min(len(chains), len(heads), burst)
        self.entry[Q_SEGMENT_COUNT] = len(segments)
        self.entry[Q_SLOTS] = len(inflight)
        self.entry[Q_IOVEC_COUNT] = len(iovecs)
        self.entry[Q_CHANNEL] = channel.row.ctypes.data

    @property
    def busy(self) -> bool:
        """Requests taken and not yet completed, or waiting for the bdev."""
        return self.queue.in_flight > 0 or self.entry[Q_PENDING] > 0


class BlkTarget(Poller):
    """Serves the request queues of every attached `VirtioBlk` over `bdev`, on a host of its
    own (`start`, `stop`) or on `host` (a reactor). Each queue gets a channel of the bdev as
    deep as its ring.
    """

    kind = KIND

    def __init__(self, gate: Gate, bdev: Bdev, *, host: PollHost | None = None,
                 burst: int = 32):
        super().__init__()
        self.gate = gate
        self.bdev = bdev
        self.burst = burst
        self.devices: list[VirtioBlk] = []
        self._served: dict[int, _Served] = {}   # id(BlkQueue) -> its side
        self._table = np.zeros((0, Q_COLUMNS), dtype=np.uint64)
        self._name_table()
        (host or PollHost("vhost-blk")).add(self)

    def attach(self, device: VirtioBlk) -> None:
        """Serve this device's queues from now on (its on_change and on_stop hooks are
        taken)."""
        device.on_change = self._changed
        device.on_stop = self._stopping
        with self.gate.control():
            self.devices.append(device)
            self._rebuild()

    def start(self) -> None:
        """Start the host's thread."""
        self.host.start()

    def stop(self) -> None:
        """Stop the host's thread and wait for it."""
        self.host.stop()

    def hold(self):
        """The gate, for the data plane."""
        return self.gate.data()

    def service(self) -> None:
        """Let go of what finished draining, and report rings that broke."""
        broken = [s for s in self._served.values() if s.entry[Q_BROKEN] == 1]
        for served in broken:
            log.error("a request ring broke (the driver corrupted it); it is no longer "
                      "served until the front-end sets it up again")
            served.entry[Q_BROKEN] = 2   # reported
        if any(not s.busy and s.entry[Q_TAKE] == 0 for s in self._served.values()):
            with self.gate.control():
                self._rebuild()

    # --- inside ---

    def _changed(self, device: VirtioBlk) -> None:
        # The device's hooks, with the gate held already.
        if device in self.devices:
            self._rebuild()

    def _stopping(self, device: VirtioBlk, index: int, queue: BlkQueue) -> None:
        # GET_VRING_BASE (gate held): complete the queue's requests before the base is read.
        served = self._served.get(id(queue))
        if served is None:
            return
        served.entry[Q_TAKE] = 0
        deadline = time.monotonic() + 5.0
        while served.busy and time.monotonic() < deadline:
            if not serve_queue(served.entry):
                time.sleep(0.0001)
        if served.busy:
            log.error("vring %d: the bdev did not complete %d requests in 5 s",
                      index, served.queue.in_flight)

    def _rebuild(self) -> None:
        # A device whose connection ended is let go once nothing of it is in flight.
        self.devices = [d for d in self.devices if d.connected or d.draining]
        wanted: dict[int, tuple[BlkQueue, bool]] = {}
        for device in self.devices:
            for queue in device.served:
                if queue is not None:
                    wanted[id(queue)] = (queue, True)
            for _, queue in device.draining:
                wanted.setdefault(id(queue), (queue, False))
        for key, served in list(self._served.items()):
            if key not in wanted and not served.busy:
                served.channel.close()
                del self._served[key]
            elif key not in wanted:
                served.entry[Q_TAKE] = 0   # kept until its requests complete
        for key, (queue, take) in wanted.items():
            served = self._served.get(key)
            if served is None:
                channel = self.bdev.open_channel(queue.queue.size)
                served = self._served[key] = _Served(queue, channel, self.burst)
                # A polled ring needs no kicks: ask the driver not to make them.
                queue.queue.disable_kicks()
            served.entry[Q_TAKE] = 1 if take and not queue.detached else 0
        # One table of every queue's entry; from now on each entry is a view into it, so the
        # kernel's state (requests pending, a broken ring) and the control plane's settings
        # are the same words.
        served = list(self._served.values())
        self._table = (np.array([s.entry for s in served], dtype=np.uint64) if served
                       else np.zeros((0, Q_COLUMNS), dtype=np.uint64))
        for k, side in enumerate(served):
            side.entry = self._table[k]
        self._name_table()

    def _name_table(self) -> None:
        self.row[ARG_TABLE] = self._table.ctypes.data
        self.row[ARG_QUEUES] = len(self._table)
