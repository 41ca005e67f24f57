"""The listening back-end: many front-ends on one socket path, each with its own engine, and a
misbehaving one never takes the others down."""

import os
import socket

import pytest
from scripted_frontend import PlainDevice, served

from fastpath.vhost_user._backend import Backend
from fastpath.vhost_user._server import BackendClient, BackendServer
from fastpath.vhost_user.wire import U64, FrontendRequest, decode_message, encode_message
from fastpath.vring import VIRTIO_F_VERSION_1

F = FrontendRequest


@pytest.fixture
def server(tmp_path):
    with served(str(tmp_path / "vhost.sock")) as srv:
        yield srv


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.settimeout(5)
    return sock


def get_features(sock: socket.socket) -> int:
    sock.send(encode_message(F.GET_FEATURES))
    return decode_message(sock.recv(4096), reply=True).payload.value


def test_two_front_ends_are_served_side_by_side(server):
    a, b = connect(server.path), connect(server.path)
    assert get_features(a) & 1 << VIRTIO_F_VERSION_1
    assert get_features(b) & 1 << VIRTIO_F_VERSION_1
    a.close()
    b.close()


def test_a_malformed_message_closes_only_its_own_connection(server):
    bad, good = connect(server.path), connect(server.path)
    assert get_features(good)
    bad.send(b"\x01\x00\x00\x00\x07\x00\x00\x00\x00\x00\x00\x00")  # version 3
    assert bad.recv(4096) == b""  # the back-end hung up on it
    good.send(encode_message(F.SET_FEATURES, U64(1 << VIRTIO_F_VERSION_1)))
    assert get_features(good) & 1 << VIRTIO_F_VERSION_1
    good.close()
    bad.close()


def test_a_front_end_can_come_back_after_leaving(server):
    first = connect(server.path)
    assert get_features(first)
    first.close()
    again = connect(server.path)
    assert get_features(again)
    again.close()


def test_a_stale_socket_file_is_replaced_but_a_regular_file_is_not(tmp_path):
    stale = tmp_path / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(stale))
    leftover.close()
    BackendServer(str(stale), lambda ch: Backend(ch, PlainDevice(features=0, queues=1))).close()
    regular = tmp_path / "file"
    regular.write_text("not a socket")
    with pytest.raises(FileExistsError):
        BackendServer(str(regular), lambda ch: Backend(ch, PlainDevice(features=0, queues=1)))
    assert regular.exists() and os.path.isfile(regular)


def test_client_mode_waits_for_the_front_end_and_reconnects_after_it_restarts(tmp_path):
    path = str(tmp_path / "frontend.sock")
    client = BackendClient(path, lambda ch: Backend(ch, PlainDevice(
        features=1 << VIRTIO_F_VERSION_1)), retry_interval=0.01)
    client.serve_once(0.01)  # nobody listening yet: no error, no connection
    assert client.backend is None
    for restart in range(2):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(5)
        while client.backend is None or client.connections <= restart:
            client.serve_once(0.01)
        front_end, _ = listener.accept()
        front_end.settimeout(5)
        front_end.send(encode_message(F.GET_FEATURES))
        client.serve_once(1.0)
        reply = decode_message(front_end.recv(4096), reply=True).payload.value
        assert reply & 1 << VIRTIO_F_VERSION_1
        # The front-end goes away (killed, restarted): the back-end notices and lets go.
        front_end.close()
        listener.close()
        os.unlink(path)
        client.serve_once(1.0)
        assert client.backend is None
    assert client.connections == 2
    client.close()
