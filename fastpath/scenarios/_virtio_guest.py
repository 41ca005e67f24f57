"""A modelled guest's virtio-net driver against fastpath's real back-end, burst by burst: the
one engine behind `fastpath hv kick` and the virtio path of `fastpath hv compare`.

The guest's driver is fastpath's own (`NetFrontend`: split rings in memfd guest memory
shared over a real vhost-user socket) and its back-end is fastpath's (`NetBackend`: the
protocol engine, the virtio-net device and its compiled queues), served by a thread that sends
every frame back. What the driver does runs on a modelled vCPU with EPT as an event stream
(`VirtioGuest`): its ring writes are guest work that EPT maps, its kick is an MMIO write that
exits (EPT misconfiguration at the queue's notify address) and that the VMM turns into the
kick eventfd write, as KVM's ioeventfd does. With completion by interrupt, the back-end's
call eventfd is KVM's irqfd: each time the VMM finds it written, the vCPU is sent an IPI (an
external-interrupt exit), the VMM injects the device's vector at the next VM entry, and the
guest's handler writes the x2APIC EOI register (an MSR-write exit, as without APIC
virtualization). With completion by polling the guest asks for no calls and reads the used
ring.
"""

from __future__ import annotations

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
    X2APIC_EOI_MSR,
    EventKind,
    ExitControls,
    ExitReason,
    Field,
    GuestRunner,
    InterruptionType,
    PinBased,
    ProcBased,
    Secondary,
    VmxCounters,
    event,
    events,
    interruption_info,
    ready_vcpu,
    skip_instruction,
)
from fastpath.scenarios._io_path import IoWorkload
from fastpath.vring import SPLIT_DESC_DTYPE

__all__ = ["KickMode", "KICK_MODES", "MAX_FRAME_SIZE", "QUEUE_SIZE", "TRANSMITQ", "RECEIVEQ",
           "notify_address", "numbered_frame", "VirtioRun", "run_virtio_mode"]

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

# virtio 1.2 §2.7.6: the avail ring is le16 flags, le16 idx, then le16 ring[queue size];
# §2.7.8: the used ring is le16 flags, le16 idx, then the elements.
AVAIL_IDX_OFFSET, AVAIL_RING_OFFSET = 2, 4
USED_IDX_OFFSET = 2

QUEUE_SIZE = 256
MAX_FRAME_SIZE = BUFFER_SIZE - NET_HDR_SIZE
TRANSMITQ, RECEIVEQ = 1, 0  # virtio 1.2 §5.1.2: virtqueue 2N receives, 2N+1 transmits

# The IPI that tells a vCPU in guest mode that the VMM has an interrupt for it (Linux's
# RESCHEDULE_VECTOR, which kvm_vcpu_kick sends), and the vector the guest's MSI-X table gives
# the receiveq (the first vector Linux hands a device).
KICK_IPI_VECTOR = 0xFD
RECEIVEQ_VECTOR = 0x41

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
    """One way of running the virtio guest: whether the driver asks for
    VIRTIO_RING_F_EVENT_IDX, and what the back-end does when its transmitq is empty ("sleep":
    waits on its kick eventfd with kicks always asked for; "busy": polls with kicks off for
    BUSY_BACKOFF after its last frame, then asks for kicks and sleeps; "poll": polls with
    kicks off for ever)."""

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


def notify_address(index: int) -> int:
    """The guest-physical address the driver writes to notify virtqueue `index`."""
    return NOTIFY_BASE + NOTIFY_OFF_MULTIPLIER * index


def numbered_frame(number: int, size: int) -> bytes:
    """Frame `number` of `size` bytes: its number in the destination MAC, a local
    experimental EtherType (0x88B5), and a payload pattern of its own."""
    header = bytes([0x02, 0, 0, 0, number >> 8 & 0xFF, number & 0xFF, 0x02, 0, 0, 0, 0, 1,
                    0x88, 0xB5])
    return header + bytes((number + i) & 0xFF for i in range(size - len(header)))


class VirtioGuest:
    """The vCPU that runs the driver: EPT over the driver's guest memory with the notify page
    as an MMIO trap, a runner whose EPT-misconfiguration handler is the ioeventfd and whose
    external-interrupt handler injects the device's vector, and the driver's ring writes
    turned into events (split rings only)."""

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
                          PIN_BASED_VM_EXEC_CONTROL=PinBased.EXTERNAL_INTERRUPT_EXITING,
                          CPU_BASED_VM_EXEC_CONTROL=ProcBased.ACTIVATE_SECONDARY_CONTROLS,
                          SECONDARY_VM_EXEC_CONTROL=Secondary.ENABLE_EPT,
                          VM_EXIT_CONTROLS=ExitControls.HOST_ADDRESS_SPACE_SIZE
                          | ExitControls.ACK_INTERRUPT_ON_EXIT,
                          EPT_POINTER=tables.eptp())
        self.runner = GuestRunner(vcpu, lambda eptp, gpa, access: ept.walk(host, eptp, gpa,
                                                                           access))
        self.runner.on(ExitReason.EPT_MISCONFIG, self._ioeventfd)
        self.runner.on(ExitReason.EXTERNAL_INTERRUPT, self._inject_receiveq_interrupt)
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

    def interrupt(self) -> None:
        """The receiveq's interrupt reaches the running guest: the VMM's IPI exits, the
        vector is injected at entry, and the guest's handler ends with the EOI write."""
        self.runner.run(events(event(EventKind.EXTINT, KICK_IPI_VECTOR),
                               event(EventKind.WRMSR, X2APIC_EOI_MSR, value=0)))

    def read_used_index(self, index: int) -> None:
        """The driver reads virtqueue `index`'s used index, as it does to find completions."""
        used = self.frontend.driver.queues[index].addresses.device + USED_IDX_OFFSET
        self.runner.run(events(event(EventKind.READ, used, 2)))

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

    def _inject_receiveq_interrupt(self, vcpu, exit_) -> None:
        # The IPI was the host's; what it announced is the device's interrupt, injected at
        # the next VM entry (SDM Vol. 3C §27.6 event injection).
        vcpu.vmwrite(Field.VM_ENTRY_INTR_INFO_FIELD,
                     interruption_info(RECEIVEQ_VECTOR, InterruptionType.EXTERNAL_INTERRUPT))


class _EchoBackend:
    """fastpath's vhost-user net back-end on `path`, served by a thread that sends every
    frame back (as `fastpath vhost-net --fwd io` does) and behaves as `behaviour` (a
    `KickMode.backend`) when the transmitq is empty. `kicks_seen` sums the values it read
    from the transmitq's kick eventfd: the kicks it saw; `busy_seconds` is the CPU time its
    thread spent in the bursts that moved frames."""

    def __init__(self, path: str, behaviour: str, burst: int):
        self.net = NetBackend(path)
        self.behaviour = behaviour
        self.kicks_seen = 0
        self.wakeups = 0
        self.busy_seconds = 0.0
        self.error: BaseException | None = None
        self._frames = np.zeros((burst, frame_size(0)), dtype=np.uint8)
        self._lengths = np.zeros(burst, dtype=np.uint32)
        self._kick_fd = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fastpath-virtio-backend",
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
        # The thread's CPU time, not the wall clock's: in this process the modelled guest
        # holds the GIL for milliseconds at a time, and a burst's wall time would count the
        # back-end's waits for it.
        start = time.thread_time()
        n = self.net.rx_burst(0, self._frames, self._lengths)
        sent = 0
        while sent < n and not self._stop.is_set():
            sent += self.net.tx_burst(0, self._frames[sent:], self._lengths[sent:], n - sent)
            if sent < n:
                time.sleep(POLL_INTERVAL)  # the driver has not posted receive buffers yet
        if n:
            self.busy_seconds += time.thread_time() - start
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


@dataclass
class VirtioRun:
    """What one run of the virtio guest did: the settings, the frames (sent, received by the
    back-end's device, returned, intact), the VMM's kick eventfd writes by virtqueue and the
    MMIO exits by address, what the back-end read from its transmitq kick eventfd and how
    often it woke, the receiveq's call eventfd writes the VMM found (`calls`) and the
    interrupts it made of them, the back-end's busy time, and the vCPU's counters."""

    mode: str
    workload: IoWorkload
    bursts: int
    frames_received_by_backend: int
    frames_returned: int
    frames_intact: int
    kicks: Counter
    exit_addresses: Counter
    kicks_seen_by_backend: int
    backend_wakeups: int
    calls: int
    backend_busy_seconds: float
    counters: VmxCounters

    @property
    def host_rate_pps(self) -> float | None:
        """Frames the back-end's device received per second of the CPU time its thread spent
        moving them (what it would sustain on a core of its own), or None if it spent none."""
        if not self.backend_busy_seconds:
            return None
        return self.frames_received_by_backend / self.backend_busy_seconds


def run_virtio_mode(mode: str, workload: IoWorkload) -> VirtioRun:
    """Run `workload` in kick mode `mode` (a name of KICK_MODES): each burst is sent, then
    awaited by the workload's completion (an interrupt, then polling; or polling alone) until
    it came back."""
    kick_mode = KICK_MODES[mode]
    if workload.burst > QUEUE_SIZE or workload.size > MAX_FRAME_SIZE:
        raise ValueError(f"virtio takes bursts up to {QUEUE_SIZE} (the ring) and frames up to "
                         f"{MAX_FRAME_SIZE} bytes (a receive buffer)")
    by_interrupt = workload.completion == "interrupt"
    sent_frames = [numbered_frame(k, workload.size) for k in range(workload.frames)]
    guest = VirtioGuest()
    returned, intact, bursts, calls = 0, 0, 0, 0
    with tempfile.TemporaryDirectory(prefix="fastpath-virtio-") as directory:
        backend = _EchoBackend(os.path.join(directory, "vhost-net.sock"), kick_mode.backend,
                               workload.burst)
        try:
            with NetFrontend(backend.net.path, queue_size=QUEUE_SIZE, mergeable=False,
                             event_idx=kick_mode.event_idx, notify=guest.doorbell) as frontend:
                guest.attach(frontend)
                # The driver reclaims sent buffers as it sends (no transmit interrupts) and,
                # unless it waits for interrupts, asks for no receive ones either.
                frontend.tx.disable_calls()
                frontend.rx.disable_calls()
                call_fd = frontend.rx_vring.call
                backend.start()
                for first in range(0, workload.frames, workload.burst):
                    chunk = sent_frames[first:first + workload.burst]
                    bursts += 1
                    if by_interrupt:
                        # NAPI's re-arm: every earlier frame is in, so none can be waiting.
                        frontend.rx.enable_calls()
                    if frontend.send(chunk) != len(chunk):
                        raise RuntimeError("the transmitq had no room for a whole burst")
                    guest.flush()
                    if by_interrupt:
                        calls += _await_call(call_fd)
                        guest.interrupt()
                        # NAPI: the handler turns calls off and polls the rest in.
                        frontend.rx.disable_calls()
                    guest.read_used_index(RECEIVEQ)
                    got = frontend.receive(len(chunk), RECEIVE_TIMEOUT)
                    guest.flush()
                    returned += len(got)
                    intact += sum(a == b for a, b in zip(got, chunk, strict=False))
                backend.stop()
                # Calls made after the guest's last read were coalesced into no interrupt.
                calls += _read_eventfd(call_fd)
                received = backend.net.counters()[0].rx_frames
        finally:
            backend.close()
    return VirtioRun(mode, workload, bursts, received, returned, intact, guest.kicks,
                     guest.exit_addresses, backend.kicks_seen, backend.wakeups, calls,
                     backend.busy_seconds, guest.runner.counters)


def _await_call(call_fd: int) -> int:
    # The VMM's irqfd: it wakes when the back-end writes the call eventfd and reads the count
    # (several writes before one read are one interrupt, as a vector pending in the IRR is).
    readable, _, _ = select.select([call_fd], [], [], RECEIVE_TIMEOUT)
    if not readable:
        raise RuntimeError(f"no receiveq interrupt within {RECEIVE_TIMEOUT} s")
    return os.eventfd_read(call_fd)


def _read_eventfd(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:  # non-blocking and nothing written
        return 0
