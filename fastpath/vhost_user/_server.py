"""A listening vhost-user back-end: a selector adapter over the stepped `Backend` engine.

Each accepted connection gets its own `Backend`; one that misbehaves or goes away is closed and
forgotten while the others carry on.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import stat
from collections.abc import Callable

from fastpath.vhost_user._backend import Backend
from fastpath.vhost_user._channel import Channel

log = logging.getLogger("fastpath.vhost_user")


class BackendServer:
    """Listen on a Unix socket path; `make_backend(channel)` builds each connection's engine."""

    def __init__(self, path: str, make_backend: Callable[[Channel], Backend], *,
                 backlog: int = 4):
        self.path = path
        self.make_backend = make_backend
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
        backend = self.make_backend(Channel(sock))
        self.backends.append(backend)
        self.selector.register(sock, selectors.EVENT_READ, backend)
        log.info("front-end connected on %s (%d connected)", self.path, len(self.backends))

    def _drop(self, backend: Backend) -> None:
        self.selector.unregister(backend.channel.sock)
        self.backends.remove(backend)
        backend.close()
