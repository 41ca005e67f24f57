"""`Forwarder`: a poller that loops every served queue pair's transmitq back to its receiveq
(io, macswap), drops what it receives, or fills every receiveq with a template frame (txonly),
for any number of devices: `fastpath vhost-net` is a poll host with one of these on it.

The host holds the gate only while inside its kernel; the control plane, changing a device,
holds it too, and rebuilds the table of pairs the poller serves through `VirtioNet`'s
on_change hook.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from fastpath.devices.net import VirtioNet
from fastpath.pmd import _forwarder_kernels as k
from fastpath.pmd._host import PollHost
from fastpath.pmd._pcap import NO_CAPTURE, PcapCapture
from fastpath.pmd._pollers import HOST_COLUMNS, Poller
from fastpath.pmd._traffic import DEFAULT_SIZE, profile_frames
from fastpath.vhost_user import Gate

log = logging.getLogger("fastpath.vhost_user")

MODES = {"io": k.FWD_IO, "macswap": k.FWD_MACSWAP, "drop": k.FWD_DROP, "txonly": k.FWD_TXONLY}

# Rounds per host call: short enough that a control request waits well under a millisecond or
# so while traffic flows, long enough that the return to Python costs nothing.
ROUNDS_PER_CALL = 2048


class Forwarder(Poller):
    """Serves the queue pairs of every attached device, on a host of its own (`start`, `stop`)
    or on `host`.

    `mode`: "io", "macswap", "drop" or "txonly" (every receiveq gets `size`-byte frames, the
    Ether/IPv4/UDP frame of the udp64 traffic profile, as fast as the driver posts buffers;
    what the transmitqs bring is freed, as with drop). `burst`: frames per receive or transmit.
    `frame_size`: the largest frame taken (a longer one is dropped). `idle_rounds`: 0 to
    busy-poll for ever, else the idle rounds after which its own host sleeps on the kick
    eventfds (up to `sleep_ms`).
    `on_finished(device, drops)` runs (gate held) when a device's connection has closed and
    the forwarder lets go of it. With `capture`, every frame received is recorded there.
    """

    kind = k.KIND

    def __init__(self, gate: Gate, mode: str = "io", *, burst: int = 32,
                 frame_size: int = 2048, size: int = DEFAULT_SIZE, idle_rounds: int = 0,
                 sleep_ms: int = 10,
                 on_finished: Callable[[VirtioNet, list[tuple[int, int]]], None] | None = None,
                 capture: PcapCapture | None = None, host: PollHost | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if not 1 <= burst <= 1024:
            raise ValueError("burst must be 1 to 1024")
        super().__init__()
        self.gate = gate
        self.mode = mode
        self.burst = burst
        self.on_finished = on_finished
        self.capture = capture
        self._capture = capture.arrays if capture else NO_CAPTURE
        self.frames = np.zeros((burst, frame_size), dtype=np.uint8)
        self.lengths = np.zeros(burst, dtype=np.uint32)
        self.template = np.zeros(frame_size, dtype=np.uint8)
        self._template_slots = np.zeros(burst, dtype=np.uint32)
        self._template_length = np.zeros(1, dtype=np.uint32)
        if mode == "txonly":
            if size > frame_size:
                raise ValueError(f"size must be at most frame_size ({frame_size})")
            frame = profile_frames("udp64", count=1, size=size)[0]
            self.template[:size] = np.frombuffer(frame, dtype=np.uint8)
            self._template_length[0] = size
        self.devices: list[VirtioNet] = []
        self._rows: list[tuple[VirtioNet, int]] = []
        self._table = np.zeros((0, k.TABLE_COLUMNS), dtype=np.uint64)
        self._stats = np.zeros((0, k.STAT_COLUMNS), dtype=np.uint64)
        self._kicks: list[int] = []
        # Per device: (no-room drops, broken rings) of rows already rebuilt away.
        self._carried: dict[int, np.ndarray] = {}
        self._broken = 0
        ring, lengths, stamps, state = self._capture
        for column, value in (
                (k.ARG_MODE, MODES[mode]), (k.ARG_FRAMES, self.frames.ctypes.data),
                (k.ARG_BURST, burst), (k.ARG_STRIDE, frame_size),
                (k.ARG_LENGTHS, self.lengths.ctypes.data),
                (k.ARG_CAPTURE_RING, ring.ctypes.data), (k.ARG_CAPTURE_ROWS, ring.shape[0]),
                (k.ARG_CAPTURE_SNAPLEN, ring.shape[1]),
                (k.ARG_CAPTURE_LENGTHS, lengths.ctypes.data),
                (k.ARG_CAPTURE_STAMPS, stamps.ctypes.data),
                (k.ARG_CAPTURE_STATE, state.ctypes.data),
                (k.ARG_TEMPLATE, self.template.ctypes.data),
                (k.ARG_TEMPLATE_SLOTS, self._template_slots.ctypes.data),
                (k.ARG_TEMPLATE_LENGTH, self._template_length.ctypes.data)):
            self.row[column] = value
        self._name_table()
        self._own_host = host is None
        (host or PollHost("fastpath-fwd", idle_rounds=idle_rounds, sleep_ms=sleep_ms,
                          rounds=ROUNDS_PER_CALL)).add(self)

    def attach(self, device: VirtioNet) -> None:
        """Serve this device's queue pairs from now on (its on_change hook is taken)."""
        device.on_change = self._changed
        device.on_drain = self._drain
        with self.gate.control():
            self.devices.append(device)
            self._carried[id(device)] = np.zeros((device.queue_pairs, k.STAT_COLUMNS),
                                                 dtype=np.uint64)
            self._rebuild()

    def detach(self, device: VirtioNet) -> None:
        """Stop serving this device."""
        with self.gate.control():
            if device in self.devices:
                self._rebuild(without=device)
                self.devices.remove(device)
                del self._carried[id(device)]

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
        """Write the capture out, serve the devices' control commands and disabled
        transmitqs (rare: in Python, once per host call), report a ring that broke."""
        if self.capture:
            self.capture.flush()  # inside the gate: a drain may fill the ring too
        for device in self.devices:
            device.service()
        broken = int(self._stats[:, k.STAT_BROKEN].sum())
        if broken > self._broken:
            log.error("a ring broke (the driver corrupted it); it is no longer served "
                      "until the front-end sets it up again")
        self._broken = broken

    @property
    def wake_fds(self) -> list[int]:
        """The served rings' kick eventfds and the control queues'."""
        return self._kicks

    def drops(self, device: VirtioNet) -> list[tuple[int, int]]:
        """Per queue pair of `device`: (frames dropped for want of room, rings broken)."""
        totals = self._carried[id(device)].copy()
        for row, (owner, pair) in enumerate(self._rows):
            if owner is device:
                totals[pair] += self._stats[row]
        return [(int(a), int(b)) for a, b in totals]

    # --- inside ---

    def _changed(self, device: VirtioNet) -> None:
        # Called by the device's hooks, with the gate held already.
        if device not in self.devices:
            return
        if not device.closed_down:
            self._rebuild()
            return
        self._rebuild(without=device)
        self.devices.remove(device)
        drops = self.drops(device)
        del self._carried[id(device)]
        if self.on_finished:
            self.on_finished(device, drops)

    def _rebuild(self, without: VirtioNet | None = None) -> None:
        for row, (owner, pair) in enumerate(self._rows):
            self._carried[id(owner)][pair] += self._stats[row]
        rows, table, kicks = [], [], []
        for device in self.devices:
            if device is without:
                continue
            for pair in device.pairs:
                if not self._served(pair):
                    continue
                rows.append((device, pair.index))
                tx, rx = pair.tx, pair.rx
                table.append((tx.handle if tx else 0, rx.handle if rx else 0,
                              tx.queue.handle if tx else 0,
                              int((tx or rx).queue.packed), rx.queue.handle if rx else 0))
                # A polled ring needs no kicks: ask the driver not to (VRING_USED_F_NO_NOTIFY
                # or the event index), sparing it a system call per burst, a receiveq's
                # refills included. A loop about to sleep asks for them again.
                for queue, kick in ((tx, pair.tx_kick), (rx, pair.rx_kick)):
                    if queue is not None:
                        queue.queue.disable_kicks()
                        kicks.append(kick)
            if device.control is not None:
                kicks.append(device.control.kick_fd)  # a command wakes a sleeping loop
        self._rows = rows
        self._table = np.array(table, dtype=np.uint64).reshape(-1, k.TABLE_COLUMNS)
        self._stats = np.zeros((len(rows), k.STAT_COLUMNS), dtype=np.uint64)
        self._broken = 0
        self._kicks = kicks
        self._name_table()
        if self.host is not None:
            self.host.wake_fds_changed()

    def _name_table(self) -> None:
        self.row[k.ARG_TABLE] = self._table.ctypes.data
        self.row[k.ARG_PAIRS] = len(self._table)
        self.row[k.ARG_STATS] = self._stats.ctypes.data

    def _served(self, pair) -> bool:
        # The device offers a transmitq while it may be served (and empties it itself once
        # disabled); a forwarding loop also waits for the pair's receiveq, and txonly serves
        # either ring alone.
        if self.mode == "txonly":
            return pair.tx is not None or pair.rx is not None
        return pair.tx is not None and (self.mode == "drop" or pair.rx is not None)

    def _drain(self, device: VirtioNet, index: int) -> None:
        # The device's on_drain: the pair's transmitq stops being served. The control plane
        # holds the gate: serve this one pair from here until its transmitq is empty
        # (bounded: a driver could keep adding for ever). A pair without a row (its receiveq
        # gone) keeps its frames for the device to discard.
        rows = [row for row, (owner, pair) in enumerate(self._rows)
                if owner is device and pair == index]
        if not rows:
            return
        table = self._table[rows].copy()
        stats = np.zeros((1, k.STAT_COLUMNS), dtype=np.uint64)
        row = self.row.copy()   # this poller, serving the one pair
        row[k.ARG_TABLE], row[k.ARG_PAIRS] = table.ctypes.data, 1
        if self.mode == "txonly":
            row[k.ARG_MODE] = k.FWD_DROP   # emptying the transmitq, not filling the receiveq
        row[k.ARG_STATS] = stats.ctypes.data
        host = np.zeros(HOST_COLUMNS, dtype=np.uint64)
        for _ in range(64):
            if not k.poll(row, host):
                break
            if self.capture:
                self.capture.flush()
        self._stats[rows[0]] += stats[0]
