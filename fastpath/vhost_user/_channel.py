"""One vhost-user connection over a Unix stream socket: whole messages with their fds.

Front-ends attach a message's fds to the sendmsg that carries its first byte, so fds are taken
from the header's reads only. Every fd received is either handed to the caller with a message
that decoded cleanly or closed here: a malformed message leaks nothing.

A channel reads and writes in two ways. A front-end waits for each reply (`receive`, `send`).
A back-end serving many front-ends from one thread must never wait on any of them:
`receive_nowait` takes whatever bytes have arrived and hands out a message once it is whole,
and `send_nowait` queues what the socket cannot take at once, up to a bound, for `flush` to
write when the socket is writable. `waiting_since` tells a loop how long a message has been
half-read or a reply unread, so that it can close a peer that stalls.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import time
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

from fastpath.errors import ChannelClosed, PeerTooSlow, TruncatedMessage, WrongFdCount
from fastpath.vhost_user._payloads import MAX_FDS
from fastpath.vhost_user._protocol import (
    HEADER_SIZE,
    FrontendRequest,
    Header,
    Message,
    Request,
    decode_header,
    decode_payload,
)

# Replies and back-end requests are at most a few hundred bytes; a peer that leaves this much
# unread is not reading at all.
MAX_QUEUED_OUTPUT = 64 * 1024

# Errors of a send or receive that mean the peer has gone.
_GONE = {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN}


class Received(NamedTuple):
    """A decoded message and the fds that came with it (now the caller's to close)."""

    message: Message
    fds: list[int]


class Channel:
    """Whole-message I/O on a connected Unix stream socket.

    `requests` is the id space of what arrives (FrontendRequest on a back-end's main socket);
    `replies=True` when what arrives are replies (a front-end reading its back-end).
    """

    def __init__(self, sock: socket.socket, *, requests: type[Request] = FrontendRequest,
                 replies: bool = False):
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ValueError("a vhost-user channel needs a Unix stream socket")
        self.sock = sock
        self.requests = requests
        self.replies = replies
        # The message being read: header bytes until a header decodes, then payload bytes.
        self._bytes = bytearray()
        self._fds: list[int] = []
        self._header: Header | None = None
        self._reading_since: float | None = None
        # Output the socket has not taken yet: [bytes left, fds for its first byte] per message.
        self._queued: deque[list] = deque()
        self._queued_bytes = 0
        self._writing_since: float | None = None

    def fileno(self) -> int:
        """The socket's fd, so that a selector can wait on the channel."""
        return self.sock.fileno()

    # --- receiving ---

    def receive(self) -> Received:
        """Wait for one whole message. Raises ChannelClosed at a clean end of stream, or a
        ProtocolError subclass (TruncatedMessage for an end mid-message) with every fd closed.
        """
        received = None
        while received is None:
            received = self._read(wait=True)
        return received

    def receive_nowait(self) -> Received | None:
        """Read what has arrived without waiting: the message once it is whole, else None
        (call again when the socket is readable). Raises as `receive` does."""
        return self._read(wait=False)

    def _read(self, wait: bool) -> Received | None:
        flags = 0 if wait else socket.MSG_DONTWAIT
        try:
            while self._header is None:
                if not self._read_header_bytes(flags):
                    return None
            while len(self._bytes) < self._header.size:
                chunk = self._recv(self._header.size - len(self._bytes), flags, "payload")
                if chunk is None:
                    return None
                self._bytes += chunk
            payload = decode_payload(self._header.request, bytes(self._bytes), self._fds,
                                     reply=self.replies)
        except BaseException:
            self._drop_partial()
            raise
        received = Received(Message(self._header, payload), self._fds)
        self._fds = []
        self._drop_partial()
        return received

    def _read_header_bytes(self, flags: int) -> bool:
        # False when nothing more has arrived yet.
        try:
            data, fds, msg_flags = _recv_with_fds(self.sock, HEADER_SIZE - len(self._bytes),
                                                  flags)
        except BlockingIOError:
            return False
        except OSError as e:
            self._gone_while_reading(e, "header")
        self._fds += fds
        if msg_flags & socket.MSG_CTRUNC or len(self._fds) > MAX_FDS:
            raise WrongFdCount(f"more than {MAX_FDS} fds arrived with one message")
        if not data:
            if self._bytes or self._fds:
                raise TruncatedMessage(f"the peer closed the connection {len(self._bytes)} "
                                       f"bytes into a {HEADER_SIZE}-byte header")
            raise ChannelClosed("the peer closed the connection")
        if self._reading_since is None:
            self._reading_since = time.monotonic()
        self._bytes += data
        if len(self._bytes) == HEADER_SIZE:
            self._header = decode_header(bytes(self._bytes), requests=self.requests,
                                         reply=self.replies)
            self._bytes = bytearray()
        return True

    def _recv(self, n: int, flags: int, what: str) -> bytes | None:
        try:
            chunk = self.sock.recv(n, flags)
        except BlockingIOError:
            return None
        except OSError as e:
            self._gone_while_reading(e, what)
        if not chunk:
            raise TruncatedMessage(f"the peer closed the connection {len(self._bytes)} bytes "
                                   f"into a {self._header.size}-byte {what}")
        return chunk

    def _gone_while_reading(self, e: OSError, what: str):
        if e.errno not in _GONE:
            raise e
        if self._bytes or self._fds or self._header is not None:
            raise TruncatedMessage(f"the connection broke in the middle of a {what}: "
                                   f"{e.strerror}") from None
        raise ChannelClosed(f"the connection broke: {e.strerror}") from None

    def _drop_partial(self) -> None:
        _close_all(self._fds)
        self._fds = []
        self._bytes = bytearray()
        self._header = None
        self._reading_since = None

    # --- sending ---

    def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send one encoded message, its fds attached to the first byte, waiting until the
        socket has taken it all. Raises ChannelClosed if the peer has gone."""
        _check_fd_count(fds)
        try:
            sent = _send_with_fds(self.sock, data, fds, socket.MSG_NOSIGNAL)
            if sent < len(data):
                self.sock.sendall(data[sent:], socket.MSG_NOSIGNAL)
        except OSError as e:
            _raise_if_gone(e)
            raise

    def send_nowait(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send one encoded message without waiting: what the socket cannot take now is queued
        (the fds duplicated until they go) and written by `flush`. Raises ChannelClosed if
        the peer has gone, PeerTooSlow once more than MAX_QUEUED_OUTPUT bytes wait unread."""
        _check_fd_count(fds)
        if self._queued_bytes + len(data) > MAX_QUEUED_OUTPUT:
            raise PeerTooSlow(f"the peer has left {self._queued_bytes} bytes unread")
        self._queued.append([bytes(data), [os.dup(fd) for fd in fds]])
        self._queued_bytes += len(data)
        if self._writing_since is None:
            self._writing_since = time.monotonic()
        self.flush()

    def flush(self) -> bool:
        """Write queued output the socket takes without waiting; True once none is left."""
        while self._queued:
            entry = self._queued[0]
            data, fds = entry
            try:
                sent = _send_with_fds(self.sock, data, fds,
                                      socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except BlockingIOError:
                return False
            except OSError as e:
                _raise_if_gone(e)
                raise
            _close_all(fds)
            entry[1] = []
            self._queued_bytes -= sent
            if sent < len(data):
                entry[0] = data[sent:]
                return False
            self._queued.popleft()
            self._writing_since = time.monotonic() if self._queued else None
        return True

    @property
    def has_queued_output(self) -> bool:
        """Whether output waits for the socket to become writable."""
        return bool(self._queued)

    def waiting_since(self) -> float | None:
        """Since when (time.monotonic) a message has been half-read or output has waited for
        the peer to read it; None while neither."""
        times = [t for t in (self._reading_since, self._writing_since) if t is not None]
        return min(times, default=None)

    def close(self) -> None:
        """Close the connection and everything still held for it."""
        self._drop_partial()
        for _, fds in self._queued:
            _close_all(fds)
        self._queued.clear()
        self._queued_bytes = 0
        self.sock.close()


# socket.send_fds and socket.recv_fds of Python 3.11 drop their flags argument (so
# MSG_DONTWAIT would block); these pass them on.
def _send_with_fds(sock: socket.socket, data: bytes, fds: Sequence[int], flags: int) -> int:
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    return sock.sendmsg([data], ancillary, flags)


def _recv_with_fds(sock: socket.socket, n: int, flags: int) -> tuple[bytes, list[int], int]:
    fds = array.array("i")
    data, ancillary, msg_flags, _ = sock.recvmsg(n, socket.CMSG_LEN(MAX_FDS * fds.itemsize),
                                                 flags)
    for level, kind, item in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(item[: len(item) - len(item) % fds.itemsize])
    return data, list(fds), msg_flags


def _check_fd_count(fds: Sequence[int]) -> None:
    if len(fds) > MAX_FDS:
        raise ValueError(f"a message carries at most {MAX_FDS} fds, not {len(fds)}")


def _raise_if_gone(e: OSError) -> None:
    if e.errno in _GONE:
        raise ChannelClosed(f"the peer went away: {e.strerror}") from None


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)
