"""`fastpath bench pvp`: frames through a vhost-user back-end and back (PVP: a traffic port,
a virtual switch, the port again), per frame size, with fastpath's `vhost-net --fwd io` as
the back-end and, with --peer dpdk, DPDK testpmd's vhost PMD doing the same job.

The traffic process is `fastpath fwd virtio-user:SOCK --fwd txonly` on one CPU: it sends
Scapy-made frames as fast as the ring takes them and counts what comes back; the back-end
runs on the other CPU and sends every frame back on the receiveq. The throughput of a run is
the best one-second window of frames received back; loss is what went into the ring and did
not come back; refused frames are those the ring had no room for, never sent. Back-ends are
alternated size by size and round by round, so that a figure and the one it is compared with
come from the same minutes of this shared machine.

The same traffic process also runs alone into a sink (DPDK's vhost PMD, rxonly) in every round:
what it sends there is its own ceiling. A size where a back-end's PVP rate comes within 10 % of
that ceiling is marked generator-bound: there the figure says how fast the traffic process is,
not the back-end (at large frames fastpath's traffic process sends far fewer frames than either
back-end takes; `fastpath bench vhost-net`, whose traffic is DPDK's, measures the back-ends).
With --fail-below, the judge is the median ratio of the rounds' pairs (`_judge`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from fastpath.bench._judge import judge
from fastpath.bench._report import environment, print_table, write_json
from fastpath.bench.vhost_net import WrongCheckout, check_checkout, checkout_of_this_fastpath
from fastpath.testing import PeerError, Testpmd, VhostNetProcess

SIZES = "64,128,256,512,1024,1518,imix"
BACKENDS = {
    "fastpath": "fastpath vhost-net --fwd io",
    "dpdk": "DPDK testpmd, vhost PMD, --forward-mode=io",
    "baseline": "fastpath vhost-net --fwd io of the --baseline checkout",
    "sink": "no back-end: the traffic process alone into DPDK's vhost PMD, rxonly",
}
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
                        "and 1518), comma-separated")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="measured length of each run, after a 1 s warm-up")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs of each back-end per size, alternated; a size's figure is "
                        "its best run, a ratio's the median over rounds")
    parser.add_argument("--peer", choices=["none", "dpdk"], default="none",
                        help="also run DPDK's vhost PMD and print fastpath/DPDK per size")
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="also run the back-end of another fastpath checkout (its core "
                        "built in place) and print fastpath/baseline per size")
    parser.add_argument("--fail-below", type=float, metavar="RATIO",
                        help="exit 1 if the median over rounds of fastpath/baseline (or, "
                        "without --baseline, fastpath/DPDK) falls below RATIO at any size")
    parser.add_argument("--burst", type=int, default=32, help="frames per burst, both sides")
    parser.add_argument("--queue-size", type=int, default=256, help="virtqueue size")
    parser.add_argument("--json", metavar="FILE", help="write every run and the summary")
    parser.add_argument("--plot", metavar="FILE.png", help="draw Mpps and Gbit/s per size")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (there is none either when standard error is "
                        "not a terminal: a line per run is printed all the same)")


@dataclass
class Run:
    """One run of one back-end at one size."""

    backend: str
    size: str
    mpps: float          # frames back (sink: sent) per second, best one-second window
    mean_mpps: float     # over the whole measured stretch
    frame_bytes: float   # mean frame length (FCS excluded)
    sent: int            # frames the traffic port put on the ring
    received: int        # frames that came back
    refused: int         # frames the ring had no room for (not sent)

    @property
    def gbps(self) -> float:
        """The best rate in Gbit/s of frame bytes."""
        return self.mpps * self.frame_bytes * 8 / 1000

    @property
    def loss(self) -> float:
        """Share of the frames sent that did not come back."""
        if self.backend == "sink":
            return 0.0
        return max(0, self.sent - self.received) / self.sent if self.sent else 0.0

    @property
    def refused_share(self) -> float:
        """Share of the frames offered to the ring that found no room."""
        offered = self.sent + self.refused
        return self.refused / offered if offered else 0.0


def traffic_command(sock: str, size: str, seconds: float, burst: int, queue_size: int,
                    json_path: str) -> list[str]:
    """The traffic process: txonly on a virtio-user port, counting what comes back."""
    profile = ["--profile", "imix"] if size == "imix" else ["--profile", "udp64", "--size",
                                                            size]
    return [sys.executable, "-m", "fastpath.cli", "fwd",
            f"virtio-user:{sock},queue_size={queue_size}", "--fwd", "txonly", *profile,
            "--burst", str(burst), "--duration", str(WARM_UP_SECONDS + seconds),
            "--stats-period", str(SAMPLE_SECONDS), "--cpu", str(TRAFFIC_CPU), "-q",
            "--json", json_path]


def start_backend(backend: str, sock: str, burst: int, baseline: str | None):
    """The back-end process, listening on `sock` on BACKEND_CPU."""
    if backend in ("dpdk", "sink"):
        return Testpmd.vhost(sock, forward="io" if backend == "dpdk" else "rxonly",
                             cpu=BACKEND_CPU, extra=[f"--burst={burst}"])
    return VhostNetProcess(sock, fwd="io", cpu=BACKEND_CPU,
                           source=baseline if backend == "baseline" else None,
                           extra=["--burst", str(burst), "--stats-period", "0"])


def measure(backend: str, size: str, args: argparse.Namespace) -> Run:
    """One run; raises RuntimeError or PeerError with the reason when a side fails."""
    with tempfile.TemporaryDirectory(prefix="fastpath-pvp-") as tmp:
        sock = os.path.join(tmp, "vhost.sock")
        result_path = os.path.join(tmp, "traffic.json")
        server = start_backend(backend, sock, args.burst, args.baseline)
        try:
            if backend == "baseline":
                check_checkout(backend, server, Path(args.baseline).resolve())
            elif backend == "fastpath" and args.baseline:
                check_checkout(backend, server, checkout_of_this_fastpath())
            command = traffic_command(sock, size, args.seconds, args.burst, args.queue_size,
                                      result_path)
            done = subprocess.run(command, capture_output=True, text=True,
                                  timeout=WARM_UP_SECONDS + args.seconds + 120)
            if done.returncode != 0 or not Path(result_path).exists():
                raise RuntimeError(f"the traffic process failed ({done.returncode}):\n"
                                   f"{done.stdout}{done.stderr}")
            result = json.loads(Path(result_path).read_text())
        finally:
            if backend in ("dpdk", "sink"):
                server.stop()
            else:
                server.kill()
    return _run_from(backend, size, result)


def _run_from(backend: str, size: str, result: dict) -> Run:
    (port,) = result["ports"]
    name = port["port"]
    # Frames back, or for the sink frames sent: [rx, tx, tx_dropped] in each sample.
    counter = 1 if backend == "sink" else 0
    steady = [(s["seconds"], s["ports"][name][counter]) for s in result["samples"]
              if s["seconds"] >= WARM_UP_SECONDS]
    if len(steady) < 2:
        raise RuntimeError("the traffic process reported too few samples")
    # Of frames back, or for the sink (nothing back) of frames sent.
    moved = "tx" if backend == "sink" else "rx"
    frame_bytes = (port[f"{moved}_bytes"] / port[f"{moved}_frames"] if port[f"{moved}_frames"]
                   else 0.0)
    return Run(backend, size, _best_rate(steady) / 1e6, _rate(steady[0], steady[-1]) / 1e6,
               frame_bytes, port["tx_frames"], port["rx_frames"], port["tx_dropped"])


def _rate(first: tuple[float, int], last: tuple[float, int]) -> float:
    return (last[1] - first[1]) / max(last[0] - first[0], 1e-9)


def _best_rate(samples: list[tuple[float, int]]) -> float:
    # The best stretch of about a second: the host moves the two vCPUs closer or further apart
    # every few seconds, and the best stretch is the one where neither side was held back.
    span = max(1, round(1.0 / SAMPLE_SECONDS))
    rates = [_rate(samples[i], samples[i + span]) for i in range(len(samples) - span)]
    return max(rates, default=_rate(samples[0], samples[-1]))


def summarize(runs: list[Run], sizes: list[str], backends: list[str]) -> list[dict]:
    """Per size: each back-end's best run, medians, refusals and loss, whether it is
    generator-bound (with a "sink" among the back-ends), and the ratios to fastpath, of the
    best runs and the median of the rounds' pairs."""
    summary = []
    for size in sizes:
        row: dict = {"size": size}
        for backend in backends:
            mine = [r for r in runs if r.size == size and r.backend == backend]
            best = max(mine, key=lambda r: r.mpps)
            row[backend] = {"mpps": best.mpps, "gbps": best.gbps, "loss": best.loss,
                            "refused": best.refused, "refused_share": best.refused_share,
                            "median_mpps": statistics.median(r.mpps for r in mine),
                            "runs_mpps": [r.mpps for r in mine]}
        if "sink" in backends:
            ceiling = row["sink"]["mpps"]
            for backend in backends:
                if backend != "sink":
                    row[backend]["generator_bound"] = (row[backend]["mpps"]
                                                       >= GENERATOR_BOUND * ceiling)
        for other in backends[1:]:
            if other == "sink":
                continue
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


def plot(summary: list[dict], backends: list[str], path: str) -> None:
    """Grouped bars: Mpps (top) and Gbit/s (bottom) per size and back-end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [str(s["size"]) for s in summary]
    width = 0.8 / len(backends)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for k, backend in enumerate(backends):
        xs = [i + (k - (len(backends) - 1) / 2) * width for i in range(len(sizes))]
        top.bar(xs, [s[backend]["mpps"] for s in summary], width, label=BACKENDS[backend])
        bottom.bar(xs, [s[backend]["gbps"] for s in summary], width)
    top.set_ylabel("Mpps (best 1 s)")
    bottom.set_ylabel("Gbit/s (frame bytes)")
    bottom.set_xticks(range(len(sizes)), sizes)
    bottom.set_xlabel("frame size (bytes, FCS excluded)")
    top.legend(fontsize="small")
    top.set_title("PVP through a vhost-user back-end, fastpath fwd txonly as traffic")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="run", file=sys.stderr, disable=not enabled,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} runs [{elapsed}<{remaining}]")


def _parse_sizes(text: str) -> list[str]:
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if part != "imix" and not (part.isdigit() and 60 <= int(part) <= 2030):
            raise ValueError(f"--sizes: {part!r} is neither imix nor a size of 60 to 2030 "
                             "bytes")
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
                    progress.write(f"{backend:>8} {size:>5}: {r.mpps:6.2f} Mpps best, "
                                   f"{r.mean_mpps:6.2f} mean, loss {r.loss:.2%}",
                                   file=sys.stderr)
                    progress.update()
    return True


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; returns the exit status."""
    try:
        sizes = _parse_sizes(args.sizes)
    except ValueError as e:
        print(f"fastpath bench pvp: {e}", file=sys.stderr)
        return 2
    backends = ["fastpath"]
    if args.baseline:
        if not (Path(args.baseline) / "fastpath" / "__init__.py").exists():
            print(f"fastpath bench pvp: --baseline {args.baseline} is not a fastpath checkout",
                  file=sys.stderr)
            return 2
        backends.append("baseline")
    if args.peer == "dpdk":
        if Testpmd.find() is None:
            print("fastpath bench pvp: --peer dpdk needs dpdk-testpmd (make peers)",
                  file=sys.stderr)
            return 2
        backends.append("dpdk")
    if args.fail_below is not None and len(backends) == 1:
        print("fastpath bench pvp: --fail-below needs --baseline or --peer dpdk",
              file=sys.stderr)
        return 2
    if len(os.sched_getaffinity(0)) < 2:
        print("fastpath bench pvp: needs two CPUs (one per side)", file=sys.stderr)
        return 2
    backends.append("sink")
    env = environment()
    print("  ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    runs: list[Run] = []
    try:
        if not _measure_all(runs, sizes, backends, args):
            return 1
    except WrongCheckout as e:
        print(f"fastpath bench pvp: {e}", file=sys.stderr)
        return 2
    summary = summarize(runs, sizes, backends)
    judged = ("baseline" if args.baseline else "dpdk") if args.fail_below is not None else None
    print()
    compared = [b for b in backends[1:] if b != "sink"]
    headers = ["size"]
    for backend in backends:
        headers += [f"{backend} Mpps", "Gbit/s"]
        if backend != "sink":
            headers += ["loss", "refused"]
    headers += [f"fastpath/{b}" for b in compared]
    rows = []
    for s in summary:
        row = [s["size"]]
        for backend in backends:
            b = s[backend]
            row += [f"{b['mpps']:.2f}{' *' if b.get('generator_bound') else ''}",
                    f"{b['gbps']:.2f}"]
            if backend != "sink":
                row += [f"{b['loss']:.2%}", f"{b['refused_share']:.1%}"]
        row += [f"{s[f'fastpath/{b}']:.2f}" for b in compared]
        rows.append(row)
    print_table(headers, rows)
    print(f"(best run of each; refused: frames the ring had no room for, of those offered; "
          f"sink: the traffic process alone; * generator-bound, within "
          f"{1 - GENERATOR_BOUND:.0%} of the sink's rate)")
    if args.json:
        write_json(args.json, {"environment": env, "backends": {b: BACKENDS[b]
                                                                for b in backends},
                               "generator_bound_within": 1 - GENERATOR_BOUND,
                               "summary": summary,
                               "runs": [asdict(r) | {"gbps": r.gbps, "loss": r.loss,
                                                     "refused_share": r.refused_share}
                                        for r in runs]})
    if args.plot:
        plot(summary, backends, args.plot)
        print(f"plot: {args.plot}")
    if judged:
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
