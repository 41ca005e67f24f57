"""QEMU 7.2 with a Linux guest as a real vhost-user front-end, for the test suite.

`QemuGuest` runs one ``qemu-system-x86_64`` process with the command line of the shared notes on
peers ("QEMU 7.2 with a Linux guest"): TCG (``/dev/kvm`` on these machines cannot run a stock
kernel), the guest's memory in one memfd with ``share=on`` (which is what lets a vhost-user
back-end map it), a kernel and an initramfs given directly (``-kernel``, ``-initrd``), the serial
console on standard output, no default devices, no reboot (a guest that powers off or panics
ends QEMU), a virtio-net-pci device on a ``vhost-user`` netdev whose chardev is the Unix socket
`socket`, and a ``vhost-user-blk-pci`` device on the Unix socket `blk_socket` (either or both):

* by default QEMU is the socket's client: the back-end must be listening before QEMU starts
  (``reconnect=N`` makes QEMU retry every N seconds, also after the back-end went away);
* with ``server=True`` QEMU listens (``server=on,wait=off``) and the back-end connects (fastpath
  ``--client``). QEMU 7.2 still waits for that first connection before it starts the guest
  (net/vhost-user.c waits for the netdev's first start-up whatever ``wait`` says), and prints
  "QEMU waiting for connection on: ..."; after a disconnection it accepts the next back-end.

The device gets ``vectors=0`` (no MSI-X: under TCG, QEMU 7.2's vhost-user-net with MSI-X
segfaults when the guest driver starts the device) and ``romfile=`` (no iPXE option ROM, so
SeaBIOS does not try to boot from the NIC). The block device keeps its MSI-X vectors (QEMU's
default: one per request queue and one for configuration changes; vhost-user-blk has no such
crash) and QEMU is always its socket's client. SeaBIOS drives it first, with fewer features,
to look for something to boot, and stops it; then Linux starts it again (see the shared notes
on peers): a back-end sees two start-ups on the one connection.

What QEMU prints is collected by two threads: the guest's serial console (QEMU's stdout,
`QemuGuest.console`) and QEMU's own messages (its stderr, `QemuGuest.messages`), kept apart so
that a message cannot land in the middle of a console line, and both in the order they came
(`QemuGuest.output`). `QemuGuest.wait_for` waits for a text or a regular expression in one of
them. QEMU runs
under a time limit (``time_limit`` seconds, then SIGKILL) and is stopped by its own PID; it gets
SIGKILL too if the thread that started it dies (``PR_SET_PDEATHSIG``), so a crashed test run
leaves no QEMU behind.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import IO

__all__ = ["QemuError", "QemuGuest"]

QEMU = "qemu-system-x86_64"
_PR_SET_PDEATHSIG = 1
_TAIL_LINES = 40
_STREAMS = ("console", "messages")


class QemuError(RuntimeError):
    """QEMU failed: it exited early, timed out, or the guest never printed what was awaited.

    The message ends with the tail of QEMU's output; `output` holds all of it.
    """

    def __init__(self, message: str, output: str = ""):
        self.output = output
        if output:
            tail = "\n".join(output.rstrip("\n").splitlines()[-_TAIL_LINES:])
            message = f"{message}\n--- last lines of QEMU's output ---\n{tail}"
        super().__init__(message)


# Loaded here, not in the child between fork and exec.
_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# A virtio-net device behind an Intel vIOMMU (../shared/peers.md, "A real vIOMMU (VT-d)"): QEMU
# needs the device IOTLB and ATS for a vhost back-end, and a modern-only device, since a
# transitional one refuses iommu_platform; caching mode makes the guest report every mapping.
_IOMMU_MACHINE = ["-machine", "q35", "-device", "intel-iommu,caching-mode=on,device-iotlb=on"]
_IOMMU_NET_OPTIONS = ",iommu_platform=on,ats=on,disable-legacy=on,disable-modern=off"
# Strict mode: the guest unmaps (and QEMU invalidates) every buffer as soon as it is used.
_IOMMU_APPEND = ["intel_iommu=on", "iommu.strict=1"]


class QemuGuest:
    """One qemu-system-x86_64 process booting `kernel` and `initrd`; started by the constructor.

    `socket` is the vhost-user socket of the guest's one virtio-net device (None: no network
    device); `server` makes QEMU listen on it, `reconnect` (seconds) makes QEMU as the client
    reconnect after losing the back-end. `blk_socket` is the vhost-user socket of the guest's
    one virtio-blk device (None: no disk), a back-end listening on it (`reconnect` there too),
    and `blk_queues` that device's request queues (``num-queues``). `append` is added to the
    kernel command line ``console=ttyS0 quiet panic=-1``. `memory_mb` is the guest's memory,
    `vcpus` its virtual CPUs, `mac` the network device's MAC address, `queues` its queue pairs
    (more than one: ``mq=on``), `packed` gives both devices packed rings (``packed=on``),
    `extra` more QEMU arguments, `cpu` a CPU to pin QEMU to (None: no pinning). QEMU is killed
    after `time_limit` seconds whatever happens. `iommu` puts the network device behind an
    Intel vIOMMU (VT-d) on a q35 machine, as ../shared/peers.md describes it: QEMU then sends
    the back-end IOTLB messages, and the guest's kernel maps and unmaps every buffer (strict
    mode).
    """

    def __init__(self, kernel: str | os.PathLike, initrd: str | os.PathLike, *,
                 socket: str | os.PathLike | None = None, server: bool = False,
                 reconnect: int | None = None, append: str = "", memory_mb: int = 512,
                 vcpus: int = 1, mac: str = "52:54:00:12:34:56", queues: int = 1,
                 packed: bool = False, blk_socket: str | os.PathLike | None = None,
                 blk_queues: int = 1, extra: Sequence[str] = (),
                 cpu: int | None = None, time_limit: float = 120.0, qemu: str | None = None,
                 iommu: bool = False):
        binary = qemu or self.find()
        if binary is None:
            raise QemuError(f"{QEMU} is not installed")
        if server and reconnect is not None:
            raise ValueError("reconnect is for QEMU as the socket's client, not with server")
        self.socket = os.fspath(socket) if socket is not None else None
        self.blk_socket = os.fspath(blk_socket) if blk_socket is not None else None
        self.command = [
            binary, "-accel", "tcg", "-smp", str(vcpus), "-m", f"{memory_mb}M",
            "-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on",
            "-numa", "node,memdev=mem",
            "-kernel", os.fspath(kernel), "-initrd", os.fspath(initrd),
            "-append", " ".join(["console=ttyS0 quiet panic=-1", *_IOMMU_APPEND * iommu,
                                 append]).strip(),
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
        ]
        if iommu:
            # The vIOMMU goes before the devices behind it.
            self.command += _IOMMU_MACHINE
        for path in (self.socket, self.blk_socket):
            if path is not None and "," in path:
                raise ValueError(f"a chardev path cannot contain a comma: {path!r}")
        if self.socket is not None:
            chardev = f"socket,id=c0,path={self.socket}"
            if server:
                chardev += ",server=on,wait=off"
            elif reconnect is not None:
                chardev += f",reconnect={reconnect}"
            self.command += [
                "-chardev", chardev,
                "-netdev", f"vhost-user,id=n0,chardev=c0,queues={queues}",
                "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile=,vectors=0"
                + (",mq=on" if queues > 1 else "") + (",packed=on" if packed else "")
                + (_IOMMU_NET_OPTIONS if iommu else ""),
            ]
        if self.blk_socket is not None:
            # A vhost-user-blk back-end restarted under a running guest (the inflight area's
            # purpose) is met by QEMU's reconnecting.
            self.command += [
                "-chardev", f"socket,id=c1,path={self.blk_socket}"
                + (f",reconnect={reconnect}" if reconnect is not None else ""),
                "-device", f"vhost-user-blk-pci,chardev=c1,num-queues={blk_queues}"
                + (",packed=on" if packed else ""),
            ]
        self.command += list(extra)
        cpus = {cpu} if cpu is not None else None

        def setup() -> None:
            _die_with_parent()
            if cpus:
                os.sched_setaffinity(0, cpus)

        self._chunks: dict[str, list[str]] = {name: [] for name in _STREAMS}
        self._combined: list[str] = []
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self._process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, preexec_fn=setup)
        self._readers = [
            threading.Thread(target=self._read, args=(pipe, name), daemon=True)
            for pipe, name in ((self._process.stdout, "console"),
                               (self._process.stderr, "messages"))]
        for reader in self._readers:
            reader.start()
        self._watchdog = threading.Timer(time_limit, self._process.kill)
        self._watchdog.daemon = True
        self._watchdog.start()

    @staticmethod
    def find() -> str | None:
        """The path of qemu-system-x86_64, or None when it is not installed."""
        return shutil.which(QEMU)

    @property
    def pid(self) -> int:
        """QEMU's process id."""
        return self._process.pid

    @property
    def console(self) -> str:
        """What the guest printed on its serial console so far, CR LF line ends made LF."""
        return self._text("console")

    @property
    def messages(self) -> str:
        """What QEMU itself printed so far (its standard error: warnings, errors)."""
        return self._text("messages")

    @property
    def output(self) -> str:
        """The console and QEMU's messages together, in the order they were read."""
        return self._text("output")

    @property
    def returncode(self) -> int | None:
        """QEMU's exit status, or None while it runs (negative: killed by that signal)."""
        return self._process.poll()

    @property
    def running(self) -> bool:
        """True while QEMU runs."""
        return self._process.poll() is None

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float, *, start: int = 0,
                 stream: str = "console") -> re.Match[str]:
        """Wait until `pattern` (a text, or a compiled regular expression) appears in `stream`
        ("console", "messages" or "output", as the properties of those names) at or after
        position `start`, and return the match (its ``end()`` is a position for the next wait).
        Raises `QemuError` when QEMU exits first or `timeout` seconds pass."""
        if stream not in (*_STREAMS, "output"):
            raise ValueError(f"no stream {stream!r}")
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self._text(stream), start)
            if match is not None:
                return match
            if not self.running:
                self._join_readers()
                match = regex.search(self._text(stream), start)
                if match is not None:
                    return match
                raise QemuError(f"QEMU exited ({self.returncode}) before printing "
                                f"{regex.pattern!r}", self.output)
            if time.monotonic() > deadline:
                raise QemuError(f"no {regex.pattern!r} from QEMU within {timeout} s",
                                self.output)
            time.sleep(0.05)

    def wait(self, timeout: float) -> int:
        """Wait for QEMU to exit by itself (the guest powered off) and return its exit status;
        raises `QemuError` (and kills QEMU) when it is still running after `timeout` seconds."""
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise QemuError(f"QEMU still ran after {timeout} s", self.output) from None
        self._finish()
        return code

    def stop(self, timeout: float = 10.0) -> int:
        """End QEMU with SIGTERM (SIGKILL if it is still there after `timeout` seconds) and return
        its exit status."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._finish()
        return self._process.returncode

    def kill(self) -> None:
        """End QEMU at once (SIGKILL)."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._finish()

    def __enter__(self) -> QemuGuest:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _finish(self) -> None:
        self._watchdog.cancel()
        self._join_readers()

    def _join_readers(self) -> None:
        for reader in self._readers:
            reader.join(5)

    def _text(self, stream: str) -> str:
        with self._lock:
            if stream == "output":
                text = "".join(self._combined)
            else:
                text = "".join(self._chunks[stream])
        return text.replace("\r\n", "\n")

    def _read(self, pipe: IO[bytes], stream: str) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            data = os.read(pipe.fileno(), 65536)
            text = decoder.decode(data, final=not data)
            with self._lock:
                self._chunks[stream].append(text)
                self._combined.append(text)
            if not data:
                break
        pipe.close()
