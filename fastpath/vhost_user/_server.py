"""Loop adapters over the stepped `Backend` engine: a listening back-end (server mode) and one
that connects to a listening front-end and reconnects when it goes away (client mode).

Each connection gets its own `Backend`; one that misbehaves or goes away is closed and forgotten
while the others carry on. No connection can hold the loop: sockets are read and written without
waiting, and a front-end that leaves a message half-sent, or its replies unread, for longer than
`message_deadline` seconds is closed with a log line.
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

from fastpath.errors import ChannelClosed
from fastpath.vhost_user._backend import Backend
from fastpath.vhost_user._channel import Channel

log = logging.getLogger("fastpath.vhost_user")

# Real front-ends send a message whole, in one sendmsg, and read each reply at once; ten
# seconds leaves room for a front-end on a loaded machine (QEMU under TCG).
MESSAGE_DEADLINE = 10.0


def _serve_events(backend: Backend, events: int) -> bool:
    # A readable and/or writable connection's turn; False once it is over.
    try:
        if events & selectors.EVENT_WRITE:
            backend.channel.flush()
    except ChannelClosed as e:
        log.info("front-end disconnected: %s", e)
        return False
    return not events & selectors.EVENT_READ or backend.handle_request()


def _interest(backend: Backend) -> int:
    # Writable interest only while output waits, so that an idle socket does not wake the loop.
    return selectors.EVENT_READ | (selectors.EVENT_WRITE if backend.channel.has_queued_output
                                   else 0)


def _must_close(backend: Backend, deadline: float) -> bool:
    # A front-end that stalled past the deadline, or broke its connection outside a request.
    # Every turn also reads the back-end channel's acks and sends the IOTLB misses the rings
    # met (a pop that meets one wakes the loop through backend.miss_fd).
    backend.poll_backend_replies()
    backend.poll_iotlb()
    reason = backend.must_close
    if reason:
        log.error("closing a front-end: %s", reason)
        return True
    since = backend.waiting_since()
    if since is None or time.monotonic() - since <= deadline:
        return False
    log.error("closing a front-end that left a message half-sent, its replies unread or a "
              "back-end request unanswered for more than %g s", deadline)
    return True


class BackendServer:
    """Listen on a Unix socket path; `make_backend(channel)` builds each connection's engine.

    With `max_connections`, a front-end that connects while that many are connected is
    closed at once (a device that serves one front-end at a time).
    """

    def __init__(self, path: str, make_backend: Callable[[Channel], Backend], *,
                 backlog: int = 16, max_connections: int | None = None,
                 message_deadline: float = MESSAGE_DEADLINE):
        self.path = path
        self.make_backend = make_backend
        self.max_connections = max_connections
        self.message_deadline = message_deadline
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
        """Wait up to `timeout` seconds (at most the message deadline), then accept new
        connections, handle one message on every connection that has one, write queued
        replies, and close connections that stalled past the deadline."""
        if timeout is None or timeout > self.message_deadline:
            timeout = self.message_deadline
        for key, events in self.selector.select(timeout):
            if key.fileobj is self.listener:
                self._accept()
            elif key.fileobj is key.data.channel.sock and not _serve_events(key.data, events):
                self._drop(key.data)
        for backend in list(self.backends):
            if _must_close(backend, self.message_deadline):
                self._drop(backend)
            else:
                self.selector.modify(backend.channel.sock, _interest(backend), backend)

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
        try:
            sock, _ = self.listener.accept()
        except OSError as e:
            # The front-end gave up before it was accepted (ECONNABORTED), or the process is
            # out of fds: the others go on, and the listener is tried again next time.
            log.error("accepting a front-end on %s failed: %s", self.path, e)
            return
        if self.max_connections is not None and len(self.backends) >= self.max_connections:
            log.error("refused a front-end on %s: %d already connected", self.path,
                      len(self.backends))
            sock.close()
            return
        backend = self.make_backend(Channel(sock))
        self.backends.append(backend)
        self.selector.register(sock, selectors.EVENT_READ, backend)
        # A pop that meets a missing translation wakes the loop (see _must_close).
        self.selector.register(backend.miss_fd, selectors.EVENT_READ, backend)
        log.info("front-end connected on %s (%d connected)", self.path, len(self.backends))

    def _drop(self, backend: Backend) -> None:
        self.selector.unregister(backend.channel.sock)
        self.selector.unregister(backend.miss_fd)
        self.backends.remove(backend)
        backend.close()


class BackendClient:
    """Connect to a front-end listening on `path` (QEMU `server=on`, DPDK `server=1`), serve it,
    and connect again whenever the connection ends or the front-end is not there yet."""

    # A front-end that is not listening yet, or went away: worth trying again later.
    _RETRY = {errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN}

    def __init__(self, path: str, make_backend: Callable[[Channel], Backend], *,
                 retry_interval: float = 0.5, message_deadline: float = MESSAGE_DEADLINE):
        self.path = path
        self.make_backend = make_backend
        self.retry_interval = retry_interval
        self.message_deadline = message_deadline
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
        selector = selectors.DefaultSelector()
        try:
            selector.register(self.backend.channel.sock, _interest(self.backend))
            selector.register(self.backend.miss_fd, selectors.EVENT_READ)
            ready = [events for key, events in selector.select(timeout)
                     if key.fileobj is self.backend.channel.sock]
            over = (bool(ready) and not _serve_events(self.backend, ready[0])) or _must_close(
                self.backend, self.message_deadline)
        finally:
            selector.close()
        if over:
            self.backend.close()
            self.backend = None
            log.info("front-end on %s went away; reconnecting", self.path)

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
