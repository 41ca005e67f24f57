"""Loop adapters over the stepped `Backend` engine: a listening back-end (server mode) and one
that connects to a listening front-end and reconnects when it goes away (client mode).

Each connection gets its own `Backend`; one that misbehaves or goes away is closed and forgotten
while the others carry on.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import stat
import time
from collections.abc import Callable

from fastpath.vhost_user._backend import Backend
from fastpath.vhost_user._channel import Channel

log = logging.getLogger("fastpath.vhost_user")


class BackendServer:
    """Listen on a Unix socket path; `make_backend(channel)` builds each connection's engine.

    With `max_connections`, a front-end that connects while that many are connected is
    closed at once (a device that serves one front-end at a time).
    """

    def __init__(self, path: str, make_backend: Callable[[Channel], Backend], *,
                 backlog: int = 4, max_connections: int | None = None):
        self.path = path
        self.make_backend = make_backend
        self.max_connections = max_connections
        if os.path.exists(path):
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                raise FileExistsError(f"{path} exists and is not a socket")
            os.unlink(path)  # a socket left behind by an earlier run
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(backlog)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.backends: list[Backend] = []

    def serve_once(self, timeout: float | None = None) -> None:
        """Wait up to `timeout` seconds, then accept new connections and handle one message on
        every connection that has one."""
        for key, _ in self.selector.select(timeout):
            if key.fileobj is self.listener:
                self._accept()
            elif not key.data.handle_request():
                self._drop(key.data)

    def close(self) -> None:
        """Close every connection and the listening socket, and remove the socket file."""
        for backend in list(self.backends):
            self._drop(backend)
        self.selector.unregister(self.listener)
        self.selector.close()
        self.listener.close()
        if os.path.exists(self.path):
            os.unlink(self.path)

    def _accept(self) -> None:
        sock, _ = self.listener.accept()
        if self.max_connections is not None and len(self.backends) >= self.max_connections:
            log.error("refused a front-end on %s: %d already connected", self.path,
                      len(self.backends))
            sock.close()
            return
        backend = self.make_backend(Channel(sock))
        self.backends.append(backend)
        self.selector.register(sock, selectors.EVENT_READ, backend)
        log.info("front-end connected on %s (%d connected)", self.path, len(self.backends))

    def _drop(self, backend: Backend) -> None:
        self.selector.unregister(backend.channel.sock)
        self.backends.remove(backend)
        backend.close()


class BackendClient:
    """Connect to a front-end listening on `path` (QEMU `server=on`, DPDK `server=1`), serve it,
    and connect again whenever the connection ends or the front-end is not there yet."""

    # A front-end that is not listening yet, or went away: worth trying again later.
    _RETRY = {errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN}

    def __init__(self, path: str, make_backend: Callable[[Channel], Backend], *,
                 retry_interval: float = 0.5):
        self.path = path
        self.make_backend = make_backend
        self.retry_interval = retry_interval
        self.backend: Backend | None = None
        self.connections = 0
        self._next_attempt = 0.0

    def serve_once(self, timeout: float = 0.1) -> None:
        """Connect if not connected (at most once per retry interval), else handle a message
        if one arrives within `timeout` seconds."""
        if self.backend is None:
            self._try_connect()
            if self.backend is None:
                time.sleep(min(timeout, max(0.0, self._next_attempt - time.monotonic())))
                return
        readable = selectors.DefaultSelector()
        try:
            readable.register(self.backend.channel.sock, selectors.EVENT_READ)
            if readable.select(timeout) and not self.backend.handle_request():
                self.backend.close()
                self.backend = None
                log.info("front-end on %s went away; reconnecting", self.path)
        finally:
            readable.close()

    def close(self) -> None:
        """Close the connection, if any."""
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def _try_connect(self) -> None:
        if time.monotonic() < self._next_attempt:
            return
        self._next_attempt = time.monotonic() + self.retry_interval
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            if e.errno not in self._RETRY:
                raise
            return
        self.backend = self.make_backend(Channel(sock))
        self.connections += 1
        log.info("connected to the front-end on %s", self.path)
