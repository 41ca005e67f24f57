"""A guest's virtio-net kicks as VM exits that reach a running back-end: exits per frame with
notifications on, with EVENT_IDX, and with a polling back-end.

What is modelled: the guest's driver is fastpath's own virtio-net driver (`NetFrontend`: split
rings in memfd guest memory shared over a real vhost-user socket) and its back-end is
fastpath's (`NetBackend`: the protocol engine, the virtio-net device and its compiled queues),
served by a thread that sends every frame back. What the driver does runs on a modelled vCPU
(`fastpath.hv.vmx`) with EPT as an event stream: its ring writes (the frame into its buffer,
the descriptor, the avail entry, the avail index) are guest work that EPT maps, and its kick
is the virtio-pci MMIO write of the queue index to the queue's notify address (virtio 1.2
§4.1.4.4), in a page whose EPT entry is write+execute without read: KVM's MMIO trap, an EPT
misconfiguration (hv.md §1.6). The write exits with reason 49 and the notify address as
GUEST_PHYSICAL_ADDRESS; the exit handler plays KVM's ioeventfd: it finds the queue by address,
writes that queue's kick eventfd, skips the instruction and resumes. Whether the driver kicks
is the ring's own decision (the used ring's NO_NOTIFY flag, or with EVENT_IDX the device's
avail event), so the exits counted are those the real notification suppression lets through.
The guest sends a burst and waits for it to come back byte for byte, so each burst meets a
back-end that has finished the one before. The modes (--mode) differ in EVENT_IDX and in what
the back-end does between bursts.

Tables:
  Kicks as VM exits   per mode: frames and bursts, frames returned intact, the VMM's kick
                      eventfd writes for the transmitq and the receiveq (the receiveq's is for
                      the buffers posted at start), what the back-end read from its transmitq
                      kick eventfd, all exits, exits per frame, and the cost model's cycles
                      per frame
  VM exits by reason  per mode: exits by basic reason and the addresses they exited at
"""
from __future__ import annotations

import argparse
import os
import select
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from fastpath.devices.net import BUFFER_SIZE, NET_HDR_SIZE, NetBackend, NetFrontend, frame_size
from fastpath.errors import VmxError
from fastpath.hv import HostMemory, ept
from fastpath.hv.ept import PAGE_2M, PAGE_4K, EptTables
from fastpath.hv.vmx import (
    CostModel,
    EventKind,
    ExitReason,
    Field,
    GuestRunner,
    ProcBased,
    Secondary,
    event,
    events,
    ready_vcpu,
    skip_instruction,
)
from fastpath.scenarios._options import positive_int, positive_int_up_to
from fastpath.scenarios._report import Report, Table
from fastpath.vring import SPLIT_DESC_DTYPE

__all__ = ["KickMode", "KICK_MODES", "notify_address", "run"]

# QEMU's modern virtio-pci device puts its notify area at offset 0x3000 of BAR 4 with a
# notify_off_multiplier of 4 and queue_notify_off = the queue's index (hw/virtio/virtio-pci.c);
# the BAR is placed here, in the 32-bit MMIO hole below 4 GiB.
NOTIFY_BASE = 0xFE00_3000
NOTIFY_OFF_MULTIPLIER = 4

# Host-physical layout of the model: the VMXON region and the VMCS sit at 0x1000 and 0x2000
# (`ready_vcpu`), EPT tables in [1 MiB, 2 MiB), the frames backing guest RAM from 2 MiB. The
# model keeps no copy of guest RAM there: the driver and the back-end share the memfd.
EPT_TABLES = (1 << 20, 2 << 20)
RAM_HPA = 2 << 20

# virtio 1.2 §2.7.6: the avail ring is le16 flags, le16 idx, then le16 ring[queue size].
AVAIL_IDX_OFFSET, AVAIL_RING_OFFSET = 2, 4

# How often a polling back-end looks at an empty transmitq: a Python loop spinning flat out
# would take the GIL from the guest it serves.
POLL_INTERVAL = 50e-6
# How long a busy back-end polls with kicks off after its last frame before it asks for kicks
# and sleeps: far longer than the guest takes from one burst's frames coming back to its next
# burst, as a back-end under load polls on (Linux vhost's busyloop_timeout, a DPDK PMD's loop).
BUSY_BACKOFF = 0.05
# How long a sleeping back-end waits on its kick eventfd before it looks whether to stop.
WAIT_SLICE = 0.05
RECEIVE_TIMEOUT = 10.0


@dataclass(frozen=True)
class KickMode:
    """One way of running the scenario: whether the driver asks for VIRTIO_RING_F_EVENT_IDX,
    and what the back-end does when its transmitq is empty ("sleep": waits on its kick eventfd
    with kicks always asked for; "busy": polls with kicks off for BUSY_BACKOFF after its last
    frame, then asks for kicks and sleeps; "poll": polls with kicks off for ever)."""

    event_idx: bool
    backend: str
    description: str


KICK_MODES = {
    "notify": KickMode(False, "sleep", "no EVENT_IDX; the back-end sleeps on its kick eventfd "
                       "and never turns kicks off: one kick per burst"),
    "event-idx": KickMode(True, "busy", "EVENT_IDX; the back-end polls on after each burst "
                          "and leaves its avail event behind: a kick for the first burst, "
                          "then only after it fell asleep"),
    "poll": KickMode(False, "poll", "no EVENT_IDX; the back-end busy-polls with NO_NOTIFY set: "
                     "no kicks"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `fastpath hv kick`."""
    parser.add_argument("--frames", type=positive_int, help="frames the guest sends in each mode")
    parser.add_argument("--size", type=positive_int,
                        help=f"frame size in bytes, 60 to {BUFFER_SIZE - NET_HDR_SIZE}")
    parser.add_argument("--burst", type=positive_int_up_to(256),
                        help="frames the driver adds before it decides whether to kick")
    parser.add_argument("--mode", choices=[*KICK_MODES, "all"],
                        help="; ".join(f"{name}: {m.description}"
                                       for name, m in KICK_MODES.items())
                        + "; all: each in turn")


def notify_address(index: int) -> int:
    """The guest-physical address the driver writes to notify virtqueue `index`."""
    return NOTIFY_BASE + NOTIFY_OFF_MULTIPLIER * index


def _numbered_frame(number: int, size: int) -> bytes:
    """Frame `number` of `size` bytes: its number in the destination MAC, a local
    experimental EtherType (0x88B5), and a payload pattern of its own."""
    header = bytes([0x02, 0, 0, 0, number >> 8 & 0xFF, number & 0xFF, 0x02, 0, 0, 0, 0, 1,
                    0x88, 0xB5])
    return header + bytes((number + i) & 0xFF for i in range(size - len(header)))


class _Guest:
    """The vCPU that runs the driver: EPT over the driver's guest memory with the notify page
    as an MMIO trap, a runner whose EPT-misconfiguration handler is the ioeventfd, and the
    driver's ring writes turned into events (split rings only)."""

    def __init__(self):
        self.frontend: NetFrontend | None = None
        self.runner: GuestRunner | None = None
        self.kicks: Counter = Counter()           # eventfd writes, by virtqueue index
        self.exit_addresses: Counter = Counter()  # GUEST_PHYSICAL_ADDRESS of each MMIO exit
        self._ioeventfds = {}
        self._published: list[int] = []
        self._early_kicks: list[int] = []

    def attach(self, frontend: NetFrontend) -> None:
        """Map the driver's memory, register an ioeventfd per virtqueue, and run what the
        driver did while it was set up (posting its first receive buffers)."""
        ram = frontend.memory.size
        host = HostMemory(RAM_HPA + ram, table_area=EPT_TABLES)
        tables = EptTables(host, host.frames)
        for gpa in range(0, ram, PAGE_2M):
            tables.map(gpa, RAM_HPA + gpa, PAGE_2M, "rwx")
        # W+X without R: KVM's MMIO trap (VMX_EPT_MISCONFIG_WX_VALUE). The frame is never
        # reached, so none is given.
        tables.map(NOTIFY_BASE, 0, PAGE_4K, "wx")
        vcpu = ready_vcpu(host.array,
                          CPU_BASED_VM_EXEC_CONTROL=ProcBased.ACTIVATE_SECONDARY_CONTROLS,
                          SECONDARY_VM_EXEC_CONTROL=Secondary.ENABLE_EPT,
                          EPT_POINTER=tables.eptp())
        self.runner = GuestRunner(vcpu, lambda eptp, gpa, access: ept.walk(host, eptp, gpa,
                                                                           access))
        self.runner.on(ExitReason.EPT_MISCONFIG, self._ioeventfd)
        self._ioeventfds = {notify_address(v.index): v for v in frontend.driver.vrings}
        self._published = [0] * len(frontend.driver.queues)
        self.frontend = frontend
        for index in self._early_kicks:
            self._run(kick=index)

    def doorbell(self, index: int) -> None:
        """The driver's notification of virtqueue `index` (NetFrontend's `notify`)."""
        if self.runner is None:
            self._early_kicks.append(index)
        else:
            self._run(kick=index)

    def flush(self) -> None:
        """Run the ring writes the driver made since the last run, with no kick."""
        self._run(kick=None)

    def _run(self, kick: int | None) -> None:
        records = []
        for index, queue in enumerate(self.frontend.driver.queues):
            records += self._ring_writes(index, queue)
        if kick is not None:
            # virtio 1.2 §4.1.5.2: the driver writes the queue's index to its notify address.
            records.append(event(EventKind.WRITE, notify_address(kick), 2, kick))
        if records:
            self.runner.run(events(*records))

    def _ring_writes(self, index: int, queue) -> list[tuple]:
        # The stores that made the buffers published since the last run, read back from the
        # ring itself: for each avail entry the descriptor (and on a transmitq the frame copied
        # into its buffer), the entry, and at the end the avail index.
        memory, rings = self.frontend.memory, queue.addresses
        start, end = self._published[index], queue.avail_idx
        count = (end - start) & 0xFFFF
        records = []
        for k in range(count):
            entry = rings.driver + AVAIL_RING_OFFSET + 2 * ((start + k) % queue.size)
            head = int.from_bytes(memory.read(entry, 2), "little")
            desc_gpa = rings.desc + SPLIT_DESC_DTYPE.itemsize * head
            desc = np.frombuffer(memory.read(desc_gpa, SPLIT_DESC_DTYPE.itemsize),
                                 SPLIT_DESC_DTYPE)[0]
            if index % 2:  # virtio 1.2 §5.1.2: odd virtqueues transmit
                records.append(event(EventKind.WRITE, int(desc["addr"]), 8))
            records.append(event(EventKind.WRITE, desc_gpa, 8, int(desc["addr"])))
            records.append(event(EventKind.WRITE, entry, 2, head))
        if count:
            records.append(event(EventKind.WRITE, rings.driver + AVAIL_IDX_OFFSET, 2, end))
        self._published[index] = end
        return records

    def _ioeventfd(self, vcpu, exit_) -> None:
        # KVM's fast MMIO path: an EPT misconfiguration at an address with an ioeventfd is a
        # kick; the eventfd is written, the write skipped, and the guest resumed.
        gpa = vcpu.vmread(Field.GUEST_PHYSICAL_ADDRESS)
        vring = self._ioeventfds.get(gpa)
        if vring is None:
            raise VmxError(f"an MMIO write to {gpa:#x}, where no ioeventfd is registered")
        self.exit_addresses[gpa] += 1
        vring.kick_backend()
        self.kicks[vring.index] += 1
        skip_instruction(vcpu, exit_)


class _EchoBackend:
    """fastpath's vhost-user net back-end on `path`, served by a thread that sends every
    frame back (as `fastpath vhost-net --fwd io` does) and behaves as `behaviour` (a
    `KickMode.backend`) when the transmitq is empty. `kicks_seen` sums the values it read
    from the transmitq's kick eventfd: the kicks it saw."""

    def __init__(self, path: str, behaviour: str, burst: int):
        self.net = NetBackend(path)
        self.behaviour = behaviour
        self.kicks_seen = 0
        self.wakeups = 0
        self.error: BaseException | None = None
        self._frames = np.zeros((burst, frame_size(0)), dtype=np.uint8)
        self._lengths = np.zeros(burst, dtype=np.uint32)
        self._kick_fd = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fastpath-kick-backend",
                                        daemon=True)

    def start(self) -> None:
        """Serve from now on (the driver has set its rings up)."""
        if not self.net.wait_ready(RECEIVE_TIMEOUT):
            raise RuntimeError("the driver did not start its queue pair")
        self._kick_fd = self.net.kick_fd(0)
        # It never waits for receive buffers on a kick (it retries), so it wants none on the
        # receiveq; a polling one wants none on the transmitq either, from the first burst on.
        with self.net.data_plane():
            transmitq, receiveq = self.net.queues(0)
            receiveq.queue.disable_kicks()
            if self.behaviour != "sleep":
                transmitq.queue.disable_kicks()
        self._thread.start()

    def stop(self) -> None:
        """Stop serving; a kick never read is read now, so `kicks_seen` holds every kick."""
        self._stop.set()
        self._thread.join()
        self._read_kick(0)
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Stop serving if it still does, and close the socket and the device."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.net.close()

    def _serve(self) -> None:
        try:
            last_frame = time.monotonic()
            while not self._stop.is_set():
                if self._echo():
                    last_frame = time.monotonic()
                elif self.behaviour == "poll" or (
                        self.behaviour == "busy"
                        and time.monotonic() - last_frame < BUSY_BACKOFF):
                    time.sleep(POLL_INTERVAL)
                elif self.behaviour == "sleep":
                    self._read_kick(WAIT_SLICE)
                elif self._ask_for_kicks(True):
                    # Busy, about to sleep: frames came before the driver could see the wish,
                    # and no kick comes for them.
                    self._ask_for_kicks(False)
                elif self._read_kick(WAIT_SLICE):
                    # Woken: poll again with kicks off, for another back-off.
                    self._ask_for_kicks(False)
                    last_frame = time.monotonic()
        except BaseException as e:  # handed to the caller by `stop`
            self.error = e

    def _echo(self) -> int:
        n = self.net.rx_burst(0, self._frames, self._lengths)
        sent = 0
        while sent < n and not self._stop.is_set():
            sent += self.net.tx_burst(0, self._frames[sent:], self._lengths[sent:], n - sent)
            if sent < n:
                time.sleep(POLL_INTERVAL)  # the driver has not posted receive buffers yet
        return n

    def _ask_for_kicks(self, on: bool) -> int:
        # On the transmitq; returns, when asking, how many chains came unannounced.
        with self.net.data_plane():
            queue = self.net.queues(0)[0].queue
            if on:
                return queue.enable_kicks()
            queue.disable_kicks()
            return 0

    def _read_kick(self, timeout: float) -> int:
        readable, _, _ = select.select([self._kick_fd], [], [], timeout)
        if not readable:
            return 0
        value = os.eventfd_read(self._kick_fd)
        self.kicks_seen += value
        self.wakeups += 1
        return value


def _run_mode(name: str, frames: int, size: int, burst: int) -> dict:
    mode = KICK_MODES[name]
    sent_frames = [_numbered_frame(k, size) for k in range(frames)]
    guest = _Guest()
    returned, intact, bursts = 0, 0, 0
    with tempfile.TemporaryDirectory(prefix="fastpath-kick-") as directory:
        backend = _EchoBackend(os.path.join(directory, "vhost-net.sock"), mode.backend, burst)
        try:
            with NetFrontend(backend.net.path, mergeable=False, event_idx=mode.event_idx,
                             notify=guest.doorbell) as frontend:
                guest.attach(frontend)
                backend.start()
                for first in range(0, frames, burst):
                    chunk = sent_frames[first:first + burst]
                    bursts += 1
                    if frontend.send(chunk) != len(chunk):
                        raise RuntimeError("the transmitq had no room for a whole burst")
                    guest.flush()
                    got = frontend.receive(len(chunk), RECEIVE_TIMEOUT)
                    guest.flush()
                    returned += len(got)
                    intact += sum(a == b for a, b in zip(got, chunk, strict=False))
                backend.stop()
                received = backend.net.counters()[0].rx_frames
        finally:
            backend.close()
    counters = guest.runner.counters
    cost = CostModel()
    exits = {reason.name: n for reason, n in counters.by_reason().items()}
    tx_kicks, rx_kicks = guest.kicks[1], guest.kicks[0]
    return {
        "mode": name, "description": mode.description, "event_idx": mode.event_idx,
        "backend": mode.backend,
        "frames": frames, "size": size, "burst": burst, "bursts": bursts,
        "frames_received_by_backend": received, "frames_returned": returned,
        "frames_intact": intact,
        "tx_kicks": tx_kicks, "rx_kicks": rx_kicks,
        "kicks_seen_by_backend": backend.kicks_seen, "backend_wakeups": backend.wakeups,
        "exits": exits, "total_exits": counters.total_exits,
        "exit_addresses": {f"{gpa:#x}": n for gpa, n in sorted(guest.exit_addresses.items())},
        "exits_per_frame": counters.total_exits / frames,
        "tx_kicks_per_burst": tx_kicks / bursts,
        "guest_events": counters.progress.retired, "entries": counters.entries,
        "ept_walks": counters.progress.ept_walks,
        "ept_references": counters.progress.ept_references,
        "modelled_cycles": cost.breakdown(counters),
        "modelled_seconds": cost.seconds(counters),
        "modelled_cycles_per_frame": cost.cycles(counters) / frames,
    }


def run(frames: int = 1024, size: int = 64, burst: int = 32, mode: str = "all") -> Report:
    """Send `frames` frames of `size` bytes in bursts of `burst` from a modelled guest's
    virtio-net driver through fastpath's back-end and back, in one mode of `KICK_MODES` or in
    each ("all"), counting kicks as VM exits.

    Figures, per mode under its name: the settings (description, event_idx, backend, frames,
    size, burst, bursts); frames_received_by_backend (its device's count), frames_returned and
    frames_intact (came back byte for byte); tx_kicks and rx_kicks (kick eventfd writes the
    VMM made for the transmitq and the receiveq), kicks_seen_by_backend (the values the
    back-end read from its transmitq kick eventfd) and backend_wakeups; exits (by reason
    name), total_exits, exit_addresses (notify address -> exits), exits_per_frame and
    tx_kicks_per_burst; guest_events, entries, ept_walks, ept_references; modelled_cycles
    (the `CostModel` breakdown), modelled_seconds and modelled_cycles_per_frame.
    """
    if mode != "all" and mode not in KICK_MODES:
        raise ValueError(f"mode is one of {', '.join(KICK_MODES)} or all, not {mode!r}")
    if frames < 1 or not 1 <= burst <= 256:
        raise ValueError("frames must be 1 or more, burst 1 to 256 (the ring's size)")
    if not 60 <= size <= BUFFER_SIZE - NET_HDR_SIZE:
        raise ValueError(f"size must be 60 to {BUFFER_SIZE - NET_HDR_SIZE} bytes")
    names = list(KICK_MODES) if mode == "all" else [mode]
    figures = {name: _run_mode(name, frames, size, burst) for name in names}
    kicks = Table("Kicks as VM exits", [
        "mode", "EVENT_IDX", "back-end", "frames", "bursts", "returned intact", "tx kicks",
        "rx kicks", "back-end saw", "exits", "exits/frame", "modelled cycles/frame"])
    reasons = Table("VM exits by reason", ["mode", "reason", "exits", "exit address"])
    for name, f in figures.items():
        kicks.rows.append([name, "on" if f["event_idx"] else "off", f["backend"], f["frames"],
                           f["bursts"], f["frames_intact"], f["tx_kicks"], f["rx_kicks"],
                           f["kicks_seen_by_backend"], f["total_exits"],
                           round(f["exits_per_frame"], 4),
                           round(f["modelled_cycles_per_frame"], 1)])
        for reason, n in f["exits"].items():
            addresses = ", ".join(f["exit_addresses"]) if reason == "EPT_MISCONFIG" else ""
            reasons.rows.append([name, reason, n, addresses])
    return Report("kick", figures, [kicks, reasons])
