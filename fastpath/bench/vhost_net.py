"""`fastpath bench vhost-net`: frames per second a vhost-user net back-end moves when DPDK
testpmd's virtio-user front-end is the traffic, so that the back-end, not the traffic, is the
bottleneck. Three directions:

* rx: testpmd txonly into `fastpath vhost-net --fwd drop` (DPDK's vhost PMD: rxonly). The
  back-end dequeues every frame, copies it out of the guest's buffers and frees it. The rate is
  what the front-end sent per second; every frame it sent must have been received.
* loop: testpmd flowgen into `fastpath vhost-net --fwd io` (DPDK's vhost PMD: io). The
  back-end dequeues every frame and enqueues it into the front-end's receive buffers; flowgen
  sends as fast as the ring takes frames and frees what comes back. The rate is what came
  back per second, so it holds the back-end's enqueue as well as its dequeue.
* tx: `fastpath vhost-net --fwd txonly` into testpmd rxonly (DPDK's vhost PMD: txonly). The
  back-end enqueues a frame of the size into every receive buffer the front-end posts. The rate
  is what the front-end received per second; it must have received every frame the back-end
  delivered but those still in its ring when it stopped.

Each direction runs over a split ring (or, asked, a packed one: virtio-user packed_vq=1), with
mergeable receive buffers (or, asked, without: mrg_rxbuf=0).

The front-end runs on one CPU and the back-end on the other. Every half second the run reads
the front-end's counter (testpmd's telemetry) and the CPU time each side's process has had
(the sum of its threads' run time in /proc). Two figures come of it, each the best second of
the samples (the host moves the two virtual CPUs closer and further apart every few seconds):
Mpps, frames per second of wall time, and Mpps running, frames per second in which both sides
were on their CPUs. Frames move only while both run, and on this shared machine other
processes take either CPU for whole seconds, so the time both ran is estimated as the second
times the back-end's share of its CPU times the front-end's share of its own (the two CPUs are
taken independently of each other). Mpps running is what is compared: other processes on the
CPUs lower Mpps and leave it alone, while a back-end that spends more CPU per frame (in any of
its threads, since all of them count) lowers both.
fastpath is compared with DPDK's vhost PMD, or with `--baseline` with the back-end of another
checkout, in pairs of runs back to back whose order alternates; a measurement's figure is the
median ratio of its pairs (`_judge`).

Each fastpath back-end runs from its checkout alone (`source_python`) and the run records which
checkout it loaded, read from the process's memory map, and what the process said it ran; a run
of the wrong checkout fails the benchmark.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import fastpath
from fastpath.bench._judge import judge
from fastpath.bench._placement import (
    Placement,
    describe_same_placement,
    line_transfer_ns,
    same_placement,
)
from fastpath.bench._report import environment, print_table, write_json
from fastpath.testing import PeerError, Testpmd, VhostNetProcess, received_frames, sent_frames

DIRECTIONS = {
    "rx": ("txonly", "drop", "rxonly"),    # front-end mode, fastpath's, DPDK's
    "tx": ("rxonly", "txonly", "txonly"),
    "loop": ("flowgen", "io", "io"),
}
RINGS = ("split", "packed")
MERGEABLE = {"on": True, "off": False}
QUEUE_SIZE = 1024   # the front-end's ring entries
WARM_UP_SECONDS = 1.0
SAMPLE_SECONDS = 0.5
DRAIN_SECONDS = 10.0
MIN_CPU_SHARE = 0.25
FRONT_END_CPU = 1
BACK_END_CPU = 0


class WrongCheckout(RuntimeError):
    """A back-end process ran another checkout's fastpath than the one it was started for."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    parser.add_argument("--sizes", default="64,1518",
                        help="frame sizes in bytes, comma-separated")
    parser.add_argument("--directions", default="rx,loop",
                        help="rx: testpmd txonly into vhost-net --fwd drop; tx: vhost-net "
                        "--fwd txonly into testpmd rxonly; loop: testpmd flowgen into vhost-net "
                        "--fwd io and back; comma-separated")
    parser.add_argument("--rings", default="split",
                        help="split, packed (virtio-user packed_vq=1) or both, comma-separated")
    parser.add_argument("--mergeable", default="on",
                        help="mergeable receive buffers (virtio-user mrg_rxbuf=1): on, off or "
                        "both, comma-separated")
    parser.add_argument("--pairs", type=int, default=3,
                        help="pairs of runs (fastpath and the other back-end, back to back, "
                        "order alternating) per size and direction; the median ratio counts")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="length of each run after a 1 s warm-up")
    parser.add_argument("--burst", type=int, default=32, help="fastpath's frames per receive")
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="compare with the back-end of another fastpath checkout (its core "
                        "built in place) instead of DPDK's vhost PMD")
    parser.add_argument("--tree", metavar="CHECKOUT",
                        help="the checkout measured as fastpath (default: the one this command "
                        "runs from)")
    parser.add_argument("--fail-below", type=float, metavar="RATIO",
                        help="exit 1 if the median ratio fastpath/baseline (or fastpath/DPDK) "
                        "of any size and direction is below RATIO")
    parser.add_argument("--json", metavar="FILE",
                        help="write every run, the pairs and the verdict")


@dataclass(frozen=True)
class Cell:
    """What a measurement measures: a direction, a frame size and the front-end's ring."""

    direction: str
    size: int
    ring: str = "split"
    mergeable: bool = True

    @property
    def name(self) -> str:
        """How it is named in the verdict and the JSON (\"rx 64\", \"tx packed no-mrg 1518\")."""
        return " ".join([self.direction] + (["packed"] if self.ring == "packed" else [])
                        + ([] if self.mergeable else ["no-mrg"]) + [str(self.size)])


@dataclass
class Run:
    """One run of one back-end in one measurement."""

    side: str            # "fastpath", "baseline" or "dpdk"
    direction: str
    size: int
    ring: str
    mergeable: bool
    mpps: float          # best rate over one second of samples
    mean_mpps: float     # rate over the whole measured stretch
    running_mpps: float  # best rate over one second of the time both sides ran
    backend_share: float   # the back-end's CPU time over the whole stretch, per second
    frontend_share: float  # the front-end's, likewise
    sent: int            # frames the front-end sent over the whole run
    received: int        # frames the back-end received
    returned: int        # frames that came back to the front-end (loop, tx)
    delivered: int       # frames the back-end put into the front-end's receive buffers (tx)
    checkout: str | None = None      # the checkout whose core the back-end loaded
    reported: dict | None = None     # what the back-end said it ran
    placement: Placement | None = None  # the two CPUs' distance before and after the run

    @property
    def gbps(self) -> float:
        """The best rate in Gbit/s of frame bytes."""
        return self.mpps * self.size * 8 / 1000

    @property
    def exact(self) -> bool:
        """Whether the back-end received every frame the front-end sent; for tx, whether the
        front-end received every frame the back-end delivered but at most a ring of them (the
        back-end fills the ring the front-end stopped emptying)."""
        if self.direction == "tx":
            return self.returned <= self.delivered <= self.returned + QUEUE_SIZE
        return self.sent == self.received


def checkout_of_this_fastpath() -> Path:
    """The directory that holds the `fastpath` package this command runs."""
    return Path(fastpath.__file__).resolve().parent.parent


def _start_backend(side: str, cell: Cell, sock: str, burst: int, checkout: Path | None):
    _, fastpath_mode, dpdk_mode = DIRECTIONS[cell.direction]
    # Only a generating back-end is told the size (a baseline from before txonly knows no --size).
    generating = cell.direction == "tx"
    if side == "dpdk":
        return Testpmd.vhost(sock, forward=dpdk_mode, cpu=BACK_END_CPU,
                             extra=[f"--txpkts={cell.size}"] if generating else [])
    return VhostNetProcess(sock, fwd=fastpath_mode, cpu=BACK_END_CPU, source=checkout,
                           extra=["--burst", str(burst), "--stats-period", "0"]
                           + (["--size", str(cell.size)] if generating else []))


def check_checkout(side: str, process: VhostNetProcess,
                   checkout: Path) -> tuple[str, dict | None]:
    """Raise WrongCheckout unless the `side` back-end `process` runs the fastpath of `checkout`;
    return the checkout and what the process said it runs."""
    # The memory map says which compiled core is loaded; the process's own line, when its
    # checkout prints one, must name the same checkout.
    loaded = process.checkouts()
    reported = process.reported
    if loaded != {str(checkout)}:
        raise WrongCheckout(f"the {side} back-end loaded fastpath from "
                            f"{', '.join(sorted(loaded)) or 'nowhere'}, not {checkout}")
    if reported is not None and Path(reported["file"]).resolve().parent.parent != checkout:
        raise WrongCheckout(f"the {side} back-end ran {reported['file']}, not {checkout}")
    return str(checkout), reported


def measure(side: str, cell: Cell, seconds: float, burst: int,
            checkout: Path | None = None) -> Run:
    """One run of `side` measuring `cell` for `seconds`; `checkout` is the fastpath checkout
    of a fastpath side. Raises PeerError, RuntimeError or WrongCheckout."""
    front_mode = DIRECTIONS[cell.direction][0]
    counter = "opackets" if cell.direction == "rx" else "ipackets"
    origin: tuple[str | None, dict | None] = (None, None)
    cpus = (FRONT_END_CPU, BACK_END_CPU)
    before = line_transfer_ns(cpus)
    with tempfile.TemporaryDirectory(prefix="fastpath-bench-") as tmp:
        sock = os.path.join(tmp, "vhost.sock")
        backend = _start_backend(side, cell, sock, burst, checkout)
        try:
            if side != "dpdk":
                origin = check_checkout(side, backend, checkout)
            # Interactive, so that forwarding stops with the device still up and the back-end
            # can take what is left in the ring before the counts are compared.
            with Testpmd.virtio_user(sock, forward=front_mode, txpkts=cell.size,
                                     queue_size=QUEUE_SIZE, packed=cell.ring == "packed",
                                     mrg_rxbuf=cell.mergeable, cpu=FRONT_END_CPU,
                                     interactive=True) as front:
                time.sleep(WARM_UP_SECONDS)
                samples = [_sample(front, counter, backend.pid)]
                while samples[-1][0] - samples[0][0] < seconds:
                    time.sleep(SAMPLE_SECONDS)
                    samples.append(_sample(front, counter, backend.pid))
                front.stop_forwarding()
                totals = front.final_totals()
                sent = totals["tx_packets"]
                if side == "dpdk":
                    front.wait_until(lambda: backend.stats()["ipackets"] >= sent,
                                     DRAIN_SECONDS, "DPDK's vhost PMD to receive every frame")
            if side == "dpdk":
                backend.stop()
                backend_totals = backend.final_totals()
                received, delivered = backend_totals["rx_packets"], backend_totals["tx_packets"]
            else:
                result = backend.stop()
                received, delivered = received_frames(result), sent_frames(result)
        finally:
            if side == "dpdk":
                backend.stop()
            else:
                backend.kill()
    wall = [(t, n) for t, n, _, _ in samples]
    first, last = samples[0], samples[-1]
    return Run(side, cell.direction, cell.size, cell.ring, cell.mergeable,
               _best_rate(wall) / 1e6, _rate(wall[0], wall[-1]) / 1e6,
               _best_running_rate(samples) / 1e6, (last[2] - first[2]) / (last[0] - first[0]),
               (last[3] - first[3]) / (last[0] - first[0]), sent, received,
               totals["rx_packets"], delivered, *origin,
               Placement(before, line_transfer_ns(cpus)))


def _best_running_rate(samples: list[tuple[float, int, float, float]]) -> float:
    # Frames per second of both sides running, over the best second of wall clock in which
    # each side ran for at least a quarter of it (a ring's worth of frames over a few
    # milliseconds would say nothing); the whole stretch when there is no such second.
    span = max(1, round(1.0 / SAMPLE_SECONDS))
    rates = [rate for first, last in zip(samples, samples[span:], strict=False)
             if (rate := _running_rate(first, last, MIN_CPU_SHARE)) is not None]
    return max(rates, default=_running_rate(samples[0], samples[-1], 0.0) or 0.0)


def _running_rate(first: tuple[float, int, float, float], last: tuple[float, int, float, float],
                  least_share: float) -> float | None:
    wall = last[0] - first[0]
    backend = min(1.0, (last[2] - first[2]) / wall)
    frontend = min(1.0, (last[3] - first[3]) / wall)
    if min(backend, frontend) < max(least_share, 1e-6):
        return None
    return (last[1] - first[1]) / (wall * backend * frontend)


def _sample(front: Testpmd, counter: str, backend_pid: int) -> tuple[float, int, float, float]:
    # (wall clock, the front-end's counter, each side's CPU seconds so far)
    return (time.monotonic(), front.stats()[counter], cpu_seconds(backend_pid),
            cpu_seconds(front.pid))


def cpu_seconds(pid: int) -> float:
    """The CPU time, in seconds, that the live threads of process `pid` have run for so far
    (the first field of each thread's schedstat: nanoseconds on a CPU)."""
    total = 0
    for task in os.scandir(f"/proc/{pid}/task"):
        try:
            with open(os.path.join(task.path, "schedstat")) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended between the listing and the read
    return total / 1e9


def _rate(first: tuple[float, int], last: tuple[float, int]) -> float:
    return (last[1] - first[1]) / max(last[0] - first[0], 1e-9)


def _best_rate(samples: list[tuple[float, int]]) -> float:
    # The best stretch of about a second (of wall clock or CPU time, whichever the samples
    # count): the host moves the two CPUs closer or further apart every few seconds, and the
    # best stretch is the one where neither side was held back.
    span = max(1, round(1.0 / SAMPLE_SECONDS))
    rates = [_rate(samples[i], samples[i + span]) for i in range(len(samples) - span)]
    return max(rates, default=_rate(samples[0], samples[-1]))


def _parse(args: argparse.Namespace) -> list[Cell]:
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(not 60 <= s <= 1518 for s in sizes):
        raise ValueError("--sizes: frame sizes are 60 to 1518 bytes")
    directions = args.directions.split(",")
    if unknown := set(directions) - set(DIRECTIONS):
        raise ValueError(f"--directions: {', '.join(sorted(unknown))}: not rx, tx or loop")
    rings = RINGS if args.rings == "both" else args.rings.split(",")
    if unknown := set(rings) - set(RINGS):
        raise ValueError(f"--rings: {', '.join(sorted(unknown))}: not split or packed")
    mergeable = list(MERGEABLE) if args.mergeable == "both" else args.mergeable.split(",")
    if unknown := set(mergeable) - set(MERGEABLE):
        raise ValueError(f"--mergeable: {', '.join(sorted(unknown))}: not on or off")
    if args.pairs < 1:
        raise ValueError("--pairs must be at least 1")
    for option in ("baseline", "tree"):
        path = getattr(args, option)
        if path and not (Path(path) / "fastpath" / "__init__.py").exists():
            raise ValueError(f"--{option} {path} is not a fastpath checkout")
    return [Cell(d, s, r, MERGEABLE[m]) for d in directions for r in rings for m in mergeable
            for s in sizes]


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; returns the exit status."""
    try:
        cells = _parse(args)
    except ValueError as e:
        print(f"fastpath bench vhost-net: {e}", file=sys.stderr)
        return 2
    if Testpmd.find() is None:
        print("fastpath bench vhost-net: dpdk-testpmd is not installed (make peers)",
              file=sys.stderr)
        return 2
    other = "baseline" if args.baseline else "dpdk"
    checkouts = {"fastpath": Path(args.tree).resolve() if args.tree
                 else checkout_of_this_fastpath()}
    if args.baseline:
        checkouts["baseline"] = Path(args.baseline).resolve()
    env = environment()
    print("  ".join(f"{k} {v}" for k, v in env.items()))
    for side, path in checkouts.items():
        print(f"{side}: {path}")
    runs: list[Run] = []
    total = 2 * args.pairs * len(cells)
    for pair in range(args.pairs):
        for cell in cells:
            # Alternate which side goes first: fastpath, other, other, fastpath, ...
            order = ("fastpath", other) if pair % 2 == 0 else (other, "fastpath")
            for side in order:
                print(f"[{len(runs) + 1}/{total}] {side} {cell.name} B, pair {pair + 1}",
                      file=sys.stderr, flush=True)
                try:
                    r = measure(side, cell, args.seconds, args.burst, checkouts.get(side))
                except WrongCheckout as e:
                    print(f"fastpath bench vhost-net: {e}", file=sys.stderr)
                    return 2
                except (PeerError, RuntimeError) as e:
                    print(f"fastpath bench vhost-net: {side} {cell.name} B failed: {e}",
                          file=sys.stderr)
                    return 1
                print(f"    {r.mpps:.2f} Mpps best, {r.mean_mpps:.2f} mean, "
                      f"{r.running_mpps:.2f} running (CPU: back-end {r.backend_share:.0%}, "
                      f"front-end {r.frontend_share:.0%}); " + _counts(r)
                      + f"; CPUs {r.placement.describe()}",
                      file=sys.stderr, flush=True)
                runs.append(r)
    pairs = {cell.name: _pairs(runs, cell, other) for cell in cells}
    verdict = judge(pairs, args.fail_below or 1.0)
    rows, summary = [], []
    for cell, j in zip(cells, verdict.judgements, strict=True):
        mine = _runs_of(runs, cell)
        median = {(side, figure): statistics.median(getattr(r, figure) for r in mine
                                                    if r.side == side)
                  for side in ("fastpath", other) for figure in ("mpps", "running_mpps")}
        exact = all(r.exact for r in mine)
        alike = same_placement(_placed_pairs(runs, cell, other))
        summary.append({"direction": cell.direction, "size": cell.size, "ring": cell.ring,
                        "mergeable": cell.mergeable,
                        **{f"{side}_{figure}": value for (side, figure), value in median.items()},
                        "ratio": j.median, "ratios": list(j.ratios), "same_placement": alike,
                        "exact": exact,
                        **({"passed": j.passed} if args.fail_below else {})})
        rows.append([cell.direction, cell.size, cell.ring, "on" if cell.mergeable else "off"]
                    + [f"{median[side, figure]:.2f}" for side in ("fastpath", other)
                       for figure in ("mpps", "running_mpps")]
                    + [f"{j.median:.3f}", f"{j.spread[0]:.2f}-{j.spread[1]:.2f}",
                       describe_same_placement(alike), "yes" if exact else "NO"]
                    + (["pass" if j.passed else "FAIL"] if args.fail_below else []))
    print()
    print_table(["direction", "size", "ring", "mrg", "fastpath Mpps", "running",
                 f"{other} Mpps", "running", f"fastpath/{other}", "pairs' range",
                 "same placement", "counts exact"]
                + (["verdict"] if args.fail_below else []), rows)
    print(f"(Mpps: the median over {args.pairs} run(s) of each run's best second; running: "
          f"Mpps per second in which both sides ran, likewise; fastpath/{other}: of the "
          f"rates running, the median ratio of {args.pairs} alternated pair(s); same "
          f"placement: that median over the pairs whose two runs kept the CPUs where they "
          f"were, per placement, with the pairs counted)")
    if args.json:
        write_json(args.json, {
            "environment": env, "checkouts": {k: str(v) for k, v in checkouts.items()},
            "fail_below": args.fail_below, "summary": summary,
            "runs": [asdict(r) | {"gbps": r.gbps} for r in runs]})
    if not all(s["exact"] for s in summary):
        print("fastpath bench vhost-net: a side did not receive every frame sent",
              file=sys.stderr)
        return 1
    if args.fail_below is not None:
        for j in verdict.failed:
            print(f"REGRESSION in {j.name} B: fastpath/{other} {j.median:.3f} < "
                  f"{args.fail_below}", file=sys.stderr)
        if not verdict.passed:
            return 1
        print(f"fastpath/{other} at or above {args.fail_below} everywhere")
    return 0


def _runs_of(runs: list[Run], cell: Cell) -> list[Run]:
    return [r for r in runs if Cell(r.direction, r.size, r.ring, r.mergeable) == cell]


def _counts(r: Run) -> str:
    # What each side counted, for the exactness check: the front-end's sending or receiving
    # and the back-end's, as the direction has them.
    if r.direction == "tx":
        return f"delivered {r.delivered}, received {r.returned}"
    return f"sent {r.sent}, received {r.received}" + (
        f", back {r.returned}" if r.direction == "loop" else "")


def _placed_pairs(runs: list[Run], cell: Cell,
                  other: str) -> list[tuple[float, Placement, float, Placement]]:
    # The k-th run of each side of a measurement make its k-th pair: their rates running
    # and their placements.
    mine = _runs_of(runs, cell)
    return [(a.running_mpps, a.placement, b.running_mpps, b.placement)
            for a, b in zip([r for r in mine if r.side == "fastpath"],
                            [r for r in mine if r.side == other], strict=True)]


def _pairs(runs: list[Run], cell: Cell, other: str) -> list[tuple[float, float]]:
    return [(mine, theirs) for mine, _, theirs, _ in _placed_pairs(runs, cell, other)]
