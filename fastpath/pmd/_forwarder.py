"""`Forwarder`: one data-plane thread that loops every served queue pair's transmitq back to
its receiveq (io, macswap) or drops what it receives, for any number of devices.

The thread holds the gate only while inside the compiled loop; the control plane, changing a
device, holds it too, and rebuilds the table of rows the loop serves through `VirtioNet`'s
on_change hook.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from fastpath.devices.net import VirtioNet
from fastpath.pmd import _forwarder_kernels as k
from fastpath.pmd._pcap import NO_CAPTURE, PcapCapture
from fastpath.vhost_user import Gate

log = logging.getLogger("fastpath.vhost_user")

MODES = {"io": k.FWD_IO, "macswap": k.FWD_MACSWAP, "drop": k.FWD_DROP}

# Rounds per call: short enough that a control request waits well under a millisecond or so
# while traffic flows, long enough that the return to Python costs nothing.
ROUNDS_PER_CALL = 2048


class Forwarder:
    """Serves the queue pairs of every attached device in one thread.

    `mode`: "io", "macswap" or "drop". `burst`: frames per receive. `frame_size`: the largest
    frame taken (a longer one is dropped). `idle_rounds`: 0 to busy-poll for ever, else the idle
    rounds after which the thread sleeps on the kick eventfds (up to `sleep_ms`).
    `on_finished(device, drops)` runs (gate held) when a device's connection has closed and
    the forwarder lets go of it. With `capture`, every frame received is recorded there.
    """

    def __init__(self, gate: Gate, mode: str = "io", *, burst: int = 32,
                 frame_size: int = 2048, idle_rounds: int = 0, sleep_ms: int = 10,
                 on_finished: Callable[[VirtioNet, list[tuple[int, int]]], None] | None = None,
                 capture: PcapCapture | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if not 1 <= burst <= 1024:
            raise ValueError("burst must be 1 to 1024")
        self.gate = gate
        self.mode = mode
        self.burst = burst
        self.idle_rounds = idle_rounds
        self.sleep_ms = sleep_ms
        self.on_finished = on_finished
        self.capture = capture
        self._capture = capture.arrays if capture else NO_CAPTURE
        self.frames = np.zeros((burst, frame_size), dtype=np.uint8)
        self.lengths = np.zeros(burst, dtype=np.uint32)
        self.devices: list[VirtioNet] = []
        self._rows: list[tuple[VirtioNet, int]] = []
        self._table = np.zeros((0, k.TABLE_COLUMNS), dtype=np.uint64)
        self._stats = np.zeros((0, k.STAT_COLUMNS), dtype=np.uint64)
        self._kicks = np.full(0, -1, dtype=np.int32)
        # Per device: (no-room drops, broken rings) of rows already rebuilt away.
        self._carried: dict[int, np.ndarray] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warm_up()

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
        """Start the thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fastpath-fwd", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

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
                queue = pair.tx.queue
                table.append((pair.tx.handle, pair.rx.handle if pair.rx else 0, queue.handle,
                              int(queue.packed)))
                kicks.append(pair.tx_kick)
                # A polled ring needs no kicks: ask the driver not to (VRING_USED_F_NO_NOTIFY
                # or the event index), sparing it a system call per burst. A loop about to
                # sleep asks for them again.
                queue.disable_kicks()
            if device.control is not None:
                kicks.append(device.control.kick_fd)  # a command wakes a sleeping loop
        self._rows = rows
        self._table = np.array(table, dtype=np.uint64).reshape(-1, k.TABLE_COLUMNS)
        self._stats = np.zeros((len(rows), k.STAT_COLUMNS), dtype=np.uint64)
        self._kicks = np.array(kicks, dtype=np.int32)

    def _served(self, pair) -> bool:
        # The device offers a transmitq while it may be served (and empties it itself once
        # disabled); a forwarding loop also waits for the pair's receiveq.
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
        for _ in range(64):
            if not k.forward(table, stats, MODES[self.mode], self.frames, self.lengths,
                             self.burst, 1, 0, self._kicks[:0], 0, self._capture):
                break
            if self.capture:
                self.capture.flush()
        self._stats[rows[0]] += stats[0]

    def _serve_devices(self) -> None:
        # Control commands and disabled transmitqs are rare: served in Python, once per loop
        # call (gate held).
        for device in self.devices:
            device.service()

    def _warm_up(self) -> None:
        # Compile (or load from Numba's cache) before any front-end waits on the gate.
        k.forward(self._table, self._stats, MODES[self.mode], self.frames, self.lengths,
                  self.burst, 1, 0, self._kicks, 0, self._capture)

    def _run(self) -> None:
        mode = MODES[self.mode]
        broken = 0
        while not self._stop.is_set():
            if not len(self._table):
                time.sleep(0.01)
                with self.gate.data():
                    self._serve_devices()
                continue
            with self.gate.data():
                k.forward(self._table, self._stats, mode, self.frames, self.lengths, self.burst,
                          ROUNDS_PER_CALL, self.idle_rounds, self._kicks, self.sleep_ms,
                          self._capture)
                now_broken = int(self._stats[:, k.STAT_BROKEN].sum())
                if self.capture:
                    self.capture.flush()  # inside the gate: a drain may fill the ring too
                self._serve_devices()
            if now_broken > broken:
                log.error("a ring broke (the driver corrupted it); it is no longer served "
                          "until the front-end sets it up again")
            broken = now_broken
