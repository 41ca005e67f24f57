"""The workload driver: runs a vCPU over an event stream, exit by exit, and counts.

`GuestRunner.run(events)` enters the guest (VMLAUNCH with a clear VMCS, else VMRESUME), runs
the events of an `EVENT_DTYPE` array in order (`_vmx_nonroot.step`), and at each VM exit calls
the handler registered for its basic reason, in root operation, then resumes. The handler
sees the vCPU and the `Exit`; it may VMREAD and VMWRITE (change controls, emulate by moving
GUEST_RIP past the instruction with `skip_instruction`, ...). Without a handler, an exit
caused by an instruction other than an EPT violation is emulated as doing nothing (the
instruction is skipped) and any other exit is simply resumed.

The loop is Python, one event at a time: the model is control flow over the VMCS, and
correctness comes first. Where streams grow long and mostly exit on nothing, the seam for a
vectorised fast path is the call of `step` in `run`: a run of events none of whose kinds can
exit under the current controls (no timer, no interrupts, bitmaps that pass them) could be
retired as one block with numpy, summing lengths and cycles.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from fastpath.errors import VmxError
from fastpath.hv._vcpu import Vcpu, VcpuMode
from fastpath.hv._vmcs import Field
from fastpath.hv._vmx_events import EVENT_DTYPE, EventKind
from fastpath.hv._vmx_exits import INTERRUPTION_INFO_VALID, Exit, ExitReason
from fastpath.hv._vmx_nonroot import INSTRUCTION_EXITS, GuestProgress, Translate, retire, step

__all__ = ["Handler", "VmxCounters", "GuestRunner", "skip_instruction", "EXIT_REASON_SLOTS"]

Handler = Callable[[Vcpu, Exit], None]
EXIT_REASON_SLOTS = max(ExitReason) + 1


def skip_instruction(vcpu: Vcpu, exit_: Exit) -> None:
    """Emulate the exiting instruction as done: move GUEST_RIP past it by
    VM_EXIT_INSTRUCTION_LEN (KVM's `kvm_skip_emulated_instruction`)."""
    rip = vcpu.vmread(Field.GUEST_RIP)
    vcpu.vmwrite(Field.GUEST_RIP, rip + vcpu.vmread(Field.VM_EXIT_INSTRUCTION_LEN))


def _default_handler(vcpu: Vcpu, exit_: Exit) -> None:
    if exit_.entry_failure:
        raise VmxError(f"VM entry failed on guest state (qualification {exit_.qualification})")
    if exit_.reason in INSTRUCTION_EXITS and exit_.reason != ExitReason.EPT_VIOLATION:
        skip_instruction(vcpu, exit_)


@dataclass
class VmxCounters:
    """What a runner counted: VM exits per basic exit reason (`exits`, indexed by reason),
    VM entries (each VMLAUNCH/VMRESUME that reached the guest-state checks), failed entries,
    and the guest's own progress (`GuestProgress`)."""

    exits: np.ndarray = field(default_factory=lambda: np.zeros(EXIT_REASON_SLOTS, np.uint64))
    entries: int = 0
    entry_failures: int = 0
    progress: GuestProgress = field(default_factory=GuestProgress)

    @property
    def total_exits(self) -> int:
        """Every VM exit, entry failures included."""
        return int(self.exits.sum())

    def by_reason(self) -> dict[ExitReason, int]:
        """The exit counts that are not zero, by reason."""
        return {ExitReason(r): int(n) for r, n in enumerate(self.exits) if n}


class GuestRunner:
    """Runs a configured vCPU (in root operation with a current VMCS, or already in its
    guest) over event streams; counters accumulate over runs.

    `translate` is the EPT walk for memory events (see `_vmx_nonroot`). `handlers` maps
    basic exit reasons to handlers. An event that exits `max_exits_per_event` times in a
    row with no progress (nothing retired, no guest cycles run) is a handler bug: VmxError.
    """

    def __init__(self, vcpu: Vcpu, translate: Translate | None = None,
                 handlers: Mapping[int, Handler] | None = None, max_exits_per_event: int = 64):
        self.vcpu = vcpu
        self.translate = translate
        self.handlers: dict[int, Handler] = dict(handlers or {})
        self.max_exits_per_event = max_exits_per_event
        self.counters = VmxCounters()

    def on(self, reason: ExitReason, handler: Handler) -> None:
        """Register the handler for one basic exit reason."""
        self.handlers[int(reason)] = handler

    def _handle(self, exit_: Exit) -> None:
        self.counters.exits[exit_.reason] += 1
        self.handlers.get(int(exit_.reason), _default_handler)(self.vcpu, exit_)

    def _enter(self) -> None:
        for _ in range(self.max_exits_per_event):
            vcpu = self.vcpu
            injecting = vcpu.vmcs[Field.VM_ENTRY_INTR_INFO_FIELD] & INTERRUPTION_INFO_VALID
            failure = vcpu.vmresume() if vcpu.vmcs.launched else vcpu.vmlaunch()
            self.counters.entries += 1
            if failure is None:
                self.counters.progress.injected += bool(injecting)
                return
            self.counters.entry_failures += 1
            self._handle(failure)
        raise VmxError(f"VM entry failed {self.max_exits_per_event} times in a row")

    def run(self, events: np.ndarray) -> VmxCounters:
        """Run every event of `events` (an EVENT_DTYPE array); the guest is left running."""
        if events.dtype != EVENT_DTYPE:
            raise ValueError("events must be an EVENT_DTYPE array")
        unknown = np.setdiff1d(events["kind"], np.array(list(EventKind), np.uint8))
        if unknown.size:
            # Checked before the guest runs, so that a bad stream stops nothing half-way.
            raise ValueError(f"unknown event kinds {unknown.tolist()}")
        vcpu, progress = self.vcpu, self.counters.progress
        if vcpu.mode is not VcpuMode.GUEST:
            self._enter()
        index, stuck = 0, 0
        while index < len(events):
            before = (progress.retired, progress.guest_cycles)
            exit_ = step(vcpu, events, index, self.translate, progress)
            if exit_ is None:
                index, stuck = index + 1, 0
                continue
            rip = vcpu.vmcs[Field.GUEST_RIP]
            self._handle(exit_)
            emulated = exit_.reason in INSTRUCTION_EXITS and vcpu.vmcs[Field.GUEST_RIP] != rip
            if emulated or exit_.reason == ExitReason.EXTERNAL_INTERRUPT:
                # The VMM did the instruction, or the interrupt went to the host: retired.
                retire(vcpu, 0, emulated, progress)
                index, stuck = index + 1, 0
            elif before != (progress.retired, progress.guest_cycles):
                stuck = 0
            else:
                stuck += 1
                if stuck >= self.max_exits_per_event:
                    raise VmxError(f"event {index} exited {stuck} times without progress "
                                   f"(last exit {exit_.reason.name})")
            self._enter()
        return self.counters
