"""`fastpath bench iops`: IOPS, MiB/s and latency of one workload on a bdev, as bdevperf
measures them, and with --peer fio the same job through fio, or with --baseline the same job
from another checkout, alternated pair by pair.

The fastpath side is an `IoJob` on a poll host (a reactor) pinned to one CPU, keeping the
queue depth in flight on a bdev channel; fio runs the same workload, queue depth and I/O size
with the engine that does what the bdev does (null for null, io_uring on the same file for
file), pinned to the same CPU. Latencies come from an HdrHistogram (fastpath) or fio's own
percentiles. JSON uses bdevperf's field names.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import fastpath
from fastpath.bench._judge import judge
from fastpath.bench._report import environment, print_table, write_json
from fastpath.pmd import PollHost
from fastpath.spdk_like import BDEV_KINDS, WORKLOADS, IoJob, open_bdev
from fastpath.testing import source_python

PEERS = ("fio", "qsd")
TARGETS = ("local", "vhost", "nvme")
# The workloads fio runs the same way (its --rw), and the bdev kinds it has an engine for.
_FIO_WORKLOADS = {"read": "read", "write": "write", "randread": "randread",
                  "randwrite": "randwrite", "randrw": "randrw", "unmap": "trim"}
_FIO_ENGINES = {"null": "null", "file": "io_uring"}
_PERCENTILES = (50.0, 99.0, 99.9)


@dataclass
class Result:
    """One run: who ran it and what it measured (latencies in microseconds)."""

    runner: str
    workload: str
    queue_depth: int
    io_size: int
    runtime: float
    iops: float
    mibps: float
    io_failed: int
    avg_latency_us: float
    min_latency_us: float
    max_latency_us: float
    percentiles_us: dict[str, float]
    per_second_iops: list[float] = field(default_factory=list)

    def bdevperf_json(self, job: str, cpu: int, rwmix: int) -> dict:
        """This run in bdevperf's JSON fields (and the percentiles bdevperf prints apart)."""
        entry = {"job": job, "core_mask": hex(1 << cpu), "workload": self.workload}
        if self.workload == "randrw":
            entry["percentage"] = rwmix
        entry |= {"status": "failed" if self.io_failed else "finished",
                  "queue_depth": self.queue_depth, "io_size": self.io_size,
                  "runtime": self.runtime, "iops": self.iops, "mibps": self.mibps,
                  "io_failed": self.io_failed, "io_timeout": 0,
                  "avg_latency_us": self.avg_latency_us,
                  "min_latency_us": self.min_latency_us,
                  "max_latency_us": self.max_latency_us,
                  "latency_percentiles_us": self.percentiles_us,
                  "runner": self.runner}
        return entry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    kinds = ", ".join(f"{k.name}:{k.argument}" for k in BDEV_KINDS.values())
    parser.add_argument("--bdev", default="null:1G",
                        help=f"the bdev to measure ({kinds}; options as ,block_size=4096)")
    parser.add_argument("--target", choices=TARGETS, default="local",
                        help="local: the job submits to the bdev on its own CPU; vhost: the "
                        "bdev behind fastpath vhost-blk on --cpu, the job a vhost-user-blk "
                        "front-end (BlkFrontend) on the other CPU; nvme: the job drives a "
                        "modelled NVMe controller over the bdev through a queue pair")
    parser.add_argument("--workload", choices=list(WORKLOADS), default="randread",
                        help="bdevperf's workloads: sequential read/write, random "
                        "randread/randwrite/randrw (--rwmix), verify (write, read back, "
                        "compare), flush, unmap")
    parser.add_argument("--qd", type=int, default=32, help="requests kept in flight")
    parser.add_argument("--io-size", type=int, default=4096, help="bytes per request")
    parser.add_argument("--time", type=float, default=5.0, help="seconds each run lasts")
    parser.add_argument("--rwmix", type=int, default=70,
                        help="randrw: percent of requests that are reads")
    parser.add_argument("--cpu", type=int, default=0, help="the CPU the job (or fio) runs on")
    parser.add_argument("--peer", choices=PEERS,
                        help="run the same job through a peer too, alternated, and print the "
                        "ratio: fio (local: its null engine for null, io_uring on the file for "
                        "file) or qsd (vhost: qemu-storage-daemon's vhost-user-blk export of "
                        "the same disk, null-co for null, the file for file, a raw file in "
                        "/dev/shm for malloc, in an iothread that polls, on --cpu)")
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="run the same job from another fastpath checkout (its core built "
                        "in place), alternated, and print this tree's IOPS over its")
    parser.add_argument("--tree", metavar="CHECKOUT",
                        help="with --baseline: the checkout measured as fastpath (default: "
                        "the one this command runs from)")
    parser.add_argument("--fail-below", type=float, metavar="RATIO",
                        help="with --peer or --baseline: exit 1 if the median IOPS ratio is "
                        "below RATIO")
    parser.add_argument("--pairs", type=int, default=3,
                        help="with --peer or --baseline: pairs of runs, order alternating; the "
                        "median ratio counts")
    parser.add_argument("--json", metavar="FILE", help="write the results (bdevperf's fields)")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw IOPS per second and the latency percentiles of each run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _progress(total: float, label: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=round(total), unit="s", desc=label, file=sys.stderr, disable=not enabled,
                leave=False)


def run_fastpath(args: argparse.Namespace, progress: bool = True) -> Result:
    """The job on the target: the bdev on this process's reactor (local, nvme), or behind
    fastpath vhost-blk (vhost)."""
    if args.target == "vhost":
        with _vhost_blk(args) as socket:
            return run_job(args, f"vhost:{socket},queue_size={max(args.qd, 128)}",
                           _other_cpu(args.cpu), "fastpath", progress)
    spec = f"nvme:{args.bdev}" if args.target == "nvme" else args.bdev
    return run_job(args, spec, args.cpu, "fastpath", progress)


def run_job(args: argparse.Namespace, spec: str, cpu: int, runner: str,
            progress: bool = True) -> Result:
    """An IoJob on the bdev `spec` names, on a reactor of its own pinned to `cpu`."""
    bdev = open_bdev(spec)
    try:
        channel = bdev.open_channel(args.qd)
        job = IoJob(channel, args.workload, queue_depth=args.qd, io_size=args.io_size,
                    rwmix=args.rwmix)
        # Long kernel calls: the requests in flight while the host is back in Python wait
        # longer, and would show in the tail latencies.
        host = PollHost("reactor-0", cpu=cpu, rounds=1 << 16)
        host.add(job)
        samples: list[float] = []
        host.start()
        try:
            start = last_time = time.monotonic()
            first = last = job.completed
            with _progress(args.time, f"{runner} {args.workload}", progress) as bar:
                while (now := time.monotonic()) - start < args.time:
                    time.sleep(min(1.0, start + args.time - now))
                    now, done = time.monotonic(), job.completed
                    samples.append((done - last) / (now - last_time))
                    bar.set_postfix_str(f"{samples[-1] / 1e6:.2f} M IOPS")
                    bar.update(round(now - start) - bar.n)
                    last, last_time = done, now
            runtime = time.monotonic() - start
            completed = job.completed - first
            job.drain()
            deadline = time.monotonic() + 10
            while job.in_flight and time.monotonic() < deadline:
                time.sleep(0.001)
        finally:
            host.stop()
        job.service()
        histogram = job.histogram
        iops = completed / runtime
        return Result(
            runner=runner, workload=args.workload, queue_depth=args.qd,
            io_size=args.io_size, runtime=runtime, iops=iops,
            mibps=iops * args.io_size / (1 << 20), io_failed=job.failed,
            avg_latency_us=histogram.get_mean_value() / 1e3,
            min_latency_us=histogram.get_min_value() / 1e3,
            max_latency_us=histogram.get_max_value() / 1e3,
            percentiles_us={f"p{p:g}": histogram.get_value_at_percentile(p) / 1e3
                            for p in _PERCENTILES},
            per_second_iops=samples)
    finally:
        bdev.close()


def _other_cpu(cpu: int) -> int:
    others = sorted(os.sched_getaffinity(0) - {cpu})
    return others[0] if others else cpu


def _pin(pid: int, cpu: int) -> None:
    # Every thread of the process (an iothread started before it listens included).
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(task), {cpu})
        except OSError:
            pass


@contextlib.contextmanager
def _vhost_blk(args: argparse.Namespace):
    """fastpath vhost-blk serving args.bdev on args.cpu; yields its socket."""
    from fastpath.testing import VhostBlkProcess

    with tempfile.TemporaryDirectory(prefix="fastpath-iops-") as scratch:
        socket = f"{scratch}/blk.sock"
        with VhostBlkProcess(socket, args.bdev, cpu=args.cpu, time_limit=args.time + 300,
                             startup_timeout=180.0):
            yield socket


def qsd_disk(args: argparse.Namespace, scratch: str, create: bool = True) -> dict:
    """qemu-storage-daemon's best setup for the disk args.bdev names: its null driver reading
    zeros for null, the file for file, a raw file in /dev/shm for malloc."""
    from fastpath.spdk_like import parse_size

    kind, _, rest = args.bdev.partition(":")
    target = rest.split(",")[0]
    if kind == "null":
        return {"null_size": parse_size(target)}
    if kind == "file":
        return {"image": target}
    if kind == "malloc":
        image = Path("/dev/shm") / f"{Path(scratch).name}.img"
        if create:
            # Allocated, as the malloc bdev's memfd is: reads of a hole would cost tmpfs
            # nothing, and writes into one an allocation each.
            with open(image, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, parse_size(target))
        return {"image": image}
    raise ValueError(f"qemu-storage-daemon has no disk like the {kind} bdev (it serves "
                     "null, file and malloc's memory as a file in /dev/shm)")


def run_qsd(args: argparse.Namespace, progress: bool = True) -> Result:
    """The same job through a vhost-user-blk front-end on qemu-storage-daemon's export of the
    same disk, on args.cpu, in an iothread that polls."""
    from fastpath.testing import StorageDaemon

    with tempfile.TemporaryDirectory(prefix="fastpath-qsd-") as scratch:
        disk = qsd_disk(args, scratch)
        socket = f"{scratch}/qsd.sock"
        try:
            with StorageDaemon(socket, iothread=True, poll_max_ns=QSD_POLL_NS,
                               time_limit=args.time + 120, **disk) as daemon:
                _pin(daemon.pid, args.cpu)
                return run_job(args, f"vhost:{socket},queue_size={max(args.qd, 128)}",
                               _other_cpu(args.cpu), "qsd", progress)
        finally:
            if "image" in disk and str(disk["image"]).startswith("/dev/shm/"):
                Path(disk["image"]).unlink(missing_ok=True)


# How long qemu-storage-daemon's iothread busy-polls before it sleeps (its own maximum is
# about 32 ms): long enough that it never sleeps while the job keeps its queue full.
QSD_POLL_NS = 32_000_000


def fio_command(args: argparse.Namespace) -> list[str]:
    """fio doing what the fastpath job does; ValueError where it has no equivalent."""
    kind, _, rest = args.bdev.partition(":")
    target = rest.split(",")[0]   # block_size and the like change nothing fio does
    if kind not in _FIO_ENGINES:
        raise ValueError(f"fio has no engine that does what the {kind} bdev does (fio's: "
                         f"{', '.join(f'{k} for {v}' for k, v in _FIO_ENGINES.items())})")
    if args.workload not in _FIO_WORKLOADS:
        raise ValueError(f"fio does not run the {args.workload} workload the way bdevperf "
                         f"does (fio runs: {', '.join(_FIO_WORKLOADS)})")
    command = ["fio", "--name=fastpath-peer", f"--ioengine={_FIO_ENGINES[kind]}",
               f"--rw={_FIO_WORKLOADS[args.workload]}", f"--bs={args.io_size}",
               f"--iodepth={args.qd}", "--time_based", f"--runtime={args.time:g}",
               f"--cpus_allowed={args.cpu}", "--output-format=json", "--randrepeat=0",
               "--norandommap"]
    if args.workload == "randrw":
        command.append(f"--rwmixread={args.rwmix}")
    if kind == "null":
        from fastpath.spdk_like import parse_size

        command.append(f"--size={parse_size(target)}")
    else:
        command += [f"--filename={target}", "--direct=1"]
    return command


def run_fio(args: argparse.Namespace, progress: bool = True) -> Result:
    """The same job through fio."""
    command = fio_command(args)
    with _progress(args.time, f"fio {args.workload}", progress) as bar:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        start = time.monotonic()
        while process.poll() is None:
            time.sleep(0.2)
            bar.update(min(round(time.monotonic() - start), round(args.time)) - bar.n)
        out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"fio failed ({process.returncode}): {err.strip()[-500:]}")
    job = json.loads(out[out.index("{"):])["jobs"][0]
    sides = [job[s] for s in ("read", "write", "trim") if job[s]["total_ios"] > 0]
    runtime = job["job_runtime"] / 1e3
    ios = sum(s["total_ios"] for s in sides)
    latency = [s["lat_ns"] for s in sides]
    weights = [s["total_ios"] for s in sides]
    mean = sum(w * lat["mean"] for w, lat in zip(weights, latency, strict=True)) / ios
    percentiles = {}
    for p in _PERCENTILES:
        key = f"{p:.6f}"
        percentiles[f"p{p:g}"] = max(s["clat_ns"]["percentile"][key] for s in sides) / 1e3
    return Result(
        runner="fio", workload=args.workload, queue_depth=args.qd, io_size=args.io_size,
        runtime=runtime, iops=ios / runtime, mibps=ios * args.io_size / runtime / (1 << 20),
        io_failed=job.get("error", 0), avg_latency_us=mean / 1e3,
        min_latency_us=min(lat["min"] for lat in latency) / 1e3,
        max_latency_us=max(lat["max"] for lat in latency) / 1e3, percentiles_us=percentiles)


class WrongCheckout(RuntimeError):
    """A run from a checkout ran another checkout's fastpath."""


def run_checkout(args: argparse.Namespace, checkout: Path, side: str) -> Result:
    """The same job run by the fastpath of `checkout` alone (nothing else importable), as
    `side` ("fastpath" for the tree, "baseline")."""
    python, env = source_python(checkout)
    with tempfile.TemporaryDirectory(prefix="fastpath-iops-") as scratch:
        report = Path(scratch) / "run.json"
        command = [*python, "-m", "fastpath.cli", "bench", "iops", "--bdev", args.bdev,
                   "--target", args.target,
                   "--workload", args.workload, "--qd", str(args.qd), "--io-size",
                   str(args.io_size), "--time", str(args.time), "--rwmix", str(args.rwmix),
                   "--cpu", str(args.cpu), "--no-progress", "--json", str(report)]
        # The whole process on the job's CPU, as fio's is: whatever else the checkout's
        # fastpath runs in it shares the CPU with the reactor, as it would in a user's program.
        done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True,
                              timeout=args.time + 300,
                              preexec_fn=lambda: os.sched_setaffinity(0, {args.cpu}))
        if done.returncode not in (0, 1) or not report.exists():
            raise RuntimeError(f"the {side} run from {checkout} failed ({done.returncode}): "
                               f"{done.stderr.strip()[-800:]}")
        data = json.loads(report.read_text())
    ran = data.get("fastpath_file")
    if ran is None or Path(ran).resolve().parent.parent != checkout.resolve():
        raise WrongCheckout(f"the {side} run from {checkout} ran fastpath from "
                            f"{ran or 'a checkout that does not say'}")
    entry = data["results"][0]
    return Result(
        runner=side, workload=entry["workload"], queue_depth=entry["queue_depth"],
        io_size=entry["io_size"], runtime=entry["runtime"], iops=entry["iops"],
        mibps=entry["mibps"], io_failed=entry["io_failed"],
        avg_latency_us=entry["avg_latency_us"], min_latency_us=entry["min_latency_us"],
        max_latency_us=entry["max_latency_us"], percentiles_us=entry["latency_percentiles_us"],
        per_second_iops=data["per_second_iops"][0])


def _row(result: Result) -> list:
    p = result.percentiles_us
    return [result.runner, f"{result.runtime:.2f}", f"{result.iops / 1e6:.3f}",
            f"{result.mibps:.1f}", result.io_failed, f"{result.avg_latency_us:.2f}",
            f"{result.min_latency_us:.2f}", f"{result.max_latency_us:.1f}",
            f"{p['p50']:.2f}", f"{p['p99']:.2f}", f"{p['p99.9']:.2f}"]


def plot(results: list[Result], path: str) -> None:
    """IOPS per second of each fastpath run, and every run's latency percentiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for k, result in enumerate(r for r in results if r.per_second_iops):
        left.plot(range(1, len(result.per_second_iops) + 1),
                  [v / 1e6 for v in result.per_second_iops], marker="o",
                  label=f"{result.runner} run {k + 1}")
    left.set_xlabel("second")
    left.set_ylabel("M IOPS")
    left.set_title("IOPS per second")
    left.legend()
    labels = ["avg", *(f"p{p:g}" for p in _PERCENTILES)]
    width = 0.8 / max(len(results), 1)
    for k, result in enumerate(results):
        values = [result.avg_latency_us, *result.percentiles_us.values()]
        right.bar([i + k * width for i in range(len(labels))], values, width,
                  label=f"{result.runner} #{k + 1}")
    right.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels)
    right.set_ylabel("µs")
    right.set_yscale("log")
    right.set_title("latency")
    right.legend(fontsize="small")
    figure.suptitle(f"{results[0].workload}, QD {results[0].queue_depth}, "
                    f"{results[0].io_size} B")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; returns the exit status."""
    if args.qd < 1 or args.io_size < 1 or args.time <= 0 or args.pairs < 1:
        print("--qd, --io-size, --time and --pairs must be positive", file=sys.stderr)
        return 2
    if args.peer and args.baseline:
        print("--peer and --baseline: one comparison at a time", file=sys.stderr)
        return 2
    wanted = {"fio": "local", "qsd": "vhost"}
    if args.peer and wanted[args.peer] != args.target:
        print(f"--peer {args.peer} runs the {wanted[args.peer]} target's job "
              f"(--target {wanted[args.peer]})", file=sys.stderr)
        return 2
    try:
        open_bdev(args.bdev).close()
        if args.peer == "fio":
            fio_command(args)
            if shutil.which("fio") is None:
                raise ValueError("fio is not installed (make peers installs it)")
        if args.peer == "qsd":
            qsd_disk(args, "/tmp/check", create=False)
            if shutil.which("qemu-storage-daemon") is None:
                raise ValueError("qemu-storage-daemon is not installed (make peers installs "
                                 "it)")
    except (ValueError, OSError) as e:
        print(f"fastpath bench iops: {e}", file=sys.stderr)
        return 2
    progress = not args.no_progress and sys.stderr.isatty()
    print(f"{args.workload} on {args.bdev}, QD {args.qd}, {args.io_size} B, "
          f"{args.time:g} s per run, CPU {args.cpu}", file=sys.stderr)
    if args.baseline:
        tree = Path(args.tree or Path(fastpath.__file__).resolve().parent.parent)
        runners = {"fastpath": lambda: run_checkout(args, tree, "fastpath"),
                   "baseline": lambda: run_checkout(args, Path(args.baseline), "baseline")}
    elif args.peer:
        peer = run_fio if args.peer == "fio" else run_qsd
        runners = {"fastpath": lambda: run_fastpath(args, progress),
                   args.peer: lambda: peer(args, progress)}
    else:
        runners = {"fastpath": lambda: run_fastpath(args, progress)}
    other = next((name for name in runners if name != "fastpath"), None)
    results: list[Result] = []
    pairs: list[tuple[float, float]] = []
    try:
        for pair in range(args.pairs if other else 1):
            order = list(runners) if pair % 2 == 0 else list(reversed(runners))
            by_runner = {}
            for name in order:
                by_runner[name] = runners[name]()
                results.append(by_runner[name])
            if other:
                pairs.append((by_runner["fastpath"].iops, by_runner[other].iops))
    except (RuntimeError, WrongCheckout, OSError) as e:
        print(f"fastpath bench iops: {e}", file=sys.stderr)
        return 2
    ratios = [tree_iops / other_iops for tree_iops, other_iops in pairs]
    print_table(["runner", "runtime s", "M IOPS", "MiB/s", "failed", "avg µs", "min µs",
                 "max µs", "p50 µs", "p99 µs", "p99.9 µs"], [_row(r) for r in results])
    verdict = None
    if ratios:
        print(f"fastpath/{other} IOPS: median {statistics.median(ratios):.2f} of "
              f"{len(ratios)} alternated pair(s) ({', '.join(f'{r:.2f}' for r in ratios)})")
        if args.fail_below is not None:
            verdict = judge({"iops": pairs}, args.fail_below)
            print(f"fastpath/{other} {'at or above' if verdict.passed else 'BELOW'} "
                  f"{args.fail_below}")
    if args.json:
        write_json(args.json, {
            "results": [r.bdevperf_json(args.bdev, args.cpu, args.rwmix) for r in results],
            "core_count": 1,
            "ratio": {"other": other, "median": statistics.median(ratios),
                      "pairs": ratios, "passed": verdict.passed if verdict else None}
            if ratios else None,
            "fastpath_file": fastpath.__file__,
            "per_second_iops": [r.per_second_iops for r in results],
            "environment": environment(),
            "settings": {k: v for k, v in vars(args).items() if k != "func"},
        })
        print(f"json: {args.json}")
    if args.plot:
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    if verdict is not None and not verdict.passed:
        return 1
    return 1 if any(r.io_failed for r in results) else 0
