"""One vhost-user connection over a Unix stream socket: whole messages with their fds.

Front-ends attach a message's fds to the sendmsg that carries its first byte, so fds are taken
from the header's read only. Every fd received is either handed to the caller with a message that
decoded cleanly or closed here: a malformed message leaks nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import NamedTuple

from fastpath.errors import ChannelClosed, TruncatedMessage, WrongFdCount
from fastpath.vhost_user._payloads import MAX_FDS
from fastpath.vhost_user._protocol import (
    HEADER_SIZE,
    FrontendRequest,
    Message,
    Request,
    decode_header,
    decode_payload,
)


class Received(NamedTuple):
    """A decoded message and the fds that came with it (now the caller's to close)."""

    message: Message
    fds: list[int]


class Channel:
    """Blocking, whole-message I/O on a connected Unix stream socket.

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

    def fileno(self) -> int:
        """The socket's fd, so that a selector can wait on the channel."""
        return self.sock.fileno()

    def receive(self) -> Received:
        """Read one whole message. Raises ChannelClosed at a clean end of stream, or a
        ProtocolError subclass (TruncatedMessage for an end mid-message) with every fd closed.
        """
        header_bytes, fds = self._receive_header()
        try:
            header = decode_header(header_bytes, requests=self.requests, reply=self.replies)
            payload = self._receive_exactly(header.size, "payload")
            decoded = decode_payload(header.request, payload, fds, reply=self.replies)
        except BaseException:
            _close_all(fds)
            raise
        return Received(Message(header, decoded), fds)

    def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send one encoded message, its fds attached to the first byte."""
        if len(fds) > MAX_FDS:
            raise ValueError(f"a message carries at most {MAX_FDS} fds, not {len(fds)}")
        sent = socket.send_fds(self.sock, [data], list(fds)) if fds else self.sock.send(data)
        if sent < len(data):
            self.sock.sendall(data[sent:])

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def _receive_header(self) -> tuple[bytes, list[int]]:
        data, fds, flags, _ = socket.recv_fds(self.sock, HEADER_SIZE, MAX_FDS)
        if flags & socket.MSG_CTRUNC:
            _close_all(fds)
            raise WrongFdCount(f"more than {MAX_FDS} fds arrived with one message")
        if not data:
            _close_all(fds)
            raise ChannelClosed("the peer closed the connection")
        if len(data) < HEADER_SIZE:
            try:
                data += self._receive_exactly(HEADER_SIZE - len(data), "header")
            except BaseException:
                _close_all(fds)
                raise
        return data, fds

    def _receive_exactly(self, n: int, what: str) -> bytes:
        chunks = []
        left = n
        while left:
            chunk = self.sock.recv(left)
            if not chunk:
                raise TruncatedMessage(f"the peer closed the connection {n - left} bytes into "
                                       f"a {n}-byte {what}")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)
