"""`fastpath vhost-net` and `fastpath vhost-blk` in child processes, for tests and benchmarks
that point a real front-end at them."""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

# What `fastpath vhost-net` says about itself at start-up: "...; fastpath FILE revision REV".
_ORIGIN = re.compile(r"; fastpath (\S+) revision (\S+)$", re.M)
_PR_SET_PDEATHSIG = 1


class FastpathProcess:
    """A `fastpath` command (`arguments`, without --json, which this adds) in a child process,
    pinned to CPU `cpu`, up once it printed `ready`.

    It is killed if it is not up within `startup_timeout` seconds, `time_limit` seconds after it
    came up whatever happens, and when the thread that started it dies. Start-up is given long:
    a command loads its compiled kernels before it is up, and after any change to the package
    it compiles them again, which on a loaded machine has taken over a minute.

    `stop` ends it with SIGINT (it closes its connections and writes its statistics) and
    returns them as the command's JSON. With `source`, the fastpath of that checkout runs
    instead of this one, and nothing else can be imported in its place (see `source_python`);
    `checkouts` and `reported` tell which one really ran.
    """

    def __init__(self, arguments: Sequence[str], *, ready: str, cpu: int | None = 0,
                 time_limit: float = 120.0, startup_timeout: float = 180.0,
                 source: str | os.PathLike | None = None):
        self.name = f"fastpath {arguments[0]}"
        self._dir = tempfile.TemporaryDirectory(prefix=f"fastpath-{arguments[0]}-")
        self._json = Path(self._dir.name) / "stats.json"
        python, env, cwd = [sys.executable], None, None
        if source is not None:
            python, env = source_python(source)
            cwd = str(Path(source).resolve())
        self.command = [*python, "-m", "fastpath.cli", *arguments, "--json", str(self._json)]
        cpus = {cpu} if cpu is not None else None
        self._process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
            preexec_fn=lambda: _child_setup(cpus))
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._watchdog = threading.Timer(time_limit, self._process.kill)
        self._watchdog.daemon = True
        try:
            self._wait_for(ready, startup_timeout)
        except BaseException:
            self.kill()
            raise
        self._watchdog.start()

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._process.pid

    @property
    def output(self) -> str:
        """Everything the process printed so far."""
        return "".join(self._lines)

    @property
    def reported(self) -> dict | None:
        """What the process said it runs, {"file": fastpath.__file__, "revision": ...}, or None
        when it said nothing (a checkout older than that start-up line)."""
        match = _ORIGIN.search(self.output)
        if match is None:
            return None
        return {"file": match.group(1),
                "revision": None if match.group(2) == "unknown" else match.group(2)}

    def checkouts(self) -> set[str]:
        """The checkouts whose compiled core the running process has loaded (from its memory
        map), whatever it says about itself: the directory that holds each `fastpath` package."""
        return loaded_checkouts(self.pid)

    def stop(self, timeout: float = 30.0) -> dict:
        """End the process with SIGINT and return its final statistics."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"{self.name} did not stop:\n{self.output}") from None
        finally:
            self._watchdog.cancel()
        self._reader.join(5)
        if self._process.returncode != 0 or not self._json.exists():
            raise RuntimeError(f"{self.name} failed ({self._process.returncode}):\n"
                               f"{self.output}")
        result = json.loads(self._json.read_text())
        self._dir.cleanup()
        return result

    def kill(self) -> None:
        """End the process at once (SIGKILL), as a crash would."""
        self._watchdog.cancel()
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    def _read(self) -> None:
        for line in self._process.stdout:
            self._lines.append(line)

    def _wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self._process.returncode}):\n"
                                   f"{self.output}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{self.output}")
            time.sleep(0.02)


class VhostNetProcess(FastpathProcess):
    """`fastpath vhost-net` on the socket `path` (listening, or connecting with `client`), as
    `FastpathProcess` runs a command."""

    def __init__(self, path: str | os.PathLike, *, fwd: str = "io", client: bool = False,
                 queues: int = 1, backoff: int = 0, cpu: int | None = 0,
                 extra: Sequence[str] = (), time_limit: float = 120.0,
                 startup_timeout: float = 180.0, source: str | os.PathLike | None = None):
        self.path = str(path)
        super().__init__(
            ["vhost-net", "--socket", self.path, "--fwd", fwd, "--queues", str(queues),
             "--backoff", str(backoff), *(["--client"] if client else []), *extra],
            ready="connecting to" if client else "listening on", cpu=cpu,
            time_limit=time_limit, startup_timeout=startup_timeout, source=source)


class VhostBlkProcess(FastpathProcess):
    """`fastpath vhost-blk` serving the bdev `bdev` (a spec: "file:PATH", "malloc:64M") on the
    socket `path`, with -v (connections and every error it logs in `output`), as
    `FastpathProcess` runs a command (in the FASTPATH_DEBUG=1 pass its kernels compile before it
    listens)."""

    def __init__(self, path: str | os.PathLike, bdev: str, *, queues: int = 1,
                 read_only: bool = False, cpu: int | None = None, extra: Sequence[str] = (),
                 time_limit: float = 180.0, startup_timeout: float = 180.0,
                 source: str | os.PathLike | None = None):
        self.path = str(path)
        super().__init__(
            ["vhost-blk", "--socket-path", self.path, "--bdev", bdev, "--queues", str(queues),
             "--stats-period", "0", "-v", *(["--readonly"] if read_only else []),
             *(["--cpu", str(cpu)] if cpu is not None else []), *extra],
            ready="listening on", cpu=cpu, time_limit=time_limit,
            startup_timeout=startup_timeout, source=source)


def _child_setup(cpus: set[int] | None) -> None:
    # In the child before exec: its CPU, and SIGTERM when the thread that started it dies, so
    # that a crashed benchmark leaves no busy-polling back-end behind.
    if cpus:
        os.sched_setaffinity(0, cpus)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def source_python(source: str | os.PathLike) -> tuple[list[str], dict[str, str]]:
    """The interpreter command and environment that import fastpath from the checkout
    `source` (its core built in place) and from nowhere else, with this environment's other
    packages: a baseline to compare the working tree with. Run it with `source` as the current
    directory.

    An editable install's import hook outranks PYTHONPATH; without the site module (-S) it is not
    loaded, and the environment's packages come in through PYTHONPATH, after `source`, instead.
    -P keeps the current directory (or a script's) off the path, which `-m` would otherwise put
    first; variables that would add or move other paths are dropped.
    """
    packages = [p for p in site.getsitepackages() if os.path.isdir(p)]
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONSAFEPATH")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(source).resolve()), *packages])
    return [sys.executable, "-S", "-P"], env


def loaded_checkouts(pid: int) -> set[str]:
    """The checkouts whose compiled core (``fastpath/_core/*.so``) process `pid` has mapped:
    the directory that holds each such `fastpath` package."""
    roots = set()
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            path = line.rstrip("\n").split(maxsplit=5)[-1]
            parts = Path(path).parts
            if path.endswith(".so") and parts[-3:-1] == ("fastpath", "_core"):
                roots.add(str(Path(*parts[:-3])))
    return roots


def received_frames(result: dict) -> int:
    """Frames the back-end received over every connection and queue pair of a `stop` result."""
    return sum(p["rx_frames"] for c in result["connections"] for p in c["queue_pairs"])


def sent_frames(result: dict) -> int:
    """Frames the back-end delivered to receive buffers, over every connection and pair."""
    return sum(p["tx_frames"] for c in result["connections"] for p in c["queue_pairs"])
