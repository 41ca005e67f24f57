"""What a misbehaving front-end meets, case by case: each bad message gets a logged error and
the answer the protocol calls for (a failing REPLY_ACK, or the connection closed when no answer
can be given), nothing raises out of the engine, and a connection that is still open serves
the next request."""

import logging
import os
import socket
import struct

import pytest
from scripted_frontend import F, ScriptedFrontend

from fastpath.vhost_user.wire import (
    U64,
    MemoryRegion,
    ProtocolFeature,
    VringAddress,
    VringFile,
    VringState,
    encode_message,
)

HEADER = struct.Struct("<III")


def region_bytes(*regions):
    body = struct.pack("<II", len(regions), 0) + b"".join(
        struct.pack("<QQQQ", *r) for r in regions)
    return HEADER.pack(F.SET_MEM_TABLE, 1, len(body)) + body


CLOSING = {
    "truncated header": lambda fe: (fe.sock.send(b"\x01\x00\x00"), fe.sock.close()),
    "oversized payload": lambda fe: fe.sock.send(HEADER.pack(F.SET_FEATURES, 1, 1 << 20)),
    "unknown request": lambda fe: fe.sock.send(HEADER.pack(200, 1, 0)),
    "wrong number of fds": lambda fe: socket.send_fds(
        fe.sock, [encode_message(F.SET_VRING_KICK, VringFile(0))],
        [os.eventfd(0), os.eventfd(0)]),
    "overlapping regions": lambda fe: socket.send_fds(
        fe.sock, [region_bytes((0, 1 << 20, 0x10000000, 0), (0x80000, 1 << 20, 0x20000000, 0))],
        [os.dup(fe.memory.regions[0].fd), os.dup(fe.memory.regions[0].fd)]),
    "empty region": lambda fe: socket.send_fds(
        fe.sock, [region_bytes((0, 0, 0x10000000, 0))], [os.dup(fe.memory.regions[0].fd)]),
    "peer closes mid-message": lambda fe: (
        fe.sock.send(encode_message(F.SET_FEATURES, U64(1))[:15]), fe.sock.close()),
}


@pytest.mark.parametrize("case", sorted(CLOSING))
def test_a_message_that_cannot_be_answered_closes_the_connection_cleanly(case, caplog):
    fe = ScriptedFrontend()
    with caplog.at_level(logging.INFO, logger="fastpath.vhost_user"):
        CLOSING[case](fe)
        assert fe.backend.handle_request() is False
    assert any(r.levelno >= logging.INFO for r in caplog.records), case
    fe.backend.close()


REFUSED = {
    "vring size not allowed": [(F.SET_VRING_NUM, VringState(0, 100))],
    "vring size zero": [(F.SET_VRING_NUM, VringState(0, 0))],
    "vring that does not exist": [(F.SET_VRING_NUM, VringState(9, 256))],
    "kick before any memory table": [(F.SET_VRING_NUM, VringState(0, 64)),
                                     (F.SET_VRING_KICK, VringFile(0))],
    "vring outside mapped memory": [(F.SET_MEM_TABLE, None), (F.SET_VRING_NUM, VringState(0, 64)),
                                    (F.SET_VRING_ADDR, VringAddress(0, 0, 1 << 40, 1 << 41,
                                                                    1 << 42, 0)),
                                    (F.SET_VRING_KICK, VringFile(0))],
    "features never offered": [(F.SET_FEATURES, U64(1 << 63))],
    "removing memory never added": [(F.REM_MEM_REG, MemoryRegion(0x4000_0000, 4096, 0, 0))],
    "MTU out of range": [(F.NET_SET_MTU, U64(10))],
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_request_that_cannot_be_carried_out_is_acked_as_failed(case, caplog):
    from fastpath.vhost_user.wire import MemoryTable

    fe = ScriptedFrontend()
    fe.send(F.SET_PROTOCOL_FEATURES, U64(ProtocolFeature.REPLY_ACK))
    *setup, (request, payload) = REFUSED[case]
    for req, pl in setup:
        if req == F.SET_MEM_TABLE:
            r = fe.memory.regions[0]
            fe.send(req, MemoryTable((MemoryRegion(0, r.size, r.user_addr, 0),)),
                    fds=[os.dup(r.fd)])
        else:
            fe.send(req, pl, fds=[os.eventfd(0)] if req == F.SET_VRING_KICK else ())
    with caplog.at_level(logging.ERROR, logger="fastpath.vhost_user"):
        fds = [os.eventfd(0)] if request == F.SET_VRING_KICK else ()
        assert fe.send(request, payload, fds=fds, need_reply=True) is True
    assert fe.reply() == U64(1)
    assert any(request.name in r.getMessage() for r in caplog.records)
    # The connection goes on.
    fe.send(F.GET_QUEUE_NUM)
    assert fe.reply() == U64(1)
    fe.backend.close()
