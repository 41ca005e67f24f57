"""A guest's virtio-net kicks as VM exits that reach a running back-end: exits per frame with
notifications on, with EVENT_IDX, and with a polling back-end.

What is modelled: the guest's driver is fastpath's own virtio-net driver (`NetFrontend`: split
rings in memfd guest memory shared over a real vhost-user socket) and its back-end is the
command `fastpath vhost-net --fwd io`, started in a process of its own for each mode, which
sends every frame back. What the driver does runs on a modelled vCPU
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
back-end that has finished the one before. The modes (--mode) differ in EVENT_IDX and in the
back-end's --backoff, which decides whether it sleeps between bursts (asking for kicks) or
polls on (asking for none). The back-end counts what it read from its kick eventfds as it
slept (its --json statistics' kicks_read): that the kicks reach it is its own count, set
beside the VMM's eventfd writes.

Tables:
  Kicks as VM exits   per mode: frames and bursts, frames returned intact, the VMM's kick
                      eventfd writes for the transmitq and the receiveq (a sleeping back-end
                      asks for the receiveq's too, to learn of refilled buffers), what the
                      back-end read from those kick eventfds, the median time a burst took to
                      come back, all exits, exits per frame, and the cost model's cycles per
                      frame
  VM exits by reason  per mode: exits by basic reason and the addresses they exited at
"""
from __future__ import annotations

import argparse

from fastpath.hv.vmx import CostModel
from fastpath.scenarios._io_path import IoWorkload
from fastpath.scenarios._options import positive_int, positive_int_up_to
from fastpath.scenarios._report import Report, Table
from fastpath.scenarios._virtio_guest import (
    KICK_MODES,
    MAX_FRAME_SIZE,
    QUEUE_SIZE,
    RECEIVEQ,
    TRANSMITQ,
    KickMode,
    notify_address,
    run_virtio_mode,
)

__all__ = ["KickMode", "KICK_MODES", "notify_address", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `fastpath hv kick`."""
    parser.add_argument("--frames", type=positive_int, help="frames the guest sends in each mode")
    parser.add_argument("--size", type=positive_int,
                        help=f"frame size in bytes, 60 to {MAX_FRAME_SIZE}")
    parser.add_argument("--burst", type=positive_int_up_to(QUEUE_SIZE),
                        help="frames the driver adds before it decides whether to kick")
    parser.add_argument("--mode", choices=[*KICK_MODES, "all"],
                        help="; ".join(f"{name}: {m.description}"
                                       for name, m in KICK_MODES.items())
                        + "; all: each in turn")


def _run_mode(name: str, frames: int, size: int, burst: int) -> dict:
    mode = KICK_MODES[name]
    # The guest learns of what came back by reading the used ring: only kicks exit.
    done = run_virtio_mode(name, IoWorkload(frames, size, burst, completion="poll"))
    counters = done.counters
    cost = CostModel()
    exits = {reason.name: n for reason, n in counters.by_reason().items()}
    tx_kicks, rx_kicks, bursts = done.kicks[TRANSMITQ], done.kicks[RECEIVEQ], done.bursts
    return {
        "mode": name, "description": mode.description, "event_idx": mode.event_idx,
        "backoff": mode.backoff,
        "frames": frames, "size": size, "burst": burst, "bursts": bursts,
        "frames_received_by_backend": done.frames_received_by_backend,
        "frames_returned": done.frames_returned, "frames_intact": done.frames_intact,
        "tx_kicks": tx_kicks, "rx_kicks": rx_kicks,
        "backend_kicks_read": done.backend_wakes["kicks_read"],
        "backend_sleeps": done.backend_wakes["sleeps"],
        "backend_woken_by_eventfd": done.backend_wakes["woken_by_eventfd"],
        "median_return_seconds": done.median_return_wait,
        "exits": exits, "total_exits": counters.total_exits,
        "exit_addresses": {f"{gpa:#x}": n for gpa, n in sorted(done.exit_addresses.items())},
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

    Figures, per mode under its name: the settings (description, event_idx, backoff (the
    back-end's --backoff), frames, size, burst, bursts); frames_received_by_backend (its
    device's count), frames_returned and frames_intact (came back byte for byte); tx_kicks and
    rx_kicks (kick eventfd writes the VMM made for the transmitq and the receiveq);
    backend_kicks_read (the sum of the counts the back-end read from its kick eventfds as it
    slept, by its own count), backend_sleeps and backend_woken_by_eventfd (its sleeps, and
    those a kick ended rather than its timeout);
    median_return_seconds (from a burst sent to its last frame in the used ring); exits (by reason
    name), total_exits, exit_addresses (notify address -> exits), exits_per_frame and
    tx_kicks_per_burst; guest_events, entries, ept_walks, ept_references; modelled_cycles
    (the `CostModel` breakdown), modelled_seconds and modelled_cycles_per_frame.
    """
    if mode != "all" and mode not in KICK_MODES:
        raise ValueError(f"mode is one of {', '.join(KICK_MODES)} or all, not {mode!r}")
    if frames < 1 or not 1 <= burst <= QUEUE_SIZE:
        raise ValueError(f"frames must be 1 or more, burst 1 to {QUEUE_SIZE} (the ring's size)")
    if not 60 <= size <= MAX_FRAME_SIZE:
        raise ValueError(f"size must be 60 to {MAX_FRAME_SIZE} bytes")
    names = list(KICK_MODES) if mode == "all" else [mode]
    figures = {name: _run_mode(name, frames, size, burst) for name in names}
    kicks = Table("Kicks as VM exits", [
        "mode", "EVENT_IDX", "--backoff", "frames", "bursts", "returned intact", "tx kicks",
        "rx kicks", "kicks read", "back in (median ms)", "exits", "exits/frame",
        "modelled cycles/frame"])
    reasons = Table("VM exits by reason", ["mode", "reason", "exits", "exit address"])
    for name, f in figures.items():
        kicks.rows.append([name, "on" if f["event_idx"] else "off", f["backoff"], f["frames"],
                           f["bursts"], f["frames_intact"], f["tx_kicks"], f["rx_kicks"],
                           f["backend_kicks_read"],
                           round(f["median_return_seconds"] * 1e3, 3), f["total_exits"],
                           round(f["exits_per_frame"], 4),
                           round(f["modelled_cycles_per_frame"], 1)])
        for reason, n in f["exits"].items():
            addresses = ", ".join(f["exit_addresses"]) if reason == "EPT_MISCONFIG" else ""
            reasons.rows.append([name, reason, n, addresses])
    return Report("kick", figures, [kicks, reasons])
