"""DPDK testpmd as a real vhost-user peer, for the test suite and the benchmarks.

`Testpmd` runs one ``dpdk-testpmd`` process (DPDK 22.11) with one vdev: DPDK's virtio-user
front-end (`Testpmd.virtio_user`) or DPDK's vhost PMD back-end (`Testpmd.vhost`). Each instance
gets its own ``--file-prefix`` (``fastpath-<pid>-<n>``), ``--no-pci``, ``--lcores '(0,1)@CPU'``
(testpmd's main thread and its one forwarding thread on the same CPU), ``--stats-period 1``,
``--total-num-mbufs=32768`` and ``--no-flush-rx``; standard input is a pipe that stays open, so
testpmd never stops at end of file. Output (stdout and stderr together) is collected by a thread.

Memory. virtio-user must share all of its memory with the back-end, and two modes do that here:

* hugepages (``hugepages=True``): 2 MiB pages, ``--in-memory --single-file-segments``. In-memory
  mode backs each memseg list with one memfd (``MFD_HUGETLB``), so no hugetlbfs mount is needed
  (this machine has none) and no file is ever created in a hugetlbfs directory. Without
  ``--single-file-segments`` the memory takes more than 8 regions and the vhost-user handshake
  fails ("Too many memory regions"). The launcher makes sure `PAGES_PER_INSTANCE` pages are free
  first, raising ``/proc/sys/vm/nr_hugepages`` with `ensure_hugepages` if needed (it never lowers
  it, so the pages stay reserved for the next run). One instance takes about 45 pages.
* no hugepages (``hugepages=False``): ``--no-huge --no-shconf -m 256``, one 256 MiB memfd.
  (``--in-memory`` cannot be combined with ``--no-huge``.)

Both work on this machine (2 CPUs, root, DPDK 22.11.11). The default (``hugepages=None``) is
hugepages whenever they can be had (2 MiB default page size and enough free pages, or the right
to reserve them), otherwise no hugepages. Measured when this module was written (virtio-user
txonly on CPU 1 -> vhost PMD rxonly on CPU 0, split ring of 1024, both instances in the same
mode, modes alternated run by run, runs during which anything else used the CPUs thrown away):
at 64 B, best run 17.4 Mpps on hugepages against 14.6 without, median of half-second samples
15.4 against 11.6; at 1518 B no difference (best runs 7.2 and 7.1 Mpps). Single runs flip
between a fast and a slow level (at 64 B about 15 and 5.5 Mpps; at 1518 B about 7 and 3.7), as
the host moves the two virtual CPUs: compare only alternated runs, by their best.

Counting. Stop the sender first, then the receiver: on an idle machine the receiver's
``rx_packets`` then equals the sender's ``tx_packets`` exactly. Two things can break that:

* testpmd by default drains its RX queues once when forwarding starts (``flush_fwd_rx_queues``)
  and leaves those packets out of its forward statistics. A front-end that starts sending before
  the back-end's testpmd has started forwarding (typical with ``server=1`` / ``client=1``: the
  connection is made while the back-end still sets its port up) then shows thousands of packets
  "lost". Hence ``--no-flush-rx`` on every instance.
* `stop` (SIGINT) makes testpmd tear the device down right after its last burst, without waiting
  for the back-end to use what is still in the ring. When the receiver is kept off its CPU at
  that moment (anything else busy on the two CPUs), up to a ring's worth is never received
  (seen: 32 to 512 packets, always whole bursts of 32). For exact counts whatever the load, run
  the sender with ``interactive=True``, call `stop_forwarding`, wait until the receiver's
  `stats` reach the sender's ``tx_packets``, then stop both.

The virtio-user front-end's ``tx_dropped`` counts packets that found the ring full; they were
never sent.

Live counters come from the DPDK telemetry socket ``<runtime dir>/dpdk_telemetry.v2``, which
exists in both memory modes (``--in-memory`` and ``--no-shconf`` do not turn it off). The per-port
statistics that ``--stats-period`` prints are the fallback.

Lifetime. Every process runs under a time limit (``time_limit`` seconds, then SIGINT and, after
a grace period, SIGKILL) and is stopped by its own PID: `Testpmd.stop` sends SIGINT (testpmd then
prints its forward statistics and closes its ports), waits, and sends SIGKILL if it has to. When
``setpriv`` is installed the process also gets SIGTERM if the thread that started it dies
(``PR_SET_PDEATHSIG``), so a crashed test run leaves no busy-polling testpmd behind; start
instances from a thread that outlives them. Afterwards the instance removes what it created in
DPDK's runtime directory ``/var/run/dpdk/<prefix>``; directories named ``fastpath-<pid>-<n>``
whose process is gone (a run killed before it could clean up) are removed at the next start.

A front-end that starts before the back-end's socket exists keeps running with no port, and a
virtio-user front-end with ``server=1`` blocks in its start-up until a back-end connects: the
factories wait for the socket to appear, and the constructor waits for forwarding to start only
when that cannot block.
"""

from __future__ import annotations

import atexit
import fcntl
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PAGES_PER_INSTANCE", "PeerError", "Testpmd", "ensure_hugepages"]

TESTPMD = "dpdk-testpmd"
NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")
MEMINFO = Path("/proc/meminfo")
HUGEPAGE_KB = 2048
#: Free 2 MiB pages the launcher wants before it starts an instance on hugepages (256 MiB; an
#: instance with 32768 mbufs takes about 45).
PAGES_PER_INSTANCE = 128
#: Memory of an instance without hugepages (``-m``), in MiB.
NO_HUGE_MEMORY_MB = 256
TOTAL_MBUFS = 32768
TELEMETRY_SOCKET = "dpdk_telemetry.v2"
# "No commandline core given, start packet forwarding", or with -i --auto-start "Start automatic
# packet forwarding".
FORWARDING_STARTED = re.compile(r"(?i)start (automatic )?packet forwarding")
_FORWARDING_STOPPED = re.compile(
    r"Accumulated forward statistics for all ports.*?\+{20,}\s*\n\s*Done\.|"
    r"Packet forwarding not started", re.S)
# Failures testpmd reports and then goes on forwarding anyway: a bad --forward-mode (it runs in
# io mode), or a port it could not set up (e.g. a vhost socket path that is in use).
_STARTUP_FAILURE = re.compile(
    r"^(Invalid .* packet forwarding mode|Fail to (configure|start) port \d+"
    r"|Fail to setup .*|.*failed to bind: .*)$", re.M)
_TAIL_LINES = 40
_CLEAR_SCREEN = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_COUNTER = itertools.count()
_LIVE: weakref.WeakSet[Testpmd] = weakref.WeakSet()
_FORWARD_BLOCK = re.compile(
    r"-+ Forward statistics for port (\d+)\s+-+\n(.*?)\n\s*-{20,}", re.S)
_TOTAL_BLOCK = re.compile(
    r"\++ Accumulated forward statistics for all ports\s*\++\n(.*?)\n\s*\+{20,}", re.S)
_NIC_BLOCK = re.compile(r"#+ NIC statistics for port (\d+)\s+#+\n(.*?)\n\s*\n", re.S)
_COUNTER_FIELD = re.compile(r"([A-Za-z][A-Za-z-]*):\s+(\d+)")
# Names of the periodic NIC statistics, as the telemetry socket's /ethdev/stats calls them.
_NIC_NAMES = {
    "RX-packets": "ipackets", "RX-missed": "imissed", "RX-bytes": "ibytes",
    "RX-errors": "ierrors", "RX-nombuf": "rx_nombuf", "TX-packets": "opackets",
    "TX-errors": "oerrors", "TX-bytes": "obytes",
}


class PeerError(RuntimeError):
    """A testpmd peer failed: it exited early, timed out, or its output made no sense.

    The message ends with the tail of the process's output; `output` holds all of it.
    """

    def __init__(self, message: str, output: str = ""):
        self.output = output
        if output:
            tail = "\n".join(output.rstrip("\n").splitlines()[-_TAIL_LINES:])
            message = f"{message}\n--- last lines of testpmd's output ---\n{tail}"
        super().__init__(message)


def _meminfo(field: str) -> int:
    for line in MEMINFO.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def ensure_hugepages(n: int) -> int:
    """Make /proc/sys/vm/nr_hugepages at least `n` (default-size pages); return its new value.

    Raises the setting when it is lower and never lowers it; the value returned can still be
    below `n` when the kernel found too little memory. Only the sysctl is touched, never a
    hugepage file. Writers that use this function are serialized with a lock on the sysctl file.
    Raises `PeerError` when the setting cannot be written (not root, read-only /proc/sys).
    """
    try:
        with open(NR_HUGEPAGES, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            current = int(f.read())
            if current >= n:
                return current
            f.seek(0)
            f.write(f"{n}\n")
            f.flush()
    except OSError as e:
        raise PeerError(f"cannot raise {NR_HUGEPAGES} to {n}: {e}") from e
    return int(NR_HUGEPAGES.read_text())


def _reserve_hugepages(pages: int) -> bool:
    """True when `pages` 2 MiB pages are free, reserving more if they are not (and we may)."""
    if _meminfo("Hugepagesize") != HUGEPAGE_KB:
        return False
    available = _meminfo("HugePages_Free") - _meminfo("HugePages_Rsvd")
    if available >= pages:
        return True
    try:
        ensure_hugepages(_meminfo("HugePages_Total") + pages - available)
    except PeerError:
        return False
    return _meminfo("HugePages_Free") - _meminfo("HugePages_Rsvd") >= pages


def _runtime_base() -> Path:
    # DPDK's eal_create_runtime_dir(): /var/run for root, else $XDG_RUNTIME_DIR or /tmp.
    if os.geteuid() == 0:
        return Path("/var/run/dpdk")
    return Path(os.environ.get("XDG_RUNTIME_DIR", "/tmp")) / "dpdk"


_OUR_PREFIX = re.compile(r"fastpath-(\d+)-\d+")


def _sweep_stale_runtime_dirs(base: Path) -> None:
    """Remove runtime directories of our own prefix whose process is gone (killed runs)."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        match = _OUR_PREFIX.fullmatch(name)
        if match is None or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(base / name, ignore_errors=True)
        except OSError:
            pass  # alive under another user


def _counters(block: str, names: dict[str, str] | None = None) -> dict[str, int]:
    out = {}
    for name, value in _COUNTER_FIELD.findall(block):
        key = names.get(name) if names is not None else name.lower().replace("-", "_")
        if key:
            out[key] = int(value)
    return out


def _devarg_path(path: str | os.PathLike) -> str:
    text = os.fspath(path)
    if "," in text:
        raise ValueError(f"a socket path in DPDK devargs cannot contain a comma: {text!r}")
    return text


class Testpmd:
    """One dpdk-testpmd process with one vdev; started by the constructor.

    `vdev` is the ``--vdev`` argument and `args` are testpmd's own arguments (after ``--``);
    the factories `virtio_user` and `vhost` build both. `cpu` is the CPU for ``--lcores
    '(0,1)@CPU'``. `hugepages` picks the memory mode (None: hugepages when they can be had; see
    the module's docstring). With `interactive`, testpmd runs ``-i --auto-start`` instead of
    ``--stats-period 1`` and takes command lines (`send`) and `stop_forwarding` on its stdin pipe.
    The process is stopped after `time_limit` seconds whatever happens.
    With `wait` the constructor returns once testpmd has started forwarding (within
    `startup_timeout`) and raises `PeerError` if it exits first; without it, it returns at once.

    Use it as a context manager, or call `stop`.
    """

    __test__ = False  # a peer for tests, not a test class for pytest to collect

    def __init__(self, vdev: str, args: Sequence[str] = (), *, cpu: int = 1,
                 hugepages: bool | None = None, interactive: bool = False,
                 time_limit: float = 120.0, startup_timeout: float = 15.0, wait: bool = True,
                 eal_args: Sequence[str] = (), binary: str | None = None):
        self._binary = binary or self.find()
        if self._binary is None:
            raise PeerError(f"{TESTPMD} is not installed")
        if hugepages is None:
            hugepages = _reserve_hugepages(PAGES_PER_INSTANCE)
        elif hugepages and not _reserve_hugepages(PAGES_PER_INSTANCE):
            raise PeerError(f"cannot have {PAGES_PER_INSTANCE} free 2 MiB hugepages")
        self._hugepages = hugepages
        self._prefix = f"fastpath-{os.getpid()}-{next(_COUNTER)}"
        self._runtime_dir = _runtime_base() / self._prefix
        _sweep_stale_runtime_dirs(self._runtime_dir.parent)
        memory = (["--in-memory", "--single-file-segments"] if hugepages
                  else ["--no-huge", "--no-shconf", "-m", str(NO_HUGE_MEMORY_MB)])
        self._interactive = interactive
        mode = ["-i", "--auto-start"] if interactive else ["--stats-period", "1"]
        self._command = [
            self._binary, "--lcores", f"(0,1)@{int(cpu)}", "--no-pci", *memory,
            "--file-prefix", self._prefix, "--vdev", vdev, *eal_args, "--",
            *mode, f"--total-num-mbufs={TOTAL_MBUFS}", "--no-flush-rx", *args,
        ]
        self._forwarding_stopped_at: int | None = None
        self._chunks: list[str] = []
        self._text = ""
        self._eof = False
        self._changed = threading.Condition()
        self._timed_out = False
        self._cleanup_lock = threading.Lock()
        self._existing = (set(os.listdir(self._runtime_dir)) if self._runtime_dir.is_dir()
                          else None)
        # Both wrappers exec testpmd in their place, so the PID is testpmd's.
        wrappers = []
        if setpriv := shutil.which("setpriv"):
            wrappers += [setpriv, "--pdeathsig", "TERM"]
        if stdbuf := shutil.which("stdbuf"):
            wrappers += [stdbuf, "-oL"]  # testpmd's printf output is block-buffered on a pipe
        self._process = subprocess.Popen(
            wrappers + self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, name=f"testpmd-{self._prefix}",
                                        daemon=True)
        self._reader.start()
        _LIVE.add(self)
        self._watchdog = threading.Timer(time_limit, self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()
        if wait:
            try:
                self.wait_forwarding(startup_timeout)
            except BaseException:
                self.stop()
                raise

    # ----------------------------------------------------------------- factories

    @staticmethod
    def find() -> str | None:
        """The path of dpdk-testpmd, or None when it is not installed."""
        found = shutil.which(TESTPMD)
        if found is None and os.access(f"/usr/bin/{TESTPMD}", os.X_OK):
            found = f"/usr/bin/{TESTPMD}"
        return found

    @classmethod
    def virtio_user(cls, path: str | os.PathLike, *, forward: str = "txonly",
                    txpkts: int | Sequence[int] = 64, queues: int = 1, queue_size: int = 1024,
                    packed: bool = False, mrg_rxbuf: bool | None = None,
                    in_order: bool | None = None, server: bool = False, cpu: int = 1,
                    extra: Sequence[str] = (), socket_timeout: float = 10.0,
                    **options: Any) -> Testpmd:
        """DPDK's virtio-user front-end on the vhost-user socket `path`.

        ``net_virtio_user0,path=...,queues=...,queue_size=...`` plus ``packed_vq=1``,
        ``mrg_rxbuf=``, ``in_order=`` and ``server=1`` as asked; testpmd runs
        ``--forward-mode=FORWARD --txpkts=TXPKTS`` (segment lengths, comma-joined when a
        sequence) and ``--rxq=N --txq=N`` for several queues, then `extra`. As a client it first
        waits up to `socket_timeout` for the socket to exist, and returns once forwarding has
        started. With `server` it returns as soon as it listens: testpmd blocks in its start-up
        until a back-end connects, so call `wait_forwarding` or `wait_link_up` after starting
        one. Other keyword arguments go to the constructor.
        """
        sock = _devarg_path(path)
        vdev = f"net_virtio_user0,path={sock},queues={queues},queue_size={queue_size}"
        if packed:
            vdev += ",packed_vq=1"
        if mrg_rxbuf is not None:
            vdev += f",mrg_rxbuf={int(mrg_rxbuf)}"
        if in_order is not None:
            vdev += f",in_order={int(in_order)}"
        if server:
            vdev += ",server=1"
        lengths = [txpkts] if isinstance(txpkts, int) else list(txpkts)
        args = [f"--forward-mode={forward}", "--txpkts=" + ",".join(map(str, lengths))]
        args += cls._queue_args(queues) + list(extra)
        if not server:
            cls._wait_for_socket(sock, socket_timeout)
            return cls(vdev, args, cpu=cpu, **options)
        if os.path.exists(sock):
            raise PeerError(f"{sock} already exists; a listening virtio-user needs a new path")
        peer = cls(vdev, args, cpu=cpu, wait=False, **options)
        try:
            peer.wait_until(lambda: os.path.exists(sock), socket_timeout,
                            f"virtio-user to listen on {sock}")
        except BaseException:
            peer.stop()
            raise
        return peer

    @classmethod
    def vhost(cls, path: str | os.PathLike, *, forward: str = "rxonly", queues: int = 1,
              client: bool = False, cpu: int = 0, extra: Sequence[str] = (),
              socket_timeout: float = 10.0, **options: Any) -> Testpmd:
        """DPDK's vhost PMD back-end on the vhost-user socket `path`.

        ``net_vhost0,iface=...,queues=N`` (``client=1`` to connect to a listening front-end
        instead of listening), testpmd ``--forward-mode=FORWARD``, ``--rxq=N --txq=N`` for
        several queues, then `extra`. Returns once forwarding has started; as a server the socket
        exists by then (the path must not exist before: DPDK does not replace a stale socket), as
        a client it first waits up to `socket_timeout` for the socket. Other keyword arguments go
        to the constructor.
        """
        sock = _devarg_path(path)
        vdev = f"net_vhost0,iface={sock},queues={queues}" + (",client=1" if client else "")
        args = [f"--forward-mode={forward}", *cls._queue_args(queues), *extra]
        if client:
            cls._wait_for_socket(sock, socket_timeout)
        elif os.path.exists(sock):
            raise PeerError(f"{sock} already exists; a listening vhost PMD needs a new path")
        return cls(vdev, args, cpu=cpu, **options)

    @staticmethod
    def _queue_args(queues: int) -> list[str]:
        return [f"--rxq={queues}", f"--txq={queues}"] if queues > 1 else []

    @staticmethod
    def _wait_for_socket(sock: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not os.path.exists(sock):
            if time.monotonic() > deadline:
                raise PeerError(f"no vhost-user socket at {sock} after {timeout} s")
            time.sleep(0.01)

    # ---------------------------------------------------------------- properties

    @property
    def pid(self) -> int:
        """The process ID of testpmd."""
        return self._process.pid

    @property
    def prefix(self) -> str:
        """The instance's ``--file-prefix``."""
        return self._prefix

    @property
    def runtime_dir(self) -> Path:
        """DPDK's runtime directory for this instance (telemetry socket and the like)."""
        return self._runtime_dir

    @property
    def command(self) -> list[str]:
        """The testpmd command line (without the ``setpriv`` and ``stdbuf`` wrappers)."""
        return list(self._command)

    @property
    def hugepages(self) -> bool:
        """Whether the instance runs on hugepages (else on one memfd of normal pages)."""
        return self._hugepages

    @property
    def running(self) -> bool:
        """Whether the process is still alive."""
        return self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal), or None while it runs."""
        return self._process.poll()

    @property
    def timed_out(self) -> bool:
        """Whether the time limit stopped the process."""
        return self._timed_out

    @property
    def output(self) -> str:
        """Everything testpmd printed so far (stdout and stderr), without screen-clear codes."""
        with self._changed:
            return self._output_locked()

    # ------------------------------------------------------------------ output

    def _output_locked(self) -> str:
        if self._chunks:
            self._text += "".join(self._chunks)
            self._chunks.clear()
        return self._text

    def _read(self) -> None:
        stream = self._process.stdout
        assert stream is not None
        for raw in stream:
            line = _CLEAR_SCREEN.sub("", raw.decode("utf-8", "replace"))
            with self._changed:
                self._chunks.append(line)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def _describe(self) -> str:
        return f"testpmd (pid {self.pid}, prefix {self._prefix})"

    def wait_until(self, check: Callable[[], Any], timeout: float = 10.0,
                   what: str = "a condition") -> Any:
        """Call `check` every 10 ms until it returns something truthy, and return that.

        For conditions on anything, such as another peer's `stats`. Raises `PeerError` (saying
        it was waiting for `what`) on timeout, or when this testpmd exits first.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if not self.running:
                raise PeerError(f"{self._describe()} exited with status {self.returncode} "
                                f"before {what}", self._final_output())
            if time.monotonic() > deadline:
                raise PeerError(f"timed out after {timeout} s waiting for {what}", self.output)
            time.sleep(0.01)

    def _final_output(self) -> str:
        self._reader.join(5.0)
        return self.output

    def wait_for(self, pattern: str | re.Pattern[str] | Callable[[str], Any],
                 timeout: float = 10.0, *, since: int = 0) -> Any:
        """Wait until testpmd's output (from character `since` on) matches; return the match.

        `pattern` is a regular expression (searched for; the `re.Match` is returned) or a
        predicate called with the output text (its first truthy result is returned). Raises
        `PeerError`, with the tail of the output, on timeout or when testpmd's output ends first.
        Use ``len(peer.output)`` as `since` to wait for something new.
        """
        if callable(pattern):
            check = pattern
            what = getattr(pattern, "__name__", "a predicate")
        else:
            regex = re.compile(pattern)
            check = regex.search
            what = repr(regex.pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = check(self._output_locked()[since:])
                if result:
                    return result
                if self._eof:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerError(f"timed out after {timeout} s waiting for {what} from "
                                    f"{self._describe()}", self._output_locked())
                self._changed.wait(left)
        try:
            self._process.wait(5.0)
        except subprocess.TimeoutExpired:
            pass  # closed its output but lives on; the status below says None
        raise PeerError(f"{self._describe()} exited with status {self.returncode} before "
                        f"printing {what}", self.output)

    def wait_forwarding(self, timeout: float = 15.0) -> None:
        """Wait until testpmd has started packet forwarding (its start-up is over).

        Raises `PeerError` also when testpmd reported a failure it goes on after: a port it
        could not configure or start (a vhost socket path in use), or an unknown forwarding
        mode (it would forward in io mode).
        """
        self.wait_for(FORWARDING_STARTED, timeout)
        bad = _STARTUP_FAILURE.search(self.output)
        if bad:
            raise PeerError(f"{self._describe()}: {bad.group(0)}", self.output)

    def link_up(self, port: int = 0) -> bool:
        """Whether the port's link is up (telemetry /ethdev/link_status); False before start-up."""
        try:
            status = self.telemetry(f"/ethdev/link_status,{port}")
        except PeerError:
            return False
        return isinstance(status, dict) and status.get("status") == "UP"

    def wait_link_up(self, port: int = 0, timeout: float = 10.0) -> None:
        """Wait until forwarding has started and the port's link is up.

        A vhost port's link comes up when a front-end has finished its handshake; a
        virtio-user port's when the back-end is connected. Raises `PeerError` on timeout or exit.
        """
        deadline = time.monotonic() + timeout
        self.wait_forwarding(timeout)
        self.wait_until(lambda: self.link_up(port), max(0.0, deadline - time.monotonic()),
                        f"the link of port {port} to come up")

    # ------------------------------------------------------- interactive mode

    @property
    def interactive(self) -> bool:
        """Whether testpmd runs its command line (``-i --auto-start``) on the stdin pipe."""
        return self._interactive

    def send(self, line: str) -> None:
        """Send one command line to an interactive testpmd (e.g. ``"show port stats 0"``).

        Its answer appears in `output`; use `wait_for` with ``since=len(peer.output)`` taken
        before the call. Raises `PeerError` when testpmd is not interactive or is gone.
        """
        if not self._interactive:
            raise PeerError(f"{self._describe()} is not interactive; start it with "
                            "interactive=True to send it commands")
        if "\n" in line:
            raise ValueError("one command line at a time")
        stdin = self._process.stdin
        try:
            assert stdin is not None
            stdin.write(line.encode() + b"\n")
            stdin.flush()
        except (OSError, ValueError) as e:
            raise PeerError(f"cannot send {line!r} to {self._describe()}: {e}",
                            self.output) from e

    def stop_forwarding(self, timeout: float = 10.0) -> None:
        """Stop packet forwarding but keep the port open (interactive mode only).

        testpmd prints its forward statistics, which `final_stats` then returns, while the port
        and its vhost-user connection stay up. A sender stopped this way leaves its receiver
        time to take what is still in the rings before the device is torn down (`stop` tears
        it down at once, and a receiver kept off its CPU then misses up to a ring's worth).
        """
        since = len(self.output)
        self.send("stop")
        match = self.wait_for(_FORWARDING_STOPPED, timeout, since=since)
        if match.group(0).startswith("Packet forwarding not started"):
            raise PeerError(f"{self._describe()} was not forwarding", self.output)
        self._forwarding_stopped_at = len(self.output)

    # -------------------------------------------------------------- statistics

    def telemetry(self, command: str) -> Any:
        """Send one command to the telemetry socket (e.g. ``/ethdev/stats,0``); return its value.

        The reply ``{"/ethdev/stats": {...}}`` is unwrapped to its value. Raises `PeerError`
        when the socket is not there (testpmd not started yet, or gone) or the reply is bad.
        """
        path = self._runtime_dir / TELEMETRY_SOCKET
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
                sock.settimeout(5.0)
                sock.connect(os.fspath(path))
                hello = json.loads(sock.recv(16384))
                sock.sendall(command.encode())
                reply = json.loads(sock.recv(max(int(hello.get("max_output_len", 0)), 65536)))
        except (OSError, ValueError) as e:
            raise PeerError(f"telemetry {command!r} on {path} failed: {e}") from e
        key = command.split(",", 1)[0]
        if not isinstance(reply, dict) or key not in reply:
            raise PeerError(f"unexpected telemetry reply to {command!r}: {reply!r}")
        return reply[key]

    def stats(self, port: int = 0) -> dict[str, Any]:
        """The port's live counters: ipackets, opackets, ibytes, obytes, imissed, ierrors, ...

        Read from the telemetry socket (exact, and with per-queue lists q_ipackets and so on);
        when that fails, from the last block of per-port statistics testpmd printed (at most a
        second old, without the per-queue lists). Raises `PeerError` when neither is there.
        """
        try:
            stats = self.telemetry(f"/ethdev/stats,{port}")
            if isinstance(stats, dict):
                return stats
        except PeerError:
            pass
        blocks = {int(p): b for p, b in _NIC_BLOCK.findall(self.output)}
        if port not in blocks:
            raise PeerError(f"no statistics for port {port} from {self._describe()}",
                            self.output)
        return _counters(blocks[port], _NIC_NAMES)

    def sample(self, counter: str, seconds: float, period: float,
               port: int = 0) -> list[tuple[float, int]]:
        """Read the port's live `counter` (a key of `stats`, such as ``"opackets"``) every
        `period` seconds for `seconds`: ``[(seconds since the first reading, count), ...]``,
        the first at 0.0 and the last at `seconds` or just after. For rates of a running
        traffic process, whose best stretch `fastpath.bench` takes (a shared machine holds a
        side back for whole seconds now and then)."""
        started = time.monotonic()
        samples = [(0.0, self.stats(port)[counter])]
        while samples[-1][0] < seconds:
            time.sleep(period)
            samples.append((time.monotonic() - started, self.stats(port)[counter]))
        return samples

    def final_stats(self) -> dict[int, dict[str, int]]:
        """Per port, the forward statistics testpmd printed when it stopped.

        ``{0: {"rx_packets": ..., "rx_dropped": ..., "rx_total": ..., "tx_packets": ...,
        "tx_dropped": ..., "tx_total": ...}}``, plus any other counter it printed in that block
        (``rx_nombufs``, ``bad_ipcsum``, ...), with names lower-cased and dashes made
        underscores. Call `stop` (or, interactive, `stop_forwarding`) first; raises `PeerError`
        while it forwards or when there is no such block (killed with SIGKILL, or it never
        started forwarding).
        """
        text = self._stopped_output("forward statistics")
        ports = {int(p): _counters(b) for p, b in _FORWARD_BLOCK.findall(text)}
        if not ports:
            raise PeerError(f"{self._describe()} printed no forward statistics", text)
        return ports

    def final_totals(self) -> dict[str, int]:
        """The accumulated forward statistics for all ports that testpmd printed when it stopped.

        Same keys as one port of `final_stats`; same conditions.
        """
        text = self._stopped_output("accumulated statistics")
        blocks = _TOTAL_BLOCK.findall(text)
        if not blocks:
            raise PeerError(f"{self._describe()} printed no accumulated statistics", text)
        return _counters(blocks[-1])

    def _stopped_output(self, what: str) -> str:
        if not self.running:
            return self._final_output()
        if self._forwarding_stopped_at is not None:
            return self.output[: self._forwarding_stopped_at]
        raise PeerError(f"{self._describe()} is still forwarding: stop() it (or "
                        f"stop_forwarding()) before reading its {what}")

    # ------------------------------------------------------------------- stop

    def stop(self, timeout: float = 10.0) -> str:
        """Stop testpmd and return all of its output.

        Sends SIGINT to its PID (testpmd prints its forward statistics and closes its ports),
        waits up to `timeout` seconds, then sends SIGKILL. Then removes what the instance
        created in its runtime directory. Safe to call more than once.
        """
        self._watchdog.cancel()
        self._terminate(timeout)
        self._reader.join(timeout)
        if self._process.stdin is not None and not self._process.stdin.closed:
            try:
                self._process.stdin.close()
            except OSError:
                pass
        if not self._reader.is_alive() and self._process.stdout is not None:
            self._process.stdout.close()
        self._remove_runtime_files()
        return self.output

    def _terminate(self, timeout: float) -> None:
        if self._process.poll() is not None:
            return
        try:
            self._process.send_signal(signal.SIGINT)
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _expire(self) -> None:
        if self._process.poll() is None:
            self._timed_out = True
            self._terminate(5.0)

    def _remove_runtime_files(self) -> None:
        with self._cleanup_lock:
            if not self._runtime_dir.is_dir():
                return
            if self._existing is None:
                shutil.rmtree(self._runtime_dir, ignore_errors=True)
                return
            for name in set(os.listdir(self._runtime_dir)) - self._existing:
                target = self._runtime_dir / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)

    def __enter__(self) -> Testpmd:
        """Return the running instance; leaving the block calls `stop`."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.returncode}"
        return f"<Testpmd pid={self.pid} prefix={self._prefix} {state}>"


@atexit.register
def _stop_all() -> None:
    # Instances nobody stopped: stop them so their runtime directories go too.
    for peer in list(_LIVE):
        peer.stop(timeout=5.0)
