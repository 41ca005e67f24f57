"""Path (b) of the I/O comparison: virtio-net on a real `fastpath vhost-net` back-end process,
with kicks as VM exits, in each kick mode (`KICK_MODES`: no EVENT_IDX with a back-end that
sleeps between bursts, EVENT_IDX with a busy one, and a polling one), completions by interrupt
or by polling as the workload says. No IOMMU is in the way (the back-end reads guest memory
through the vhost-user memory table)."""

from __future__ import annotations

from fastpath.scenarios._io_path import IoWorkload, PathResult
from fastpath.scenarios._virtio_guest import KICK_MODES, run_virtio_mode

__all__ = ["run_virtio"]


def run_virtio(workload: IoWorkload) -> list[PathResult]:
    """One `PathResult` per kick mode, the mode its variant; `interrupts` counts what the
    VMM injected into the guest, `host_rate_pps` the back-end's frames over the time it had
    the guest connected and `backend_kicks_read` the kick eventfd counts it read, by its own
    statistics."""
    results = []
    for mode in KICK_MODES:
        done = run_virtio_mode(mode, workload)
        results.append(PathResult("virtio", mode, workload, done.frames_intact, done.counters,
                                  interrupts=done.counters.progress.injected,
                                  host_rate_pps=done.host_rate_pps,
                                  backend_kicks_read=done.backend_wakes["kicks_read"]))
    return results
