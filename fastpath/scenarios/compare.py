"""The ways a guest does network I/O, side by side: one workload through every path, and
what each costs per frame in VM exits, IOMMU walks, interrupts and modelled time.

What is modelled: one guest workload (`IoWorkload`: --frames frames of --size bytes sent in
bursts of --burst, every one coming back, completions learnt by interrupt or by polling the
rings) run through each path of `PATHS`, each in its variants, on the modelled platform
(`fastpath.hv`: a vCPU with EPT, VM exits with their reasons, and where a device does DMA the
VT-d remapping unit and its IOTLB). Each path counts what its run did; this scenario prices
the counts with the VMX `CostModel` (cycles per VM exit, per VM entry, per exit reason's
handling, per EPT reference) and `IommuCost` (cycles per IOMMU page walk and per IOTLB hit),
every figure settable below, and divides by the frames.

  emulated an e1000-style NIC that the VMM emulates (`fastpath.hv.nic`), its frames carried
           by fastpath ring ports to a far side that returns them. Every register access
           exits: variant mmio, an EPT misconfiguration at the register's address; variant
           port-io, two I/O-instruction exits through the IOADDR/IODATA window. A burst
           costs the transmit tail (TDT) write and the receive tail (RDT) write; with
           --completion interrupt the device's interrupt is injected at entry and the guest's
           handler reads ICR (an exit) and writes the EOI (an MSR-write exit).
  virtio   virtio-net with fastpath's own driver (`NetFrontend`) against the real `fastpath
           vhost-net --fwd io` back-end, a process started for each variant on a vhost-user socket,
           sending every frame back. The driver's ring writes are guest work that EPT maps; a kick
           is an MMIO write that exits (EPT misconfiguration) and that the VMM turns into the
           back-end's kick eventfd write. Variants, by the back-end's --backoff: notify (no
           EVENT_IDX, --backoff 1: the back-end asks for kicks and sleeps as soon as a burst is
           through: a kick per burst, and one on the receiveq for the refilled buffers, less what
           the driver did while the back-end was awake between two sleeps, when it keeps kicks off),
           event-idx (EVENT_IDX, --backoff 0: the back-end turned kicks off before the first burst,
           leaving its avail event at 0, and polls on: that burst kicks, no later one; the busy
           back-end at its limit: a long back-off, which would sleep between some bursts as
           scheduling has it, is not a variant here), poll (no EVENT_IDX, --backoff 0: a
           back-end that polls with notifications off: no kicks). With --completion interrupt
           each burst ends with the back-end's call eventfd, which the VMM turns into an
           interrupt as KVM's irqfd does: an IPI to the vCPU (an external-interrupt exit), the
           vector injected at entry, and the guest's EOI write (an MSR-write exit); with poll
           the guest reads the used ring and nothing exits for completions.
  assigned the same device model as a VF of an SR-IOV PF assigned to the guest through VT-d
           (`fastpath.hv.sriov`, `fastpath.hv.vtd`): EPT maps the VF's registers into the
           guest, so no doorbell exits; its DMA goes through the remapping unit, one page
           walk for each page it first touches and IOTLB hits after. Variants by how its MSI
           reaches the guest: remapped (an external-interrupt exit, the vector injected, the
           EOI exits) or posted (into the posted-interrupt descriptor: no exit at all).
  sriov    --guests guests share one PF, each with a VF of its own assigned as above (its
           own vCPU, EPT, VT-d domain and posted interrupts); what comes back on the PF's
           one uplink is steered to the VFs' pools by VMDq (the VF's MAC picks its pool).
           The guests take turns burst by burst, each running the whole workload. Rows: the
           whole ("N guests": every guest's frames, counters summed over the vCPUs and VFs),
           then each guest.

Tables:
  Per frame          a row per path and variant: frames that came back intact (of the
                     frames sent), VM exits per frame and by reason (EPT_MISCONFIG: MMIO
                     doorbells and kicks; IO_INSTRUCTION: port I/O; EXTERNAL_INTERRUPT:
                     an interrupt for the host, the VMM's IPI or a remapped MSI;
                     MSR_WRITE: an EOI), VM entries per frame, IOMMU page
                     walks per frame and the IOTLB's hit rate ("-": the path does no
                     remapped DMA), interrupts injected or posted into the guest per frame,
                     the modelled cycles and nanoseconds per frame, and the host-side rate of
                     a real back-end where one ran, in millions of frames a second: the
                     frames its own counters received over the seconds it had the guest
                     connected, both from its --json statistics, measured, not modelled.
                     It is bounded by the modelled guest, in Python and far slower than the
                     back-end: the column shows what the back-end did for this guest, not
                     what it can do (`fastpath bench pvp` measures that)
  Modelled cycles per frame by component
                     where each path's time goes: the guest's own cycles, hardware exits
                     and entries, the VMM's handlers, EPT references, IOMMU walks and hits
  Cost model         every figure the prices use, its default and the default's source

The NIC's rings hold 256 descriptors: the first lap of a ring meets a cold IOTLB, every
buffer page's first lookup a walk, and later laps hit; the default of 2048 frames is eight
laps, the steady state with the first lap's walks spread over it.

How to read it: a path that exits per frame pays a round trip and a handler each time, and
those dominate; a path that exits per burst pays them once for many frames, and the column
falls with the burst; a path that does not exit pays in EPT references and, for a device
behind the IOMMU, in walks where a frame lands in a page the IOTLB does not hold. --plot
draws the second table as stacked bars.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from fastpath.hv.vmx import COST_SOURCES, CostModel, ExitReason
from fastpath.hv.vtd import IOMMU_COST_SOURCES, IommuCost
from fastpath.scenarios._costs import (
    add_cost_arguments,
    cost_model,
    model_figures,
    model_rows,
)
from fastpath.scenarios._io_path import COMPLETIONS, COST_COMPONENTS, IoWorkload, PathResult
from fastpath.scenarios._nic_guest import LAYOUT
from fastpath.scenarios._options import positive_int, positive_int_up_to, whole_number
from fastpath.scenarios._path_assigned import run_assigned
from fastpath.scenarios._path_emulated import run_emulated
from fastpath.scenarios._path_sriov import MAX_GUESTS, run_sriov
from fastpath.scenarios._path_virtio import run_virtio
from fastpath.scenarios._report import Report, Table
from fastpath.scenarios._virtio_guest import MAX_FRAME_SIZE, QUEUE_SIZE

__all__ = ["IoPath", "PATHS", "add_arguments", "run"]


@dataclass(frozen=True)
class IoPath:
    """A way of doing guest I/O: its name, the function that runs a workload through it (one
    `PathResult` per variant), and which of the comparison's own options (`guests`) that
    function takes, by keyword."""

    name: str
    run: Callable[..., list[PathResult]]
    options: tuple[str, ...] = ()


# Every path the comparison runs, in the order its tables list them.
PATHS = (
    IoPath("emulated", run_emulated),
    IoPath("virtio", run_virtio),
    IoPath("assigned", run_assigned),
    IoPath("sriov", run_sriov, ("guests",)),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `fastpath hv compare`."""
    workload = parser.add_argument_group("the workload (the same on every path)")
    workload.add_argument("--frames", type=positive_int,
                          help=f"frames the guest sends (the NIC's rings hold "
                          f"{LAYOUT.ring_size} descriptors: the first lap of a ring meets a "
                          "cold IOTLB, later laps show the steady state)")
    workload.add_argument("--size", type=positive_int,
                          help=f"frame size in bytes, 60 to {MAX_FRAME_SIZE}")
    workload.add_argument("--burst", type=positive_int_up_to(QUEUE_SIZE),
                          help="frames the guest sends before it waits for them to come back")
    workload.add_argument("--completion", choices=COMPLETIONS,
                          help="how the guest learns frames came back: interrupt or polling "
                          "the rings")
    workload.add_argument("--guests", type=positive_int_up_to(MAX_GUESTS),
                          help="guests sharing the PF on the SR-IOV path, each running the "
                          "whole workload")
    cost = add_cost_arguments(parser)
    cost.add_argument("--iommu-walk-cycles", type=whole_number,
                      help="cycles of one IOMMU page walk (an IOTLB miss)")
    cost.add_argument("--iotlb-hit-cycles", type=whole_number,
                      help="cycles of a translation the IOTLB holds")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw the modelled cycles per frame by component as stacked "
                        "bars, a bar per path and variant")


def run(frames: int = 2048, size: int = 64, burst: int = 32, completion: str = "interrupt",
        guests: int = 4,
        exit_cycles: int = CostModel.exit_cycles, entry_cycles: int = CostModel.entry_cycles,
        handler_cycles: Sequence[tuple[ExitReason, int]] | None = None,
        default_handler_cycles: int = CostModel.default_handler_cycles,
        ept_reference_cycles: int = CostModel.ept_reference_cycles,
        frequency_ghz: float = CostModel.frequency_hz / 1e9,
        iommu_walk_cycles: int = IommuCost.walk_cycles,
        iotlb_hit_cycles: int = IommuCost.iotlb_hit_cycles, plot: str | None = None) -> Report:
    """Run the workload through every path of PATHS and price it; see the module docstring.

    Figures: workload (its settings and bursts); cost (model, iommu and their sources);
    results, a list with one entry per path and variant: path, variant, frames,
    frames_intact, host_rate_pps, backend_kicks_read (for a real back-end: the kick eventfd
    counts it read as it slept), totals (the path's counters as counted: exits by reason,
    exits, entries, iommu_walks, iotlb_hits, iotlb_lookups, interrupts) and per_frame (each
    total over the frames, iotlb_hit_rate (None without lookups), modelled_cycles,
    modelled_ns and cycles by component).
    """
    costs = cost_model(exit_cycles, entry_cycles, handler_cycles, default_handler_cycles,
                       ept_reference_cycles, frequency_ghz)
    iommu = IommuCost(iommu_walk_cycles, iotlb_hit_cycles)
    workload = IoWorkload(frames, size, burst, completion)
    if burst > QUEUE_SIZE or size > MAX_FRAME_SIZE:
        raise ValueError(f"burst must be 1 to {QUEUE_SIZE} and size 60 to {MAX_FRAME_SIZE}")
    if not 1 <= guests <= MAX_GUESTS:
        raise ValueError(f"guests must be 1 to {MAX_GUESTS}")
    settings = {"guests": guests}
    results = [result for path in PATHS
               for result in path.run(workload, **{name: settings[name]
                                                   for name in path.options})]
    rows = [_figures(result, costs, iommu) for result in results]
    figures = {
        "workload": asdict(workload) | {"bursts": workload.bursts, "guests": guests},
        "cost": {"model": model_figures(costs), "iommu": asdict(iommu),
                 "sources": _sources()},
        "results": rows,
    }
    report = Report("compare", figures, [_per_frame_table(rows), _components_table(rows),
                                         _cost_table(costs, iommu)])
    if plot:
        _plot(rows, plot)
        figures["plot"] = plot
    return report


def _figures(result: PathResult, costs: CostModel, iommu: IommuCost) -> dict:
    frames = result.workload.frames
    counters = result.counters
    exits = {reason.name: n for reason, n in counters.by_reason().items()}
    totals = {"exits_by_reason": exits, "exits": counters.total_exits,
              "entries": counters.entries, "iommu_walks": result.iommu_walks,
              "iotlb_hits": result.iotlb_hits, "iotlb_lookups": result.iotlb_lookups,
              "interrupts": result.interrupts}
    breakdown = result.modelled_breakdown(costs, iommu)
    cycles = sum(breakdown.values())
    per_frame = {
        "exits_by_reason": {name: n / frames for name, n in exits.items()},
        "exits": counters.total_exits / frames,
        "entries": counters.entries / frames,
        "iommu_walks": result.iommu_walks / frames,
        "iotlb_hit_rate": (result.iotlb_hits / result.iotlb_lookups
                           if result.iotlb_lookups else None),
        "interrupts": result.interrupts / frames,
        "modelled_cycles": cycles / frames,
        "modelled_ns": cycles / frames / costs.frequency_hz * 1e9,
        "cycles_by_component": {part: c / frames for part, c in breakdown.items()},
    }
    row = {"path": result.path, "variant": result.variant, "frames": frames,
           "frames_intact": result.frames_intact, "host_rate_pps": result.host_rate_pps}
    if result.backend_kicks_read is not None:
        row["backend_kicks_read"] = result.backend_kicks_read
    return row | {"totals": totals, "per_frame": per_frame}


def _sources() -> dict:
    return dict(COST_SOURCES) | dict(IOMMU_COST_SOURCES)


def _per_frame_table(rows: list[dict]) -> Table:
    table = Table("Per frame", ["path", "variant", "intact", "exits", "exits by reason",
                                "entries", "IOMMU walks", "IOTLB hits", "interrupts",
                                "cycles", "ns", "host Mpps"])
    for row in rows:
        f = row["per_frame"]
        reasons = ", ".join(f"{name} {n:.3g}" for name, n in
                            sorted(f["exits_by_reason"].items(), key=lambda item: -item[1]))
        hit_rate = f["iotlb_hit_rate"]
        rate = row["host_rate_pps"]
        table.rows.append([
            row["path"], row["variant"], f"{row['frames_intact']}/{row['frames']}",
            f"{f['exits']:.3f}", reasons or "-", f"{f['entries']:.3f}",
            f"{f['iommu_walks']:.3f}", "-" if hit_rate is None else f"{hit_rate:.1%}",
            f"{f['interrupts']:.3f}", f"{f['modelled_cycles']:.0f}",
            f"{f['modelled_ns']:.0f}", "-" if rate is None else f"{rate / 1e6:.3f}"])
    return table


def _components_table(rows: list[dict]) -> Table:
    table = Table("Modelled cycles per frame by component",
                  ["path", "variant", *COST_COMPONENTS, "total"])
    for row in rows:
        parts = row["per_frame"]["cycles_by_component"]
        table.rows.append([row["path"], row["variant"],
                           *(f"{parts[part]:.0f}" for part in COST_COMPONENTS),
                           f"{row['per_frame']['modelled_cycles']:.0f}"])
    return table


def _cost_table(costs: CostModel, iommu: IommuCost) -> Table:
    return Table("Cost model", ["parameter", "value", "default", "source of the default"],
                 model_rows(costs) + model_rows(iommu, IOMMU_COST_SOURCES))


def _plot(rows: list[dict], path: str) -> None:
    # Imported here: matplotlib is slow to import and only --plot needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{row['path']}\n{row['variant']}" for row in rows]
    figure, axes = plt.subplots(figsize=(max(6, 1.2 * len(rows) + 2), 5))
    bottom = [0.0] * len(rows)
    for part in COST_COMPONENTS:
        heights = [row["per_frame"]["cycles_by_component"][part] for row in rows]
        axes.bar(labels, heights, bottom=bottom, label=part)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axes.set_ylabel("modelled cycles per frame")
    workload = rows[0]
    axes.set_title(f"fastpath hv compare: {workload['frames']} frames, cycles per frame by "
                   "component")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
