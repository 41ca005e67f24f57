"""No front-end can stall or kill another: each hostile front-end is left connected (or hangs
up at its worst moment) while a well-behaved one on the same listening socket is served. Here
against the listening adapter in a thread; tests/integration/test_isolation.py does the same
to a `fastpath vhost-net` process while frames move."""

import logging
import os
import socket
import struct
import time

import pytest
from scripted_frontend import served

from fastpath.vhost_user._channel import MAX_QUEUED_OUTPUT
from fastpath.vhost_user.wire import (
    U64,
    FrontendRequest,
    ProtocolFeature,
    VringFile,
    decode_message,
    encode_message,
)
from fastpath.vring import VIRTIO_F_VERSION_1

F = FrontendRequest
DEADLINE = 0.3


@pytest.fixture
def server(tmp_path):
    # Anything escaping the adapter's loop fails the test (see `served`).
    with served(str(tmp_path / "vhost.sock"), message_deadline=DEADLINE) as srv:
        yield srv


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.settimeout(2)
    return sock


def answered_promptly(path: str) -> bool:
    """A new, well-behaved front-end's GET_FEATURES is answered within the socket timeout."""
    with connect(path) as good:
        good.send(encode_message(F.GET_FEATURES))
        reply = decode_message(good.recv(4096), reply=True).payload.value
    return bool(reply & 1 << VIRTIO_F_VERSION_1)


def hung_up(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("how", ["close", "reset"])
def test_front_ends_that_leave_before_reading_their_reply_cost_only_themselves(server, how):
    for _ in range(200):
        sock = connect(server.path)
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.send(encode_message(F.GET_FEATURES))
        sock.close()
    assert answered_promptly(server.path)
    wait_for(lambda: not server.backends)


@pytest.mark.parametrize("part", ["header", "payload"])
def test_half_a_message_stalls_nobody_and_is_closed_at_the_deadline(server, part, caplog):
    message = encode_message(F.SET_FEATURES, U64(1 << VIRTIO_F_VERSION_1))
    cut = 5 if part == "header" else 15
    with caplog.at_level(logging.ERROR, logger="fastpath.vhost_user"):
        hostile = connect(server.path)
        hostile.send(message[:cut])
        started = time.monotonic()
        for _ in range(3):
            assert answered_promptly(server.path)
        assert hung_up(hostile, within=DEADLINE + 2)
        assert time.monotonic() - started >= DEADLINE
    assert any("half-sent" in r.getMessage() for r in caplog.records)
    hostile.close()


def test_a_front_end_that_never_reads_its_replies_is_closed_when_they_pile_up(server, caplog):
    hostile = connect(server.path)
    hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    request = encode_message(F.GET_FEATURES)
    with caplog.at_level(logging.ERROR, logger="fastpath.vhost_user"):
        sent = 0
        try:
            # Far more replies than the socket buffers and the bounded queue can hold.
            while sent < 20 * MAX_QUEUED_OUTPUT:
                sent += hostile.send(request)
                if sent % (64 * len(request)) == 0:
                    assert answered_promptly(server.path)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        wait_for(lambda: len(server.backends) == 0, timeout=30)
    assert any("unread" in r.getMessage() for r in caplog.records)
    assert answered_promptly(server.path)
    hostile.close()


def test_a_front_end_that_stops_reading_its_replies_is_closed_at_the_deadline(server, caplog):
    hostile = connect(server.path)
    hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    batch = encode_message(F.GET_FEATURES) * 100
    with caplog.at_level(logging.ERROR, logger="fastpath.vhost_user"):
        # Just enough requests that replies wait in the back-end, far fewer than its bound.
        while not (server.backends and server.backends[0].channel.has_queued_output):
            hostile.sendall(batch)
            time.sleep(0.05)
        wait_for(lambda: not server.backends, timeout=DEADLINE + 20)
    assert any("for more than" in r.getMessage() for r in caplog.records)
    assert answered_promptly(server.path)
    hostile.close()


@pytest.mark.parametrize("acked", [False, True], ids=["no-ack", "reply-ack"])
def test_a_call_fd_that_is_not_an_eventfd_is_refused(server, acked):
    hostile = connect(server.path)
    read_end, write_end = os.pipe()
    if acked:
        hostile.send(encode_message(F.SET_PROTOCOL_FEATURES, U64(ProtocolFeature.REPLY_ACK)))
    flags = 1 << 3 if acked else 0  # NEED_REPLY
    socket.send_fds(hostile, [encode_message(F.SET_VRING_CALL, VringFile(0), flags=flags)],
                    [write_end])
    os.close(write_end)
    if acked:
        # A failing ack, and the connection goes on.
        assert decode_message(hostile.recv(4096), reply=True).payload == U64(1)
        hostile.send(encode_message(F.GET_QUEUE_NUM))
        assert decode_message(hostile.recv(4096), reply=True).payload == U64(1)
        assert server.backends[0].vrings[0].call is None
    else:
        assert hung_up(hostile, within=2)
    assert answered_promptly(server.path)
    os.close(read_end)
    hostile.close()


def test_call_and_kick_eventfds_are_made_non_blocking(server):
    sock = connect(server.path)
    call = os.eventfd(0)
    socket.send_fds(sock, [encode_message(F.SET_VRING_CALL, VringFile(0))], [call])
    wait_for(lambda: server.backends and server.backends[0].vrings[0].call is not None)
    # The back-end's signal can never block on a counter the front-end let fill up.
    assert not os.get_blocking(server.backends[0].vrings[0].call)
    os.close(call)
    sock.close()
