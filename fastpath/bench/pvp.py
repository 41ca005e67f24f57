"""`fastpath bench pvp`: frames through a vhost-user back-end and back (PVP: a traffic port,
a virtual switch, the port again), per frame size, with fastpath's `vhost-net --fwd io` as
the back-end and, with --peer dpdk, DPDK testpmd's vhost PMD doing the same job.

The traffic process runs on one CPU and the back-end on the other, which sends every frame
back on the receiveq. Two traffic processes can be chosen (--traffic):

* fastpath: `fastpath fwd virtio-user:SOCK --fwd txonly`, sending Scapy-made frames as fast as
  the ring takes them and counting what comes back; refused frames are those the ring had no
  room for, never sent, and loss is what went into the ring and did not come back.
* dpdk: DPDK testpmd's virtio-user, so that a figure can be checked against a generator that is
  not fastpath's. It forwards in io mode after `start tx_first N` (testpmd's --tx-first, with
  enough bursts for half the ring): a fixed number of frames circulates, every frame received
  is sent back out, and what comes back is counted. A frame that finds the ring full is dropped
  by testpmd (counted as refused and lost); one the back-end drops leaves the loop and lowers
  the rate.

The throughput of a run is the best one-second window of frames received back. Back-ends are
alternated size by size and round by round, so that a figure and the one it is compared with
come from the same minutes of this shared machine.

The bottleneck. In every round the same traffic process also runs alone (txonly) into two
sinks: DPDK's vhost PMD with --forward-mode=rxonly and `fastpath vhost-net --fwd drop`. The
higher of the two best rates is the traffic's ceiling, and the table names the sink it came
from: a sink slower than the generator would otherwise be taken for the generator's limit. A
back-end whose PVP rate comes within 10 % of that ceiling is generator-bound (the rule of the
regression gate): there the figure says how fast the traffic process is, not the back-end.
Below it, the back-end is the bottleneck. With --fail-below, the judge is the median ratio of
the rounds' pairs (`_judge`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fastpath.bench._judge import judge
from fastpath.bench._report import environment, print_table, write_json
from fastpath.bench.txgen import best_rate
from fastpath.bench.vhost_net import WrongCheckout, check_checkout, checkout_of_this_fastpath
from fastpath.testing import PeerError, Testpmd, VhostNetProcess

SIZES = "64,128,256,512,1024,1518,imix"
TRAFFIC = {
    "fastpath": "fastpath fwd virtio-user:SOCK --fwd txonly, counting what comes back",
    "dpdk": "DPDK testpmd virtio-user, --forward-mode=io after start tx_first (--tx-first): "
            "a half ring of frames circulating, every frame received sent back",
}
BACKENDS = {
    "fastpath": "fastpath vhost-net --fwd io",
    "dpdk": "DPDK testpmd, vhost PMD, --forward-mode=io",
    "baseline": "fastpath vhost-net --fwd io of the --baseline checkout",
    "sink-dpdk": "no back-end: the traffic process alone (txonly) into DPDK's vhost PMD, rxonly",
    "sink-fastpath": "no back-end: the traffic process alone (txonly) into fastpath vhost-net "
                     "--fwd drop",
}
SINKS = ("sink-dpdk", "sink-fastpath")
#: A back-end whose rate comes within this share of the traffic's ceiling is generator-bound.
GENERATOR_BOUND = 0.9
WARM_UP_SECONDS = 1.0
SAMPLE_SECONDS = 0.25
TRAFFIC_CPU = 1
BACKEND_CPU = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    parser.add_argument("--sizes", default=SIZES,
                        help="frame sizes in bytes (FCS excluded), or imix (7:4:1 of 64, 570 "
                        "and 1518; --traffic fastpath only, and left out of the default with "
                        "--traffic dpdk), comma-separated")
    parser.add_argument("--traffic", choices=list(TRAFFIC), default="fastpath",
                        help="the traffic process: fastpath (fastpath fwd's virtio-user port, "
                        "txonly, counting what comes back) or dpdk (DPDK testpmd's virtio-user "
                        "in io mode after start tx_first, so that a figure can be checked "
                        "against a generator that is not fastpath's; needs dpdk-testpmd)")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="measured length of each run, after a 1 s warm-up")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs of each back-end and sink per size, alternated; a size's "
                        "figure is its best run, a ratio's the median over rounds")
    parser.add_argument("--peer", choices=["none", "dpdk"], default="none",
                        help="also run DPDK's vhost PMD as the back-end and print "
                        "fastpath/DPDK per size")
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="also run the back-end of another fastpath checkout (its core "
                        "built in place) and print fastpath/baseline per size")
    parser.add_argument("--fail-below", type=float, metavar="RATIO",
                        help="exit 1 if the median over rounds of fastpath/baseline (or, "
                        "without --baseline, fastpath/DPDK) falls below RATIO at any size")
    parser.add_argument("--burst", type=int, default=32,
                        help="frames per burst, both sides (testpmd's at most 512)")
    parser.add_argument("--queue-size", type=int, default=256, help="virtqueue size")
    parser.add_argument("--json", metavar="FILE",
                        help="write every run and the summary: per size and back-end the rate, "
                        "the traffic's ceiling, the share of it and the bottleneck")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw Mpps and Gbit/s per size with the traffic's ceiling, "
                        "generator-bound bars hatched")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (there is none either when standard error is "
                        "not a terminal: a line per run is printed all the same)")


@dataclass
class Run:
    """One run of one back-end (or sink) at one size."""

    backend: str
    size: str
    mpps: float          # frames back (sink: sent) per second, best one-second window
    mean_mpps: float     # over the whole measured stretch
    frame_bytes: float   # mean frame length (FCS excluded)
    sent: int            # frames the traffic port put on the ring
    received: int        # frames that came back
    refused: int         # frames the ring had no room for (not sent)
    in_flight: int = 0   # frames circulating in a round trip (--traffic dpdk), else 0

    @property
    def gbps(self) -> float:
        """The best rate in Gbit/s of frame bytes."""
        return self.mpps * self.frame_bytes * 8 / 1000

    @property
    def loss(self) -> float:
        """Share of the frames sent that did not come back. In a round trip of a fixed number
        of frames, those still circulating at the end are not lost: lost are those that
        stopped circulating (the loop's traffic process counts each frame it sends back)."""
        if self.backend in SINKS or not self.sent:
            return 0.0
        out = self.sent - self.received
        lost = self.in_flight - out if self.in_flight else out
        return max(0, lost) / self.sent

    @property
    def refused_share(self) -> float:
        """Share of the frames offered to the ring that found no room."""
        offered = self.sent + self.refused
        return self.refused / offered if offered else 0.0


def bottleneck(rate: float, ceiling: float) -> tuple[float, str]:
    """The share of the traffic's ceiling that a rate reaches, and what limits it.

    The ceiling is what the traffic process sends alone into a sink, measured in the same run.
    Within 10 % of it (a share of `GENERATOR_BOUND` or more) the rate is the traffic
    process's: "generator"; below, "back-end". Raises ValueError for a ceiling that is not
    positive (a traffic process that sent nothing bounds nothing).
    """
    if not ceiling > 0:
        raise ValueError(f"a ceiling of {ceiling} Mpps bounds nothing")
    share = rate / ceiling
    return share, "generator" if share >= GENERATOR_BOUND else "back-end"


def traffic_command(sock: str, size: str, seconds: float, burst: int, queue_size: int,
                    json_path: str) -> list[str]:
    """fastpath's traffic process: txonly on a virtio-user port, counting what comes back."""
    profile = ["--profile", "imix"] if size == "imix" else ["--profile", "udp64", "--size",
                                                            size]
    return [sys.executable, "-m", "fastpath.cli", "fwd",
            f"virtio-user:{sock},queue_size={queue_size}", "--fwd", "txonly", *profile,
            "--burst", str(burst), "--duration", str(WARM_UP_SECONDS + seconds),
            "--stats-period", str(SAMPLE_SECONDS), "--cpu", str(TRAFFIC_CPU), "-q",
            "--json", json_path]


def start_backend(backend: str, sock: str, burst: int, baseline: str | None):
    """The back-end (or sink) process, listening on `sock` on BACKEND_CPU."""
    if backend in ("dpdk", "sink-dpdk"):
        return Testpmd.vhost(sock, forward="io" if backend == "dpdk" else "rxonly",
                             cpu=BACKEND_CPU, extra=[f"--burst={burst}"])
    return VhostNetProcess(sock, fwd="drop" if backend == "sink-fastpath" else "io",
                           cpu=BACKEND_CPU, source=baseline if backend == "baseline" else None,
                           extra=["--burst", str(burst), "--stats-period", "0"])


def measure(backend: str, size: str, args: argparse.Namespace) -> Run:
    """One run; raises RuntimeError or PeerError with the reason when a side fails."""
    with tempfile.TemporaryDirectory(prefix="fastpath-pvp-") as tmp:
        sock = os.path.join(tmp, "vhost.sock")
        server = start_backend(backend, sock, args.burst, args.baseline)
        try:
            if backend == "baseline":
                check_checkout(backend, server, Path(args.baseline).resolve())
            elif backend == "fastpath" and args.baseline:
                check_checkout(backend, server, checkout_of_this_fastpath())
            if args.traffic == "dpdk":
                return _dpdk_traffic(backend, size, sock, args)
            return _fastpath_traffic(backend, size, sock, args, tmp)
        finally:
            if isinstance(server, Testpmd):
                server.stop()
            else:
                server.kill()


def _fastpath_traffic(backend: str, size: str, sock: str, args: argparse.Namespace,
                      tmp: str) -> Run:
    result_path = os.path.join(tmp, "traffic.json")
    command = traffic_command(sock, size, args.seconds, args.burst, args.queue_size,
                              result_path)
    done = subprocess.run(command, capture_output=True, text=True,
                          timeout=WARM_UP_SECONDS + args.seconds + 120)
    if done.returncode != 0 or not Path(result_path).exists():
        raise RuntimeError(f"the traffic process failed ({done.returncode}):\n"
                           f"{done.stdout}{done.stderr}")
    return _run_from(backend, size, json.loads(Path(result_path).read_text()))


def _run_from(backend: str, size: str, result: dict) -> Run:
    (port,) = result["ports"]
    name = port["port"]
    # Frames back, or for a sink frames sent: [rx, tx, tx_dropped] in each sample.
    counter = 1 if backend in SINKS else 0
    steady = [(s["seconds"], s["ports"][name][counter]) for s in result["samples"]
              if s["seconds"] >= WARM_UP_SECONDS]
    if len(steady) < 2:
        raise RuntimeError("the traffic process reported too few samples")
    # Of frames back, or for a sink (nothing back) of frames sent.
    moved = "tx" if backend in SINKS else "rx"
    frame_bytes = (port[f"{moved}_bytes"] / port[f"{moved}_frames"] if port[f"{moved}_frames"]
                   else 0.0)
    return Run(backend, size, best_rate(steady) / 1e6, _mean_rate(steady) / 1e6,
               frame_bytes, port["tx_frames"], port["rx_frames"], port["tx_dropped"])


def _dpdk_traffic(backend: str, size: str, sock: str, args: argparse.Namespace) -> Run:
    # Into a sink txonly, counting frames sent; through a back-end io after tx_first, counting
    # frames back. Interactive, so that the loop is filled with several bursts (--tx-first on
    # the command line sends one) and forwarding stops with the device still up.
    sink = backend in SINKS
    with Testpmd.virtio_user(sock, forward="txonly" if sink else "io", txpkts=int(size),
                             queue_size=args.queue_size, cpu=TRAFFIC_CPU, interactive=True,
                             extra=[f"--burst={args.burst}"]) as front:
        in_flight = 0
        if not sink:
            bursts = max(1, args.queue_size // 2 // args.burst)
            front.stop_forwarding()
            since = len(front.output)
            front.send(f"start tx_first {bursts}")
            front.wait_for("packet forwarding packets/burst", since=since)
            in_flight = bursts * args.burst
        time.sleep(WARM_UP_SECONDS)
        samples = front.sample("opackets" if sink else "ipackets", args.seconds,
                               SAMPLE_SECONDS)
        front.stop_forwarding()
        totals = front.final_totals()
    if len(samples) < 2:
        raise RuntimeError("testpmd's counters gave too few samples")
    return Run(backend, size, best_rate(samples) / 1e6, _mean_rate(samples) / 1e6,
               int(size), totals["tx_packets"], totals["rx_packets"], totals["tx_dropped"],
               in_flight)


def _mean_rate(samples: list[tuple[float, int]]) -> float:
    (t0, n0), (t1, n1) = samples[0], samples[-1]
    return (n1 - n0) / max(t1 - t0, 1e-9)


def summarize(runs: list[Run], sizes: list[str], backends: list[str]) -> list[dict]:
    """Per size: each back-end's best run, medians, refusals and loss; with sinks among the
    back-ends, the traffic's ceiling (the best sink's best run, and which sink) and for each
    back-end its share of that ceiling and its bottleneck (`bottleneck`); and the ratios to
    fastpath, of the best runs and the median of the rounds' pairs."""
    summary = []
    compared = [b for b in backends if b not in SINKS]
    for size in sizes:
        row: dict = {"size": size}
        for backend in backends:
            mine = [r for r in runs if r.size == size and r.backend == backend]
            best = max(mine, key=lambda r: r.mpps)
            row[backend] = {"mpps": best.mpps, "gbps": best.gbps, "loss": best.loss,
                            "refused": best.refused, "refused_share": best.refused_share,
                            "median_mpps": statistics.median(r.mpps for r in mine),
                            "runs_mpps": [r.mpps for r in mine]}
        sinks = [b for b in backends if b in SINKS]
        if sinks:
            top = max(sinks, key=lambda b: row[b]["mpps"])
            row["ceiling"] = {"mpps": row[top]["mpps"], "gbps": row[top]["gbps"], "sink": top}
            for backend in compared:
                share, limit = bottleneck(row[backend]["mpps"], row["ceiling"]["mpps"])
                row[backend] |= {"ceiling_mpps": row["ceiling"]["mpps"],
                                 "ceiling_share": share, "bottleneck": limit,
                                 "generator_bound": limit == "generator"}
        for other in compared[1:]:
            row[f"fastpath/{other}"] = row["fastpath"]["mpps"] / max(row[other]["mpps"], 1e-9)
            row[f"fastpath/{other} median"] = judge(
                {size: _pairs(runs, size, other)}, 1.0).judgements[0].median
        summary.append(row)
    return summary


def _pairs(runs: list[Run], size: str, other: str) -> list[tuple[float, float]]:
    # The k-th round's runs of fastpath and `other` at `size` make a pair.
    mine = [r for r in runs if r.size == size]
    return list(zip([r.mpps for r in mine if r.backend == "fastpath"],
                    [max(r.mpps, 1e-9) for r in mine if r.backend == other], strict=True))


def plot(summary: list[dict], backends: list[str], traffic: str, path: str) -> None:
    """Grouped bars: Mpps (top) and Gbit/s (bottom) per size and back-end, the traffic's
    ceiling drawn across each size's group, generator-bound bars hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    compared = [b for b in backends if b not in SINKS]
    sizes = [str(s["size"]) for s in summary]
    width = 0.8 / len(compared)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    legend = []
    for k, backend in enumerate(compared):
        xs = [i + (k - (len(compared) - 1) / 2) * width for i in range(len(sizes))]
        color = f"C{k}"
        legend.append(Patch(facecolor=color, label=BACKENDS[backend]))
        for axis, figure_of in ((top, "mpps"), (bottom, "gbps")):
            bars = axis.bar(xs, [s[backend][figure_of] for s in summary], width, color=color)
            for bar, s in zip(bars, summary, strict=True):
                if s[backend].get("generator_bound"):
                    bar.set_hatch("//")
    if any("ceiling" in s for s in summary):
        for axis, figure_of in ((top, "mpps"), (bottom, "gbps")):
            for i, s in enumerate(summary):
                axis.hlines(s["ceiling"][figure_of], i - 0.45, i + 0.45, colors="black")
        legend += [Line2D([], [], color="black",
                          label="the traffic alone into the faster sink: its ceiling"),
                   Patch(facecolor="white", edgecolor="black", hatch="//",
                         label=f"generator-bound (within {1 - GENERATOR_BOUND:.0%} of the "
                         "ceiling)")]
    top.set_ylabel("Mpps (best 1 s)")
    bottom.set_ylabel("Gbit/s (frame bytes)")
    bottom.set_xticks(range(len(sizes)), sizes)
    bottom.set_xlabel("frame size (bytes, FCS excluded)")
    top.legend(handles=legend, fontsize="small")
    top.set_title(f"PVP through a vhost-user back-end; traffic: {traffic}", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="run", file=sys.stderr, disable=not enabled,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} runs [{elapsed}<{remaining}]")


def _parse_sizes(text: str, traffic: str) -> list[str]:
    if traffic == "dpdk" and text == SIZES:
        text = SIZES.removesuffix(",imix")
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if part != "imix" and not (part.isdigit() and 60 <= int(part) <= 2030):
            raise ValueError(f"--sizes: {part!r} is neither imix nor a size of 60 to 2030 "
                             "bytes")
        if part == "imix" and traffic == "dpdk":
            raise ValueError("--sizes: imix needs --traffic fastpath (testpmd's txonly sends "
                             "one size)")
        sizes.append(part)
    return sizes


def _measure_all(runs: list[Run], sizes: list[str], backends: list[str],
                 args: argparse.Namespace) -> bool:
    # Every size, round and back-end, appended to runs; False (said why) if a run failed.
    progress = _progress(len(sizes) * args.rounds * len(backends),
                         not args.no_progress and sys.stderr.isatty())
    with progress:
        for size in sizes:
            for round_ in range(args.rounds):
                # Rotate which back-end goes first, so that none always follows another.
                order = backends[round_ % len(backends):] + backends[:round_ % len(backends)]
                for backend in order:
                    progress.set_description(f"{backend} {size}")
                    try:
                        r = measure(backend, size, args)
                    except WrongCheckout:
                        progress.close()
                        raise
                    except (PeerError, RuntimeError, subprocess.TimeoutExpired) as e:
                        progress.close()
                        print(f"fastpath bench pvp: {backend} at {size} failed: {e}",
                              file=sys.stderr)
                        return False
                    runs.append(r)
                    progress.write(f"{backend:>13} {size:>5}: {r.mpps:6.2f} Mpps best, "
                                   f"{r.mean_mpps:6.2f} mean, loss {r.loss:.2%}",
                                   file=sys.stderr)
                    progress.update()
    return True


def _backends(args: argparse.Namespace) -> list[str]:
    # The back-ends compared, then the sinks of the traffic's ceiling; ValueError says why not.
    has_testpmd = Testpmd.find() is not None
    backends = ["fastpath"]
    if args.baseline:
        if not (Path(args.baseline) / "fastpath" / "__init__.py").exists():
            raise ValueError(f"--baseline {args.baseline} is not a fastpath checkout")
        backends.append("baseline")
    if args.peer == "dpdk":
        if not has_testpmd:
            raise ValueError("--peer dpdk needs dpdk-testpmd (make peers)")
        backends.append("dpdk")
    if args.traffic == "dpdk" and not has_testpmd:
        raise ValueError("--traffic dpdk needs dpdk-testpmd (make peers)")
    if args.fail_below is not None and len(backends) == 1:
        raise ValueError("--fail-below needs --baseline or --peer dpdk")
    if args.traffic == "dpdk" and not 1 <= args.burst <= 512:
        raise ValueError("--burst: testpmd takes 1 to 512 frames a burst")
    # Without DPDK, fastpath's sink alone gives the ceiling.
    return backends + ["sink-fastpath"] + (["sink-dpdk"] if has_testpmd else [])


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; returns the exit status."""
    try:
        sizes = _parse_sizes(args.sizes, args.traffic)
        backends = _backends(args)
    except ValueError as e:
        print(f"fastpath bench pvp: {e}", file=sys.stderr)
        return 2
    if len(os.sched_getaffinity(0)) < 2:
        print("fastpath bench pvp: needs two CPUs (one per side)", file=sys.stderr)
        return 2
    env = environment()
    print("  ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    print(f"traffic: {TRAFFIC[args.traffic]}", flush=True)
    runs: list[Run] = []
    try:
        if not _measure_all(runs, sizes, backends, args):
            return 1
    except WrongCheckout as e:
        print(f"fastpath bench pvp: {e}", file=sys.stderr)
        return 2
    summary = summarize(runs, sizes, backends)
    print()
    _print_table(summary, backends)
    if args.json:
        write_json(args.json, {"environment": env,
                               "traffic": {"kind": args.traffic,
                                           "description": TRAFFIC[args.traffic]},
                               "backends": {b: BACKENDS[b] for b in backends},
                               "generator_bound_within": 1 - GENERATOR_BOUND,
                               "summary": summary,
                               "runs": [asdict(r) | {"gbps": r.gbps, "loss": r.loss,
                                                     "refused_share": r.refused_share}
                                        for r in runs]})
    if args.plot:
        plot(summary, backends, TRAFFIC[args.traffic].split(",")[0], args.plot)
        print(f"plot: {args.plot}")
    if args.fail_below is not None:
        return _judged(runs, summary, "baseline" if args.baseline else "dpdk", args)
    return 0


def _print_table(summary: list[dict], backends: list[str]) -> None:
    compared = [b for b in backends if b not in SINKS]
    headers = ["size"]
    for backend in compared:
        headers += [f"{backend} Mpps", "Gbit/s", "loss", "refused", "of ceiling", "bottleneck"]
    headers += ["ceiling Mpps", "into"] + [f"fastpath/{b}" for b in compared[1:]]
    rows = []
    for s in summary:
        row = [s["size"]]
        for backend in compared:
            b = s[backend]
            row += [f"{b['mpps']:.2f}", f"{b['gbps']:.2f}", f"{b['loss']:.2%}",
                    f"{b['refused_share']:.1%}", f"{b['ceiling_share']:.0%}", b["bottleneck"]]
        row += [f"{s['ceiling']['mpps']:.2f}", s["ceiling"]["sink"].removeprefix("sink-")]
        row += [f"{s[f'fastpath/{b}']:.2f}" for b in compared[1:]]
        rows.append(row)
    print_table(headers, rows)
    print(f"(best run of each; refused: frames the ring had no room for, of those offered; "
          f"ceiling: what the traffic process sends alone, the faster of the sinks "
          f"({', '.join(b.removeprefix('sink-') for b in backends if b in SINKS)}), 'into' "
          f"naming it; of ceiling: a back-end's rate over it; bottleneck: generator within "
          f"{1 - GENERATOR_BOUND:.0%} of the ceiling (generator-bound: the figure measures the "
          f"traffic process), else back-end)")


def _judged(runs: list[Run], summary: list[dict], judged: str,
            args: argparse.Namespace) -> int:
    verdict = judge({s["size"]: _pairs(runs, s["size"], judged) for s in summary},
                    args.fail_below)
    for j in verdict.failed:
        print(f"REGRESSION at {j.name}: fastpath/{judged} {j.median:.2f} (median of "
              f"{len(j.ratios)} round(s)) < {args.fail_below}", file=sys.stderr)
    if not verdict.passed:
        return 1
    print(f"fastpath/{judged} at or above {args.fail_below} at every size (median of "
          f"{args.rounds} round(s))")
    return 0
