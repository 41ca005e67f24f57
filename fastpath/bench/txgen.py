"""`fastpath bench txgen`: fastpath's traffic generator against DPDK's, into the same sinks.

The generators: `fastpath fwd virtio-user:SOCK --fwd txonly` (Scapy-made udp64 frames of the
size, sent from a shared mbuf pool without a copy) and DPDK testpmd's virtio-user txonly
(--txpkts=SIZE), each on one CPU. The sinks, on the other CPU: DPDK's vhost PMD with
--forward-mode=rxonly, and `fastpath vhost-net --fwd drop`. A run's figure is the best second
of frames the generator had accepted by the ring (fastpath's samples every quarter second from
its own JSON, testpmd's from its telemetry), after a second of warm-up.

Generators are alternated run by run, and which goes first alternates by round, so that each
ratio compares two runs of the same minutes of this shared machine. Per size and sink the table
shows each generator's best run, the ratio of the best runs and the median of the rounds'
ratios. Into a sink slower than both generators the ratio nears 1 whatever the generators can
do: both sinks are measured so that a sink's ceiling (the higher of the two rates into it, when
they meet) is seen as such and not taken for the generator's.
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

from fastpath.bench._placement import (
    Placement,
    describe_same_placement,
    line_transfer_ns,
    same_placement,
)
from fastpath.bench._report import environment, print_table, write_json
from fastpath.testing import PeerError, Testpmd, VhostNetProcess

GENERATORS = {
    "fastpath": "fastpath fwd virtio-user:SOCK --fwd txonly (shared mbuf pool, zero copy)",
    "dpdk": "DPDK testpmd virtio-user, --forward-mode=txonly",
}
SINKS = {
    "dpdk": "DPDK testpmd vhost PMD, --forward-mode=rxonly",
    "fastpath": "fastpath vhost-net --fwd drop",
}
SIZES = "64,1518"
WARM_UP_SECONDS = 1.0
SAMPLE_SECONDS = 0.25
GENERATOR_CPU = 1
SINK_CPU = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    parser.add_argument("--sizes", default=SIZES,
                        help="frame sizes in bytes, FCS excluded, comma-separated (60 to 1518; "
                        f"default {SIZES})")
    parser.add_argument("--sinks", default="dpdk,fastpath",
                        help="the back-ends taking the frames, comma-separated: dpdk (vhost "
                        "PMD rxonly), fastpath (vhost-net --fwd drop)")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="measured length of each run, after a 1 s warm-up")
    parser.add_argument("--rounds", type=int, default=3,
                        help="pairs of runs per size and sink, their order alternated")
    parser.add_argument("--queue-size", type=int, default=1024,
                        help="virtqueue size of both generators")
    parser.add_argument("--burst", type=int, default=32, help="fastpath's frames per burst")
    parser.add_argument("--json", metavar="FILE", help="write every run and the summary")


@dataclass
class Run:
    """One generator's run into one sink."""

    generator: str
    sink: str
    size: int
    mpps: float          # the best second
    mean_mpps: float     # the whole measured stretch
    placement: Placement  # the two CPUs' distance just before and just after the run


def _rate(first: tuple[float, int], last: tuple[float, int]) -> float:
    return (last[1] - first[1]) / max(last[0] - first[0], 1e-9)


def best_rate(samples: list[tuple[float, int]]) -> float:
    """Frames per second over the best stretch of about a second of (seconds, count) samples:
    the host moves the two CPUs closer and further apart every few seconds, and the best
    stretch is the one where neither side was held back."""
    span = max(1, round(1.0 / SAMPLE_SECONDS))
    rates = [_rate(samples[i], samples[i + span]) for i in range(len(samples) - span)]
    return max(rates, default=_rate(samples[0], samples[-1]))


def _start_sink(sink: str, sock: str):
    if sink == "dpdk":
        return Testpmd.vhost(sock, forward="rxonly", cpu=SINK_CPU)
    return VhostNetProcess(sock, fwd="drop", cpu=SINK_CPU, extra=["--stats-period", "0"])


def _fastpath_samples(sock: str, size: int, args: argparse.Namespace,
                      tmp: str) -> list[tuple[float, int]]:
    result_path = os.path.join(tmp, "txgen.json")
    command = [sys.executable, "-m", "fastpath.cli", "fwd",
               f"virtio-user:{sock},queue_size={args.queue_size}", "--fwd", "txonly",
               "--profile", "udp64", "--size", str(size), "--burst", str(args.burst),
               "--duration", str(WARM_UP_SECONDS + args.seconds),
               "--stats-period", str(SAMPLE_SECONDS), "--cpu", str(GENERATOR_CPU), "-q",
               "--json", result_path]
    try:
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=WARM_UP_SECONDS + args.seconds + 120)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"fastpath fwd did not finish: {e}") from e
    if done.returncode != 0 or not Path(result_path).exists():
        raise RuntimeError(f"fastpath fwd failed ({done.returncode}):\n"
                           f"{done.stdout}{done.stderr}")
    result = json.loads(Path(result_path).read_text())
    (port,) = result["ports"]
    # Each sample's port entry is [rx, tx, tx_dropped]: frames the ring took are tx.
    return [(s["seconds"], s["ports"][port["port"]][1]) for s in result["samples"]
            if s["seconds"] >= WARM_UP_SECONDS]


def _dpdk_samples(sock: str, size: int, args: argparse.Namespace) -> list[tuple[float, int]]:
    with Testpmd.virtio_user(sock, forward="txonly", txpkts=size, queue_size=args.queue_size,
                             cpu=GENERATOR_CPU) as front:
        time.sleep(WARM_UP_SECONDS)
        samples = front.sample("opackets", args.seconds, SAMPLE_SECONDS)
        front.stop()
    return samples


def measure(generator: str, sink: str, size: int, args: argparse.Namespace) -> Run:
    """One run; raises RuntimeError or PeerError with the reason when a side fails."""
    cpus = (GENERATOR_CPU, SINK_CPU)
    before = line_transfer_ns(cpus)
    with tempfile.TemporaryDirectory(prefix="fastpath-txgen-") as tmp:
        sock = os.path.join(tmp, "vhost.sock")
        server = _start_sink(sink, sock)
        try:
            samples = (_fastpath_samples(sock, size, args, tmp) if generator == "fastpath"
                       else _dpdk_samples(sock, size, args))
        finally:
            if sink == "dpdk":
                server.stop()
            else:
                server.kill()
    if len(samples) < 2:
        raise RuntimeError(f"the {generator} generator reported too few samples")
    return Run(generator, sink, size, best_rate(samples) / 1e6,
               _rate(samples[0], samples[-1]) / 1e6, Placement(before, line_transfer_ns(cpus)))


def summarize(runs: list[Run], sizes: list[int], sinks: list[str]) -> list[dict]:
    """Per size and sink: each generator's best run, the ratio of the best runs, the median
    of the rounds' ratios (fastpath / DPDK), and the median of those rounds whose two runs
    had the same placement of the CPUs throughout."""
    summary = []
    for size in sizes:
        for sink in sinks:
            mine = [r for r in runs if (r.size, r.sink, r.generator) == (size, sink,
                                                                         "fastpath")]
            theirs = [r for r in runs if (r.size, r.sink, r.generator) == (size, sink, "dpdk")]
            if not mine or not theirs:
                continue
            pairs = [(a, b) for a, b in zip(mine, theirs, strict=False) if b.mpps > 0]
            ratios = [a.mpps / b.mpps for a, b in pairs]
            alike = same_placement([(a.mpps, a.placement, b.mpps, b.placement)
                                    for a, b in pairs])
            best_mine, best_theirs = max(r.mpps for r in mine), max(r.mpps for r in theirs)
            summary.append({"size": size, "sink": sink, "fastpath_mpps": best_mine,
                            "dpdk_mpps": best_theirs,
                            "best_ratio": best_mine / best_theirs if best_theirs else 0.0,
                            "median_ratio": statistics.median(ratios) if ratios else 0.0,
                            "ratios": ratios, "same_placement": alike})
    return summary


def _parse(args: argparse.Namespace) -> tuple[list[int], list[str]]:
    sizes = []
    for text in args.sizes.split(","):
        if not text.strip().isdigit() or not 60 <= int(text) <= 1518:
            raise ValueError(f"{text!r} is not a frame size of 60 to 1518 bytes")
        sizes.append(int(text))
    sinks = [s.strip() for s in args.sinks.split(",")]
    for sink in sinks:
        if sink not in SINKS:
            raise ValueError(f"unknown sink {sink!r}; choose from {', '.join(SINKS)}")
    if args.rounds < 1 or args.seconds <= 0:
        raise ValueError("--rounds must be at least 1 and --seconds above 0")
    return sizes, sinks


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; returns the exit status."""
    try:
        sizes, sinks = _parse(args)
    except ValueError as e:
        print(f"fastpath bench txgen: {e}", file=sys.stderr)
        return 2
    if Testpmd.find() is None:
        print("fastpath bench txgen: needs dpdk-testpmd (make peers)", file=sys.stderr)
        return 2
    if len(os.sched_getaffinity(0)) < 2:
        print("fastpath bench txgen: needs two CPUs (one per side)", file=sys.stderr)
        return 2
    env = environment()
    print("  ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    runs: list[Run] = []
    try:
        for size in sizes:
            for sink in sinks:
                for round_ in range(args.rounds):
                    order = ["fastpath", "dpdk"] if round_ % 2 == 0 else ["dpdk", "fastpath"]
                    for generator in order:
                        r = measure(generator, sink, size, args)
                        runs.append(r)
                        print(f"{size} B into {sink}: {generator} {r.mpps:.2f} Mpps "
                              f"(mean {r.mean_mpps:.2f}), CPUs {r.placement.describe()}",
                              flush=True)
    except (RuntimeError, PeerError) as e:
        print(f"fastpath bench txgen: {e}", file=sys.stderr)
        return 1
    summary = summarize(runs, sizes, sinks)
    print()
    print_table(["size", "sink", "fastpath Mpps", "DPDK Mpps", "best ratio", "median ratio",
                 "same placement"],
                [[s["size"], s["sink"], f"{s['fastpath_mpps']:.2f}", f"{s['dpdk_mpps']:.2f}",
                  f"{s['best_ratio']:.2f}", f"{s['median_ratio']:.2f}",
                  describe_same_placement(s["same_placement"])] for s in summary])
    print("(best second of each run; ratio fastpath/DPDK, of the best runs and median of the "
          "alternated pairs; same placement: the median ratio of the pairs whose two runs "
          "kept the CPUs where they were, per placement, with the pairs counted; where both "
          "generators meet, the rate is the sink's ceiling)")
    if args.json:
        write_json(args.json, {"environment": env, "generators": GENERATORS,
                               "sinks": {s: SINKS[s] for s in sinks}, "summary": summary,
                               "runs": [asdict(r) | {"placement_mode": r.placement.mode}
                                        for r in runs]})
    return 0
