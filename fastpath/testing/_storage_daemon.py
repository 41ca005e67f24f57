"""qemu-storage-daemon as a real vhost-user-blk back-end, for the test suite and benchmarks.

`StorageDaemon` runs one ``qemu-storage-daemon`` (QEMU 7.2, Debian package
``qemu-system-common``) exporting one block node over vhost-user-blk on the Unix socket
`socket`, as the shared notes on peers give it:

    --blockdev driver=file,node-name=disk0,filename=IMG
    --export type=vhost-user-blk,id=e0,addr.type=unix,addr.path=SOCK,node-name=disk0,
             writable=on,num-queues=N

The node is a raw file (``image``: the disk's bytes are the file's; ``discard=unmap`` on it
makes a discard punch a hole instead of being ignored) or the null driver (``null_size``:
``driver=null-co,size=BYTES,read-zeroes=on``, reads return zeros, writes go nowhere). With
``iothread`` the export runs in an iothread (``--object iothread,id=t0`` and ``iothread=t0``),
which busy-polls for up to ``poll_max_ns`` nanoseconds before it sleeps.

The daemon is the socket's server: it listens before it serves, and the constructor returns
once the socket exists. Its virtio-blk device offers split rings only (QEMU 7.2's
libvhost-user has no packed rings), INDIRECT_DESC, EVENT_IDX and the protocol feature CONFIG;
its config space says size_max 0 and seg_max 126, and max_discard_sectors and
max_write_zeroes_sectors 32768.

The process runs under a time limit (``time_limit`` seconds, then SIGKILL) and is stopped by
its own PID; it gets SIGKILL too if the thread that started it dies (``PR_SET_PDEATHSIG``).
What it prints (standard output and error together) is collected by a thread (`output`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time

from fastpath.testing._qemu import _die_with_parent

__all__ = ["StorageDaemon", "StorageDaemonError"]

STORAGE_DAEMON = "qemu-storage-daemon"
_TAIL_LINES = 40


class StorageDaemonError(RuntimeError):
    """qemu-storage-daemon is missing, failed to start, or exited early; the message ends
    with the tail of what it printed."""

    def __init__(self, message: str, output: str = ""):
        self.output = output
        if output:
            tail = "\n".join(output.rstrip("\n").splitlines()[-_TAIL_LINES:])
            message = f"{message}\n--- last lines of qemu-storage-daemon's output ---\n{tail}"
        super().__init__(message)


class StorageDaemon:
    """One qemu-storage-daemon exporting a raw `image` file or a null disk of `null_size`
    bytes as a vhost-user-blk device on `socket`; started by the constructor.

    `writable` exports it read-write (else the device offers VIRTIO_BLK_F_RO), `queues` is
    its request queues (``num-queues``), `block_size` its logical block size
    (``logical-block-size``, 512 by default), `discard` lets discards of a file punch holes;
    `iothread` runs the export in an iothread polling for up to `poll_max_ns` ns. Raises
    StorageDaemonError when the binary is missing or the socket does not appear within
    `start_timeout` seconds.
    """

    def __init__(self, socket: str | os.PathLike, *, image: str | os.PathLike | None = None,
                 null_size: int | None = None, writable: bool = True, queues: int = 1,
                 block_size: int | None = None, discard: bool = True, iothread: bool = False,
                 poll_max_ns: int | None = None, time_limit: float = 60.0,
                 start_timeout: float = 10.0, binary: str | None = None):
        program = binary or self.find()
        if program is None:
            raise StorageDaemonError(f"{STORAGE_DAEMON} is not installed (Debian package "
                                     "qemu-system-common; `make peers` installs it)")
        if (image is None) == (null_size is None):
            raise ValueError("export either an image file or a null disk of null_size bytes")
        if poll_max_ns is not None and not iothread:
            raise ValueError("poll_max_ns is the iothread's: ask for iothread too")
        self.socket = os.fspath(socket)
        if image is not None:
            node = f"driver=file,filename={_option(os.fspath(image))}" + (
                ",discard=unmap" if discard else "")
        else:
            node = f"driver=null-co,size={null_size},read-zeroes=on"
        export = (f"type=vhost-user-blk,id=e0,addr.type=unix,addr.path={_option(self.socket)},"
                  f"node-name=disk0,writable={'on' if writable else 'off'},num-queues={queues}")
        if block_size is not None:
            export += f",logical-block-size={block_size}"
        self.command = [program]
        if iothread:
            thread = "iothread,id=t0" + (f",poll-max-ns={poll_max_ns}"
                                         if poll_max_ns is not None else "")
            self.command += ["--object", thread]
            export += ",iothread=t0"
        self.command += ["--blockdev", f"{node},node-name=disk0", "--export", export]
        self._chunks: list[str] = []
        self._lock = threading.Lock()
        self._process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._watchdog = threading.Timer(time_limit, self._process.kill)
        self._watchdog.daemon = True
        self._watchdog.start()
        try:
            self._wait_for_socket(start_timeout)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def find() -> str | None:
        """The path of qemu-storage-daemon, or None when it is not installed."""
        return shutil.which(STORAGE_DAEMON)

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        return self._process.pid

    @property
    def running(self) -> bool:
        """True while the daemon runs."""
        return self._process.poll() is None

    @property
    def output(self) -> str:
        """What the daemon printed so far."""
        with self._lock:
            return "".join(self._chunks)

    def stop(self, timeout: float = 10.0) -> int:
        """End the daemon with SIGTERM (SIGKILL if it is still there after `timeout` seconds)
        and return its exit status."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._watchdog.cancel()
        self._reader.join(5)
        return self._process.returncode

    def __enter__(self) -> StorageDaemon:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_for_socket(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket):
            if not self.running:
                self._reader.join(5)
                raise StorageDaemonError(f"{STORAGE_DAEMON} exited ({self._process.returncode})"
                                         f" before listening on {self.socket}", self.output)
            if time.monotonic() > deadline:
                raise StorageDaemonError(f"{STORAGE_DAEMON} did not listen on {self.socket} "
                                         f"within {timeout} s", self.output)
            time.sleep(0.02)

    def _read(self) -> None:
        pipe = self._process.stdout
        while data := os.read(pipe.fileno(), 65536):
            with self._lock:
                self._chunks.append(data.decode(errors="replace"))
        pipe.close()


def _option(value: str) -> str:
    # QEMU's option syntax takes a comma in a value only doubled; no path here needs one.
    if "," in value:
        raise ValueError(f"a path given to {STORAGE_DAEMON} cannot contain a comma: {value!r}")
    return value
