"""A cost model that turns a runner's counts into modelled cycles and time.

modelled cycles = guest cycles (RUN events)
                + entries × entry_cycles + exits × exit_cycles   (the hardware transitions)
                + Σ over reasons of exits[reason] × handler cycles[reason]   (the VMM's work)
                + EPT references × ept_reference_cycles

Every figure is a parameter; the defaults are these, and where they come from:

* `exit_cycles` 700 and `entry_cycles` 500: a hardware VM exit plus VM entry of about 1,200
  cycles. Intel describes a single transition as costing "hundreds or thousands of cycles"
  (Intel Developer Zone, "Virtualization and Performance: Understanding VM Exits", 2009); a
  KVM commit that keeps the preemption timer armed reports that a VM entry whose consistency
  checks are not cached "consumes several hundred cycles" more and that toggling a pin-based
  control "more than doubles the latency of the next VM-Entry" (Linux commit 804939ea200d,
  2019), which puts an ordinary entry at a few hundred cycles; a VMRUN round trip measured
  in a KVM_RUN loop took about 1,350 cycles (LKML, December 2020,
  lkml.iu.edu/hypermail/linux/kernel/2012.2/00527.html; an AMD host, the nearest published
  round-trip figure found). Calibrate against a measurement where it matters.
* `handler_cycles`: KVM's time out of the guest per exit, by reason, from the published
  output of SystemTap's `kvm_service_time.stp` example (sourceware.org, systemtap
  examples/virtualization): external interrupt 1.39 µs, interrupt window 1.98 µs, I/O
  instruction 3.28 µs, WRMSR 0.72 µs, EPT misconfiguration 1.91 µs on average; converted at
  the default 3 GHz, less the 1,200-cycle round trip counted above. Reasons not listed
  cost `default_handler_cycles`.
* `ept_reference_cycles` 5: each EPT paging-structure read of a walk hitting the L1 data
  cache, 4-5 cycles load-to-use on recent Intel cores (Intel 64 and IA-32 Architectures
  Optimization Reference Manual, Skylake microarchitecture, L1 data cache latency).
* `frequency_hz` 3 GHz: an assumed core clock, to turn cycles into seconds.

`COST_SOURCES` names each default's source in a line, for reports that print the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fastpath.hv._vmx_exits import ExitReason
from fastpath.hv._vmx_workload import EXIT_REASON_SLOTS, VmxCounters

__all__ = ["CostModel", "DEFAULT_HANDLER_CYCLES", "COST_SOURCES"]

DEFAULT_HANDLER_CYCLES: Mapping[ExitReason, int] = {
    ExitReason.EXTERNAL_INTERRUPT: 2970,  # 1.39 µs × 3 GHz - 1,200
    ExitReason.INTERRUPT_WINDOW: 4740,  # 1.98 µs
    ExitReason.IO_INSTRUCTION: 8640,  # 3.28 µs
    ExitReason.MSR_WRITE: 960,  # 0.72 µs
    ExitReason.EPT_MISCONFIG: 4530,  # 1.91 µs
}

COST_SOURCES: Mapping[str, str] = {
    "exit_cycles": "Intel 'Understanding VM Exits' (2009); Linux 804939ea200d; LKML 2020",
    "entry_cycles": "as exit_cycles: a round trip of about 1,200 cycles, 700 + 500",
    "handler_cycles": "SystemTap kvm_service_time.stp output, less the round trip",
    "default_handler_cycles": "reasons without a published figure add nothing",
    "ept_reference_cycles": "Intel Optimization Manual: Skylake L1D load-to-use",
    "frequency_hz": "an assumed 3 GHz core clock",
}


@dataclass(frozen=True)
class CostModel:
    """Cycles per VM exit, per VM entry, per exit reason's handling and per EPT reference,
    and the clock that turns cycles into time (defaults and sources: module docstring)."""

    exit_cycles: int = 700
    entry_cycles: int = 500
    handler_cycles: Mapping[ExitReason, int] = field(
        default_factory=lambda: dict(DEFAULT_HANDLER_CYCLES))
    default_handler_cycles: int = 0
    ept_reference_cycles: int = 5
    frequency_hz: float = 3.0e9

    def handler_vector(self) -> np.ndarray:
        """Handler cycles indexed by basic exit reason."""
        vector = np.full(EXIT_REASON_SLOTS, self.default_handler_cycles, dtype=np.float64)
        for reason, cycles in self.handler_cycles.items():
            vector[int(reason)] = cycles
        return vector

    def breakdown(self, counters: VmxCounters) -> dict[str, float]:
        """Modelled cycles by component: guest, entries, exits, handlers, EPT walks."""
        progress = counters.progress
        return {
            "guest": float(progress.guest_cycles),
            "entries": float(counters.entries * self.entry_cycles),
            "exits": float(counters.total_exits * self.exit_cycles),
            "handlers": float(counters.exits.astype(np.float64) @ self.handler_vector()),
            "ept": float(progress.ept_references * self.ept_reference_cycles),
        }

    def cycles(self, counters: VmxCounters) -> float:
        """All modelled cycles of a run."""
        return sum(self.breakdown(counters).values())

    def seconds(self, counters: VmxCounters) -> float:
        """The modelled time of a run."""
        return self.cycles(counters) / self.frequency_hz
