"""A modelled guest's virtio-net driver against the real `fastpath vhost-net` back-end, burst
by burst: the one engine behind `fastpath hv kick` and the virtio path of `fastpath hv compare`.

The guest's driver is fastpath's own (`NetFrontend`: split rings in memfd guest memory
shared over a real vhost-user socket) and its back-end is the command `fastpath vhost-net
--fwd io` in a process of its own, which sends every frame back. What the driver does runs on
a modelled vCPU with EPT as an event stream (`VirtioGuest`): its ring writes are guest work
that EPT maps, its kick is an MMIO write that exits (EPT misconfiguration at the queue's
notify address) and that the VMM turns into the kick eventfd write, as KVM's ioeventfd does.
With completion by interrupt, the back-end's call eventfd is KVM's irqfd: each time the VMM
finds it written, the vCPU is sent an IPI (an external-interrupt exit), the VMM injects the
device's vector at the next VM entry, and the guest's handler writes the x2APIC EOI register
(an MSR-write exit, as without APIC virtualization). With completion by polling the guest asks
for no calls and reads the used ring.
"""

from __future__ import annotations

import os
import select
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import fastpath
from fastpath.devices.net import BUFFER_SIZE, NET_HDR_SIZE, NetFrontend
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
from fastpath.testing import VhostNetProcess
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

RECEIVE_TIMEOUT = 10.0
# How often the driver looks at the used index while a burst is out.
USED_POLL_INTERVAL = 20e-6
# The back-end process loads its compiled kernels from Numba's cache before it listens (a
# second or two); on a loaded machine, or with the cache cold, it takes far longer.
BACKEND_STARTUP_TIMEOUT = 120.0


@dataclass(frozen=True)
class KickMode:
    """One way of running the virtio guest: whether the driver asks for
    VIRTIO_RING_F_EVENT_IDX, and the back-end's `--backoff` (0: it busy-polls with kicks off
    for ever; N: after N idle rounds of polling it asks for kicks and sleeps on its kick
    eventfds, then turns kicks off again when it wakes)."""

    event_idx: bool
    backoff: int
    description: str


KICK_MODES = {
    "notify": KickMode(False, 1, "no EVENT_IDX; vhost-net --backoff 1: the back-end asks for "
                       "kicks and sleeps on its kick eventfd as soon as a burst is through: "
                       "a kick per burst, less the bursts sent while it was awake between "
                       "sleeps (it turns kicks off whenever it wakes, its 10 ms timeout and "
                       "receive kicks included)"),
    "event-idx": KickMode(True, 0, "EVENT_IDX; vhost-net --backoff 0: the back-end turned "
                          "kicks off before the first burst, leaving its avail event at 0, "
                          "and polls on: that burst kicks, no later one does"),
    "poll": KickMode(False, 0, "no EVENT_IDX; vhost-net --backoff 0: the back-end busy-polls "
                     "with NO_NOTIFY set: no transmit kicks"),
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


@dataclass
class VirtioRun:
    """What one run of the virtio guest did: the settings, the frames (sent, received by the
    back-end's device, returned, intact), the VMM's kick eventfd writes by virtqueue and the
    MMIO exits by address, the receiveq's call eventfd writes the VMM found (`calls`) and the
    interrupts it made of them, how long each burst took to come back once the guest had sent
    it (`return_waits`, seconds, until the used index showed it all), the seconds the back-end
    process had the guest connected, the vCPU's counters, and what woke the back-end by its
    own count (`backend_wakes`: kicks_read, the sum of the kick eventfd counts it read as it
    slept; sleeps; woken_by_eventfd)."""

    mode: str
    workload: IoWorkload
    bursts: int
    frames_received_by_backend: int
    frames_returned: int
    frames_intact: int
    kicks: Counter
    exit_addresses: Counter
    calls: int
    return_waits: list[float]
    backend_connected_seconds: float
    counters: VmxCounters
    backend_wakes: dict[str, int]

    @property
    def host_rate_pps(self) -> float | None:
        """Frames the back-end received per second it had the guest connected, by its own
        counters and clock, or None if it measured no time. The modelled guest, in Python, is
        far slower than the back-end: this is the rate the guest let it reach, not its
        ceiling."""
        if not self.backend_connected_seconds:
            return None
        return self.frames_received_by_backend / self.backend_connected_seconds

    @property
    def median_return_wait(self) -> float:
        """The median of `return_waits`: how long a sent burst took to come back."""
        return statistics.median(self.return_waits)


def run_virtio_mode(mode: str, workload: IoWorkload) -> VirtioRun:
    """Run `workload` in kick mode `mode` (a name of KICK_MODES) against a `fastpath vhost-net
    --fwd io` process started for the run: each burst is sent, then awaited by the workload's
    completion (an interrupt, then polling; or polling alone) until it came back."""
    kick_mode = KICK_MODES[mode]
    if workload.burst > QUEUE_SIZE or workload.size > MAX_FRAME_SIZE:
        raise ValueError(f"virtio takes bursts up to {QUEUE_SIZE} (the ring) and frames up to "
                         f"{MAX_FRAME_SIZE} bytes (a receive buffer)")
    by_interrupt = workload.completion == "interrupt"
    sent_frames = [numbered_frame(k, workload.size) for k in range(workload.frames)]
    guest = VirtioGuest()
    returned, intact, bursts, calls, waits = 0, 0, 0, 0, []
    with tempfile.TemporaryDirectory(prefix="fastpath-virtio-") as directory, \
            _start_backend(os.path.join(directory, "vhost-net.sock"), kick_mode) as backend:
        with NetFrontend(backend.path, queue_size=QUEUE_SIZE, mergeable=False,
                         event_idx=kick_mode.event_idx, notify=guest.doorbell) as frontend:
            guest.attach(frontend)
            # The driver reclaims sent buffers as it sends (no transmit interrupts) and,
            # unless it waits for interrupts, asks for no receive ones either.
            frontend.tx.disable_calls()
            frontend.rx.disable_calls()
            call_fd = frontend.rx_vring.call
            used_before = 0
            for first in range(0, workload.frames, workload.burst):
                chunk = sent_frames[first:first + workload.burst]
                bursts += 1
                if by_interrupt:
                    # NAPI's re-arm: every earlier frame is in, so none can be waiting.
                    frontend.rx.enable_calls()
                if frontend.send(chunk) != len(chunk):
                    raise RuntimeError("the transmitq had no room for a whole burst")
                guest.flush()
                sent_at = time.monotonic()
                if by_interrupt:
                    calls += _await_call(call_fd)
                    guest.interrupt()
                    # NAPI: the handler turns calls off and polls the rest in.
                    frontend.rx.disable_calls()
                guest.read_used_index(RECEIVEQ)
                _await_used(frontend, used_before + len(chunk))
                waits.append(time.monotonic() - sent_at)
                got = frontend.receive(len(chunk), RECEIVE_TIMEOUT)
                used_before += len(got)
                guest.flush()
                returned += len(got)
                intact += sum(a == b for a, b in zip(got, chunk, strict=False))
            # Calls made after the guest's last read were coalesced into no interrupt.
            calls += _read_eventfd(call_fd)
        # The guest has gone: the back-end's totals for its connection are final.
        statistics = backend.stop()
    (connection,) = statistics["connections"]
    (pair,) = connection["queue_pairs"]
    wakes = {name: statistics[name] for name in ("kicks_read", "sleeps", "woken_by_eventfd")}
    return VirtioRun(mode, workload, bursts, pair["rx_frames"], returned, intact, guest.kicks,
                     guest.exit_addresses, calls, waits, connection["seconds"],
                     guest.runner.counters, wakes)


def _start_backend(path: str, mode: KickMode) -> VhostNetProcess:
    # The fastpath this process runs, and no other, in a process of its own; not pinned, so
    # that it shares the machine's cores with the guest as the scheduler sees fit.
    checkout = Path(fastpath.__file__).resolve().parent.parent
    return VhostNetProcess(path, fwd="io", backoff=mode.backoff, cpu=None,
                           extra=["--stats-period", "0"],
                           startup_timeout=BACKEND_STARTUP_TIMEOUT, source=checkout)


def _await_used(frontend: NetFrontend, used_index: int) -> None:
    # Until the receiveq's used index reaches `used_index`: the burst is back, before the
    # driver spends any time taking it in.
    used = frontend.rx.addresses.device + USED_IDX_OFFSET
    deadline = time.monotonic() + RECEIVE_TIMEOUT
    while int.from_bytes(frontend.memory.read(used, 2), "little") != used_index & 0xFFFF:
        if time.monotonic() > deadline:
            raise RuntimeError(f"a burst did not come back within {RECEIVE_TIMEOUT} s")
        time.sleep(USED_POLL_INTERVAL)


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
