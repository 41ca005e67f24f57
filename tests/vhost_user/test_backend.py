"""The back-end engine, one message per call, driven over a real socket pair by a scripted
front-end that sends what DPDK's virtio-user sends (see the shared notes on peers)."""

import logging
import os
import socket

import pytest
from scripted_frontend import F, ScriptedFrontend

from fastpath.hv import GuestMemory
from fastpath.vhost_user.wire import (
    FLAG_REPLY,
    U64,
    ProtocolFeature,
    VringAddress,
    VringFile,
    VringState,
)
from fastpath.vring import PackedDriverQueue, SplitDriverQueue


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_a_dpdk_style_handshake_starts_rings_that_carry_buffers(packed):
    fe = ScriptedFrontend()
    fe.handshake(packed)
    rings = fe.start_vring(0, 256, packed, base=0x8000 if packed else 0)
    driver_class = PackedDriverQueue if packed else SplitDriverQueue
    driver = driver_class(fe.memory, 256, rings)
    # the driver's own ring init happened after the back-end mapped it: same memory, shared
    fe.memory.write(0x200000, b"frame")
    driver.add(readable=[(0x200000, 5)])
    vring = fe.backend.vrings[0]
    assert vring.started and vring.enabled
    burst = vring.queue.new_burst()
    assert vring.queue.pop(burst) == 1
    assert burst.readable(0) == b"frame"
    vring.queue.push(burst)
    assert driver.collect() == [(0, 0)]
    fe.send(F.GET_VRING_BASE, VringState(0, 0))
    base = fe.reply()
    assert base.index == 0
    # Packed: avail slot 1 with wrap counter 1 in bits 0-15, used slot 1 with wrap counter 1
    # in bits 16-31, as QEMU reads a packed ring's state back.
    assert base.num == (0x8001_8001 if packed else 1)
    assert not vring.started
    fe.backend.close()


def test_a_failed_request_is_acknowledged_as_failed_and_the_engine_goes_on():
    fe = ScriptedFrontend()
    fe.handshake(False)
    assert fe.send(F.SET_VRING_NUM, VringState(7, 256), need_reply=True)  # no vring 7
    assert fe.reply() == U64(1)
    assert fe.send(F.SET_VRING_NUM, VringState(0, 100), need_reply=True)  # not a power of two
    assert fe.reply() == U64(1)
    assert fe.send(F.GET_QUEUE_NUM)
    assert fe.reply() == U64(1)
    fe.backend.close()


def test_a_kick_before_any_memory_table_is_refused():
    fe = ScriptedFrontend()
    fe.send(F.SET_PROTOCOL_FEATURES, U64(ProtocolFeature.REPLY_ACK))
    fe.send(F.SET_VRING_NUM, VringState(0, 64))
    assert fe.send(F.SET_VRING_KICK, VringFile(0), fds=[os.eventfd(0)], need_reply=True)
    assert fe.reply() == U64(1)
    assert not fe.backend.vrings[0].started
    fe.backend.close()


def test_a_vring_address_outside_the_memory_table_is_refused():
    fe = ScriptedFrontend()
    fe.handshake(False)
    fe.send(F.SET_VRING_NUM, VringState(0, 64))
    fe.send(F.SET_VRING_ADDR, VringAddress(0, 0, 0x10, 0x20, 0x30, 0))  # not front-end addresses
    assert fe.send(F.SET_VRING_KICK, VringFile(0), fds=[os.eventfd(0)], need_reply=True)
    assert fe.reply() == U64(1)
    assert not fe.backend.vrings[0].started
    fe.backend.close()


def test_features_that_were_not_offered_are_refused():
    fe = ScriptedFrontend()
    fe.send(F.SET_PROTOCOL_FEATURES, U64(ProtocolFeature.REPLY_ACK))
    fe.send(F.SET_FEATURES, U64(1 << 5), need_reply=True)
    assert fe.reply() == U64(1)
    assert fe.backend.acked == 0
    fe.backend.close()


def test_get_config_reads_the_device_config_space():
    from fastpath.vhost_user.wire import ConfigFlag, DeviceConfig

    fe = ScriptedFrontend()
    fe.send(F.GET_CONFIG, DeviceConfig(2, ConfigFlag(0), bytes(4)))
    assert fe.reply().data == bytes([2, 3, 4, 5])
    fe.backend.close()


def test_a_malformed_message_ends_the_connection():
    fe = ScriptedFrontend()
    fe.sock.send(b"\x05\x00\x00\x00\x01\x00\x00\x00\x08\x00\x00\x00" + bytes(8))  # 0 regions
    assert fe.backend.handle_request() is False
    fe.backend.close()


def test_a_front_end_that_goes_away_ends_the_connection_cleanly():
    fe = ScriptedFrontend()
    fe.sock.close()
    assert fe.backend.handle_request() is False
    fe.backend.close()


def test_reply_flag_is_set_on_replies():
    fe = ScriptedFrontend()
    fe.send(F.GET_FEATURES)
    header = fe.sock.recv(12)
    assert int.from_bytes(header[4:8], "little") & FLAG_REPLY
    fe.backend.close()


def test_the_backend_request_channel_is_kept_and_closed_with_the_connection():
    fe = ScriptedFrontend()
    fe.handshake(False)
    a, b = socket.socketpair()
    fe.send(F.SET_BACKEND_REQ_FD, fds=[b.fileno()], need_reply=True)
    assert fe.reply() == U64(0)
    assert fe.backend.backend_channel is not None
    fe.backend.close()
    b.close()
    a.settimeout(1)
    assert a.recv(1) == b""  # the back-end's copy is closed too
    a.close()


def test_a_dirty_log_without_log_shmfd_ends_the_connection():
    # SET_LOG_BASE always gets a reply; one the back-end cannot give ends the connection.
    from fastpath.hv import GuestMemory
    from fastpath.vhost_user.wire import LogArea

    fe = ScriptedFrontend()
    fe.handshake(False)
    log = GuestMemory([(0, 4096)])
    assert fe.send(F.SET_LOG_BASE, LogArea(4096, 0), fds=[os.dup(log.regions[0].fd)]) is False
    assert fe.backend.log is None
    fe.backend.close()
    log.close()


def open_memfds() -> int:
    """memfds this process holds open (what a leaked memory table would add to)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")
        except OSError:  # the directory's own fd, closed by now
            pass
    return count


def test_a_new_kick_fd_for_a_running_ring_goes_on_from_where_the_ring_stands():
    fe = ScriptedFrontend()
    fe.handshake(False)
    rings = fe.start_vring(0, 64, False)
    driver = SplitDriverQueue(fe.memory, 64, rings)
    for _ in range(3):
        driver.add(readable=[(0x200000, 4)])
    queue = fe.backend.vrings[0].queue
    burst = queue.new_burst()
    assert queue.pop(burst) == 3
    queue.push(burst)
    # QEMU may hand a running ring a new kick fd; its base message said 0 long ago.
    fe.send(F.SET_VRING_KICK, VringFile(0), fds=[os.eventfd(0)])
    driver.add(readable=[(0x200000, 4)])
    queue = fe.backend.vrings[0].queue
    assert queue.last_avail_idx == 3
    assert queue.pop(burst) == 1
    fe.backend.close()


def test_a_refused_memory_table_leaves_the_previous_one_working_and_leaks_nothing(caplog):
    from fastpath.hv import GuestMemory
    from fastpath.vhost_user.wire import MemoryRegion, MemoryTable

    fe = ScriptedFrontend()
    fe.handshake(False)
    rings = fe.start_vring(0, 64, False)
    driver = SplitDriverQueue(fe.memory, 64, rings)
    other = GuestMemory([(0, 1 << 20)])  # its user addresses do not hold the running ring
    # A log record kept by the test's log capture would hold the refusal's traceback, and
    # through it the refused mapping (whose mmap keeps a duplicate of the fd): no records.
    caplog.set_level(logging.CRITICAL, logger="fastpath.vhost_user")
    before = open_memfds()
    table = MemoryTable((MemoryRegion(0, 1 << 20, other.regions[0].user_addr, 0),))
    assert fe.send(F.SET_MEM_TABLE, table, fds=[other.regions[0].fd], need_reply=True)
    assert fe.reply() == U64(1)
    assert open_memfds() == before
    memory = fe.backend.memory
    assert memory.regions[0].user_addr == fe.memory.regions[0].user_addr
    fe.memory.write(0x200000, b"still")
    driver.add(readable=[(0x200000, 5)])
    queue = fe.backend.vrings[0].queue
    burst = queue.new_burst()
    assert queue.pop(burst) == 1 and burst.readable(0) == b"still"
    fe.backend.close()
    other.close()


def test_a_bug_in_a_handler_is_not_passed_off_as_a_refused_request(monkeypatch):
    # Only the front-end's faults are refusals; a ValueError inside the back-end is a bug
    # and surfaces instead of turning into a failing ack.
    fe = ScriptedFrontend()

    def broken(payload, fds):
        raise ValueError("a bug")

    monkeypatch.setitem(fe.backend._handlers, F.SET_OWNER, broken)
    with pytest.raises(ValueError, match="a bug"):
        fe.send(F.SET_OWNER)
    fe.backend.close()


def test_a_region_added_once_per_queue_pair_is_mapped_once_and_removed_with_the_last():
    # QEMU adds and removes every region once per vhost device, and a net device with N
    # queue pairs is N vhost devices on one connection.
    from fastpath.vhost_user.wire import MemoryRegion

    fe = ScriptedFrontend()
    fe.send(F.SET_PROTOCOL_FEATURES, U64(ProtocolFeature.REPLY_ACK
                                         | ProtocolFeature.CONFIGURE_MEM_SLOTS))
    r = fe.memory.regions[0]
    region = MemoryRegion(0, r.size, r.user_addr, 0)
    for _ in range(2):
        assert fe.send(F.ADD_MEM_REG, region, fds=[r.fd], need_reply=True)
        assert fe.reply() == U64(0)
    assert len(fe.backend.memory.regions) == 1
    other = GuestMemory([(0, 1 << 20)])  # same addresses, another file: refused
    o = other.regions[0]
    assert fe.send(F.ADD_MEM_REG, MemoryRegion(0, r.size, r.user_addr, 0), fds=[o.fd],
                   need_reply=True)
    assert fe.reply() == U64(1)
    for left in (1, 0):
        assert fe.send(F.REM_MEM_REG, region, need_reply=True)
        assert fe.reply() == U64(0)
        assert len(fe.backend.memory.regions) == left
    assert fe.send(F.REM_MEM_REG, region, need_reply=True)
    assert fe.reply() == U64(1)
    fe.backend.close()
    other.close()


def test_a_back_end_channel_that_is_not_a_socket_is_refused_and_its_fd_closed():
    fe = ScriptedFrontend()
    fe.handshake(False)
    read_end, write_end = os.pipe()
    assert fe.send(F.SET_BACKEND_REQ_FD, fds=[read_end], need_reply=True)
    assert fe.reply() == U64(1)
    assert fe.backend.backend_channel is None
    os.close(read_end)
    # The back-end's copy is closed too: the pipe's write end sees no reader left.
    with pytest.raises(BrokenPipeError):
        os.write(write_end, b"x")
    os.close(write_end)
    fe.backend.close()
