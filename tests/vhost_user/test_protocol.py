"""The vhost-user message layer against QEMU docs/interop/vhost-user.rst, rule by rule.

Sections cited are the spec's: "Message Specification" (header and payload layouts),
"Communication" (which messages carry fds) and the per-message entries of "Front-end message
types" and "Back-end message types". Every malformed message must raise a named ProtocolError;
a seeded fuzz test checks that nothing else ever escapes the decoder.
"""

from __future__ import annotations

import random
import struct
import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastpath.errors
import fastpath.vhost_user as vhost_user
from fastpath.errors import (
    BadConfigAccess,
    BadIotlbMessage,
    BadMemoryRegion,
    BadRegionCount,
    BadVersion,
    FastpathError,
    MissingReplyFlag,
    OverlappingRegions,
    PayloadSizeMismatch,
    PayloadTooLarge,
    ProtocolError,
    ReservedBitsSet,
    TruncatedMessage,
    UnexpectedReplyFlag,
    UnknownRequest,
    UnsupportedRequest,
    WrongFdCount,
)
from fastpath.vhost_user.wire import (
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    MAX_PAYLOAD_SIZE,
    NO_PAYLOAD,
    U64,
    VHOST_USER_F_PROTOCOL_FEATURES,
    VRING_NOFD_FLAG,
    BackendRequest,
    ConfigFlag,
    DeviceConfig,
    DeviceStateTransfer,
    FrontendRequest,
    Inflight,
    IotlbAccess,
    IotlbMessage,
    IotlbType,
    LogArea,
    MemoryRegion,
    MemoryTable,
    ProtocolFeature,
    SharedObject,
    VringAddress,
    VringArea,
    VringFile,
    VringState,
    decode_header,
    decode_message,
    decode_payload,
    encode_message,
    encode_reply,
)

F, B = FrontendRequest, BackendRequest
HEADER = struct.Struct("=III")
GIB = 1 << 30


def header(request: int, flags: int = 1, size: int = 0) -> bytes:
    return HEADER.pack(request, flags, size)


def region(gpa: int = 0, size: int = GIB, uaddr: int = 0x7F00_0000_0000, off: int = 0):
    return MemoryRegion(gpa, size, uaddr, off)


def table(n: int) -> MemoryTable:
    return MemoryTable([region(i * GIB, GIB, 0x7F00_0000_0000 + i * GIB, 0) for i in range(n)])


# --- What each request carries, written from the spec -------------------------------------------

U64_REQUESTS = [F.SET_FEATURES, F.SET_PROTOCOL_FEATURES, F.SEND_RARP, F.NET_SET_MTU,
                F.CLOSE_CRYPTO_SESSION, F.SET_STATUS]
EMPTY_REQUESTS = [F.GET_FEATURES, F.SET_OWNER, F.RESET_OWNER, F.GET_PROTOCOL_FEATURES,
                  F.GET_QUEUE_NUM, F.POSTCOPY_ADVISE, F.POSTCOPY_LISTEN, F.POSTCOPY_END,
                  F.RESET_DEVICE, F.GET_MAX_MEM_SLOTS, F.GET_STATUS, F.CHECK_DEVICE_STATE,
                  F.GET_SHMEM_CONFIG]
EMPTY_ONE_FD_REQUESTS = [F.SET_LOG_FD, F.SET_BACKEND_REQ_FD, F.GPU_SET_SOCKET]
STATE_REQUESTS = [F.SET_VRING_NUM, F.SET_VRING_BASE, F.GET_VRING_BASE, F.SET_VRING_ENABLE,
                  F.SET_VRING_ENDIAN, F.VRING_KICK, F.GET_VRING_BASE_SKIP_DRAIN]
VRING_FD_REQUESTS = [F.SET_VRING_KICK, F.SET_VRING_CALL, F.SET_VRING_ERR]
# "Communication": the messages a front-end sends with fds in the ancillary data (+ GPU_SET_SOCKET,
# and REM_MEM_REG which may carry a stray one).
FD_REQUESTS = {F.ADD_MEM_REG, F.SET_MEM_TABLE, F.SET_LOG_BASE, F.SET_LOG_FD, *VRING_FD_REQUESTS,
               F.SET_BACKEND_REQ_FD, F.SET_INFLIGHT_FD, F.SET_DEVICE_STATE_FD, F.GPU_SET_SOCKET,
               F.REM_MEM_REG}

u64s = st.integers(0, 2**64 - 1)
u32s = st.integers(0, 2**32 - 1)
u16s = st.integers(0, 2**16 - 1)


@st.composite
def regions(draw, count: int):
    """count non-overlapping, non-wrapping regions, in random order."""
    size = draw(st.integers(1, 2**40))
    gpas = draw(st.permutations(range(count)))
    uaddrs = draw(st.permutations(range(count)))
    return [MemoryRegion(g * 2**41, size, u * 2**41 + 2**50, draw(st.integers(0, 2**60)))
            for g, u in zip(gpas, uaddrs, strict=True)]


def vring_files():
    return st.builds(VringFile, st.integers(0, 255), st.booleans())


def configs():
    return st.integers(0, 256).flatmap(
        lambda offset: st.builds(DeviceConfig, st.just(offset), st.sampled_from(ConfigFlag),
                                 st.binary(max_size=256 - offset)))


def iotlbs():
    return st.builds(IotlbMessage, u64s, u64s, u64s, st.sampled_from(list(IotlbAccess)),
                     st.sampled_from(IotlbType))


def fd_count(payload) -> int:
    if isinstance(payload, MemoryTable):
        return len(payload.regions)
    if isinstance(payload, VringFile | VringArea):
        return 0 if payload.no_fd else 1
    return 1


# Separate tables per direction: FrontendRequest and BackendRequest members with the same value
# compare (and hash) equal, being IntEnums.
FRONTEND_PAYLOADS = {
    **{r: st.builds(U64, u64s) for r in U64_REQUESTS},
    **{r: st.just(NO_PAYLOAD) for r in EMPTY_REQUESTS + EMPTY_ONE_FD_REQUESTS},
    **{r: st.builds(VringState, u32s, u32s) for r in STATE_REQUESTS},
    **{r: vring_files() for r in VRING_FD_REQUESTS},
    F.SET_MEM_TABLE: st.integers(1, 8).flatmap(regions).map(MemoryTable),
    F.SET_LOG_BASE: st.builds(LogArea, u64s, u64s),
    F.SET_VRING_ADDR: st.builds(VringAddress, u32s, st.sampled_from([0, 1]), u64s, u64s, u64s,
                                u64s),
    F.IOTLB_MSG: iotlbs(),
    F.GET_CONFIG: configs(),
    F.SET_CONFIG: configs(),
    F.GET_INFLIGHT_FD: st.builds(Inflight, u64s, u64s, u16s, u16s),
    F.SET_INFLIGHT_FD: st.builds(Inflight, u64s, u64s, u16s, u16s),
    F.ADD_MEM_REG: regions(1).map(lambda rs: rs[0]),
    F.REM_MEM_REG: regions(1).map(lambda rs: rs[0]),
    F.GET_SHARED_OBJECT: st.builds(SharedObject, st.uuids()),
    F.SET_DEVICE_STATE_FD: st.builds(DeviceStateTransfer, u32s, u32s),
}
BACKEND_PAYLOADS = {
    B.IOTLB_MSG: iotlbs(),
    B.CONFIG_CHANGE_MSG: st.just(NO_PAYLOAD),
    B.VRING_HOST_NOTIFIER_MSG: st.builds(VringArea, st.integers(0, 255), st.booleans(), u64s,
                                         u64s),
    B.VRING_CALL: st.builds(VringState, u32s, u32s),
    B.VRING_ERR: st.builds(VringState, u32s, u32s),
    **{r: st.builds(SharedObject, st.uuids())
       for r in (B.SHARED_OBJECT_ADD, B.SHARED_OBJECT_REMOVE, B.SHARED_OBJECT_LOOKUP)},
}
PAYLOADS = [*FRONTEND_PAYLOADS.items(), *BACKEND_PAYLOADS.items()]
UNSUPPORTED_FRONTEND = {F.CREATE_CRYPTO_SESSION}
UNSUPPORTED_BACKEND = {B.SHMEM_MAP, B.SHMEM_UNMAP}


def fds_for(request, payload) -> list[int]:
    """As many fds as the request carries ("Communication"; "Back-end message types")."""
    if isinstance(request, BackendRequest):
        takes_fds = request is B.VRING_HOST_NOTIFIER_MSG
    else:
        takes_fds = request in FD_REQUESTS
    return list(range(100, 100 + fd_count(payload))) if takes_fds else []


# --- Constants ----------------------------------------------------------------------------------


def test_every_request_id_has_a_payload_rule_or_is_declared_unsupported():
    assert set(FRONTEND_PAYLOADS) | UNSUPPORTED_FRONTEND == set(F)
    assert set(BACKEND_PAYLOADS) | UNSUPPORTED_BACKEND == set(B)
    assert [r.value for r in F] == list(range(1, 46))
    assert [r.value for r in B] == list(range(1, 11))


def test_protocol_feature_bits_follow_the_spec_numbering():
    assert ProtocolFeature.MQ == 1 << 0
    assert ProtocolFeature.REPLY_ACK == 1 << 3
    assert ProtocolFeature.CONFIG == 1 << 9
    assert ProtocolFeature.INFLIGHT_SHMFD == 1 << 12
    assert ProtocolFeature.CONFIGURE_MEM_SLOTS == 1 << 15
    assert ProtocolFeature.STATUS == 1 << 16
    assert ProtocolFeature.DEVICE_STATE == 1 << 19
    assert [f.value for f in ProtocolFeature] == [1 << b for b in range(20)]
    # What QEMU 7.2 negotiates with testpmd (net) and qemu-storage-daemon (blk).
    net = ProtocolFeature(0x10CBF)
    assert ProtocolFeature.HOST_NOTIFIER in net and ProtocolFeature.STATUS in net
    assert ProtocolFeature(0x8F2B) & ProtocolFeature.CONFIGURE_MEM_SLOTS
    assert VHOST_USER_F_PROTOCOL_FEATURES == 30


def test_every_public_name_is_documented():
    for name in vhost_user.__all__:
        obj = getattr(vhost_user, name)
        if isinstance(obj, type):
            assert obj.__doc__, name


@pytest.mark.parametrize("cls", ProtocolError.__subclasses__(), ids=lambda c: c.__name__)
def test_errors_are_named_fastpath_errors(cls):
    assert issubclass(cls, FastpathError)
    assert cls.__doc__
    assert cls.__name__ in fastpath.errors.__all__


# --- Header (Message Specification > Header) -----------------------------------------------------


def test_header_is_three_native_u32s():
    msg = encode_message(F.GET_CONFIG, DeviceConfig(0, 0, bytes(57)), flags=FLAG_NEED_REPLY)
    assert msg[:12] == HEADER.pack(24, 0x1 | 0x8, 12 + 57)
    hdr = decode_header(msg)
    assert (hdr.request, hdr.size, hdr.need_reply, hdr.reply) == (F.GET_CONFIG, 69, True, False)


def test_header_shorter_than_12_bytes_is_truncated():
    for n in range(12):
        with pytest.raises(TruncatedMessage):
            decode_header(header(1)[:n])


@pytest.mark.parametrize("version", [0, 2, 3])
def test_header_version_must_be_1(version):
    with pytest.raises(BadVersion):
        decode_header(header(1, version))


@pytest.mark.parametrize("bit", range(4, 32))
def test_header_flag_bits_above_need_reply_are_reserved(bit):
    with pytest.raises(ReservedBitsSet):
        decode_header(header(1, 1 | 1 << bit))


def test_reply_flag_is_refused_on_a_request():
    with pytest.raises(UnexpectedReplyFlag):
        decode_header(header(1, 1 | FLAG_REPLY))
    with pytest.raises(UnexpectedReplyFlag):
        decode_message(encode_reply(F.GET_FEATURES, U64(0)))


def test_reply_flag_is_required_on_a_reply():
    with pytest.raises(MissingReplyFlag):
        decode_header(header(1, 1, 8), reply=True)


def test_payload_larger_than_max_is_refused():
    with pytest.raises(PayloadTooLarge):
        decode_header(header(5, 1, MAX_PAYLOAD_SIZE + 1))
    decode_header(header(5, 1, MAX_PAYLOAD_SIZE))
    with pytest.raises(PayloadTooLarge):
        decode_payload(F.SET_MEM_TABLE, bytes(MAX_PAYLOAD_SIZE + 1), [])


@pytest.mark.parametrize("request_id", [0, 46, 0xFFFF, 2**32 - 1])
def test_unknown_front_end_request_id_is_refused(request_id):
    with pytest.raises(UnknownRequest):
        decode_header(header(request_id))


def test_request_ids_are_per_direction():
    assert decode_header(header(10), requests=BackendRequest).request is B.SHMEM_UNMAP
    with pytest.raises(UnknownRequest):
        decode_header(header(11), requests=BackendRequest)
    assert decode_header(header(1), requests=BackendRequest).request is B.IOTLB_MSG
    with pytest.raises(UnknownRequest):
        decode_payload(1, b"", [])


def test_message_shorter_than_its_header_size_is_truncated():
    msg = encode_message(F.SET_FEATURES, U64(1))
    with pytest.raises(TruncatedMessage):
        decode_message(msg[:-1])


def test_bytes_beyond_the_header_size_are_refused():
    with pytest.raises(PayloadSizeMismatch):
        decode_message(encode_message(F.SET_FEATURES, U64(1)) + b"\0")


# --- Payload sizes (Message Specification > Payload) ---------------------------------------------

FIXED_SIZES = {
    **{r: 8 for r in U64_REQUESTS + STATE_REQUESTS + VRING_FD_REQUESTS},
    **{r: 0 for r in EMPTY_REQUESTS + EMPTY_ONE_FD_REQUESTS},
    F.SET_VRING_ADDR: 40, F.SET_LOG_BASE: 16, F.IOTLB_MSG: 32, F.GET_INFLIGHT_FD: 24,
    F.SET_INFLIGHT_FD: 24, F.ADD_MEM_REG: 40, F.REM_MEM_REG: 40, F.GET_SHARED_OBJECT: 16,
    F.SET_DEVICE_STATE_FD: 8,
}


@pytest.mark.parametrize("request_", sorted(FIXED_SIZES), ids=lambda r: r.name)
def test_fixed_size_payloads_must_have_exactly_their_size(request_):
    size = FIXED_SIZES[request_]
    for wrong in {0, size - 1, size + 1, size + 8, 264} - {size, -1}:
        with pytest.raises(PayloadSizeMismatch):
            decode_payload(request_, bytes(wrong), [])


@given(FRONTEND_PAYLOADS[F.SET_MEM_TABLE])
def test_memory_table_is_8_plus_32_bytes_per_region(mem):
    assert len(encode_message(F.SET_MEM_TABLE, mem)) == 12 + 8 + 32 * len(mem.regions)


@pytest.mark.parametrize("num", [1, 3, 8])
def test_memory_table_size_must_match_its_region_count(num):
    good = encode_message(F.SET_MEM_TABLE, table(num))[12:]
    fds = list(range(num))
    for bad in (good[:-1], good + bytes(32), good[:-32], good[:7]):
        with pytest.raises(PayloadSizeMismatch):
            decode_payload(F.SET_MEM_TABLE, bad, fds)


def test_config_size_must_equal_12_plus_its_size_field():
    good = encode_message(F.GET_CONFIG, DeviceConfig(0, 0, bytes(57)))[12:]
    for bad in (good[:-1], good + b"\0", good[:11]):
        with pytest.raises(PayloadSizeMismatch):
            decode_payload(F.GET_CONFIG, bad, [])


# --- Memory regions ---------------------------------------------------------------------------


def test_memory_table_with_no_regions_is_refused():
    with pytest.raises(BadRegionCount):
        decode_payload(F.SET_MEM_TABLE, struct.pack("=II", 0, 0), [])
    with pytest.raises(BadRegionCount):
        MemoryTable([])


def test_memory_table_with_more_than_8_regions_is_refused():
    payload = struct.pack("=II", 9, 0) + b"".join(
        struct.pack("=QQQQ", i * GIB, GIB, i * GIB, 0) for i in range(9))
    with pytest.raises(BadRegionCount):
        decode_payload(F.SET_MEM_TABLE, payload, list(range(9)))
    with pytest.raises(BadRegionCount):
        encode_message(F.SET_MEM_TABLE, table(9))


def test_empty_memory_region_is_refused():
    payload = struct.pack("=II", 1, 0) + struct.pack("=QQQQ", 0, 0, 0x1000, 0)
    with pytest.raises(BadMemoryRegion):
        decode_payload(F.SET_MEM_TABLE, payload, [3])
    with pytest.raises(BadMemoryRegion):
        decode_payload(F.ADD_MEM_REG, struct.pack("=QQQQQ", 0, 0, 0, 0x1000, 0), [3])


@pytest.mark.parametrize("field", [0, 2, 3])
def test_memory_region_ranges_may_not_wrap(field):
    values = [0, 2 * GIB, 0, 0]
    values[field] = 2**64 - GIB
    with pytest.raises(BadMemoryRegion):
        decode_payload(F.ADD_MEM_REG, struct.pack("=QQQQQ", 0, *values), [3])


@pytest.mark.parametrize("clash", ["guest", "user"])
def test_regions_of_one_table_may_not_overlap(clash):
    a = region(0, 2 * GIB, 0x10_0000_0000)
    b = region(GIB if clash == "guest" else 4 * GIB, GIB,
               0x10_4000_0000 if clash == "user" else 0x20_0000_0000)
    payload = struct.pack("=II", 2, 0) + b"".join(
        struct.pack("=QQQQ", r.guest_phys_addr, r.size, r.user_addr, r.mmap_offset)
        for r in (a, b))
    with pytest.raises(OverlappingRegions):
        decode_payload(F.SET_MEM_TABLE, payload, [3, 4])


# --- File descriptors (Communication; per-message entries) ---------------------------------------


@pytest.mark.parametrize("num", [1, 2, 8])
def test_set_mem_table_carries_one_fd_per_region(num):
    payload = encode_message(F.SET_MEM_TABLE, table(num))[12:]
    assert decode_payload(F.SET_MEM_TABLE, payload, list(range(num))) == table(num)
    for wrong in (0, num - 1, num + 1):
        if wrong != num:
            with pytest.raises(WrongFdCount):
                decode_payload(F.SET_MEM_TABLE, payload, list(range(wrong)))


@pytest.mark.parametrize("request_", VRING_FD_REQUESTS, ids=lambda r: r.name)
def test_vring_fd_messages_carry_one_fd_unless_bit_8_says_none(request_):
    with_fd, without = struct.pack("=Q", 3), struct.pack("=Q", 3 | VRING_NOFD_FLAG)
    assert decode_payload(request_, with_fd, [7]) == VringFile(3, False)
    assert decode_payload(request_, without, []) == VringFile(3, True)
    for payload, fds in ((with_fd, []), (with_fd, [7, 8]), (without, [7])):
        with pytest.raises(WrongFdCount):
            decode_payload(request_, payload, fds)


@pytest.mark.parametrize("bit", [9, 16, 32, 63])
def test_vring_fd_payload_bits_above_8_are_reserved(bit):
    with pytest.raises(ReservedBitsSet):
        decode_payload(F.SET_VRING_CALL, struct.pack("=Q", 1 << bit), [7])


@pytest.mark.parametrize("request_", sorted(set(F) - FD_REQUESTS - UNSUPPORTED_FRONTEND),
                         ids=lambda r: r.name)
def test_messages_outside_the_fd_list_carry_no_fds(request_):
    payload = encode_message(request_, FRONTEND_EXAMPLES[request_])[12:]
    decode_payload(request_, payload, [])
    with pytest.raises(WrongFdCount):
        decode_payload(request_, payload, [9])


@pytest.mark.parametrize(
    "request_", sorted(FD_REQUESTS - set(VRING_FD_REQUESTS) - {F.SET_MEM_TABLE, F.REM_MEM_REG}),
    ids=lambda r: r.name)
def test_single_fd_messages_carry_exactly_one(request_):
    payload = encode_message(request_, FRONTEND_EXAMPLES[request_])[12:]
    decode_payload(request_, payload, [9])
    for fds in ([], [9, 10]):
        with pytest.raises(WrongFdCount):
            decode_payload(request_, payload, fds)


def test_rem_mem_reg_accepts_a_stray_fd_but_not_two():
    payload = encode_message(F.REM_MEM_REG, region())[12:]
    assert decode_payload(F.REM_MEM_REG, payload, []) == region()
    assert decode_payload(F.REM_MEM_REG, payload, [9]) == region()
    with pytest.raises(WrongFdCount):
        decode_payload(F.REM_MEM_REG, payload, [9, 10])


FRONTEND_EXAMPLES = {
    **{r: U64(0x1_4000_0046) for r in U64_REQUESTS},
    **{r: NO_PAYLOAD for r in EMPTY_REQUESTS + EMPTY_ONE_FD_REQUESTS},
    **{r: VringState(1, 256) for r in STATE_REQUESTS},
    **{r: VringFile(1) for r in VRING_FD_REQUESTS},
    F.SET_MEM_TABLE: table(2),
    F.SET_LOG_BASE: LogArea(0x4000, 0),
    F.SET_VRING_ADDR: VringAddress(1, 1, 0x7F00_0000_0000, 0x7F00_0000_2000, 0x7F00_0000_1000,
                                   0x2000),
    F.IOTLB_MSG: IotlbMessage(0x1000, 0x1000, 0x7F00_0000_0000, IotlbAccess.READ_WRITE,
                              IotlbType.UPDATE),
    F.GET_CONFIG: DeviceConfig(0, ConfigFlag.WRITABLE, bytes(57)),
    F.SET_CONFIG: DeviceConfig(20, ConfigFlag.MIGRATION, b"\x01\x00\x00\x00"),
    F.GET_INFLIGHT_FD: Inflight(0, 0, 1, 128),
    F.SET_INFLIGHT_FD: Inflight(8192, 0, 1, 128),
    F.ADD_MEM_REG: region(),
    F.REM_MEM_REG: region(),
    F.GET_SHARED_OBJECT: SharedObject(uuid.UUID(int=0x1234)),
    F.SET_DEVICE_STATE_FD: DeviceStateTransfer(0, 0),
}
BACKEND_EXAMPLES = {
    B.CONFIG_CHANGE_MSG: NO_PAYLOAD,
    B.VRING_CALL: VringState(1, 0),
    B.VRING_ERR: VringState(1, 0),
    B.IOTLB_MSG: IotlbMessage(0x1000, 1, 0, IotlbAccess.READ, IotlbType.MISS),
    B.VRING_HOST_NOTIFIER_MSG: VringArea(0, False, 4096, 0),
    **{r: SharedObject(uuid.UUID(int=7))
       for r in (B.SHARED_OBJECT_ADD, B.SHARED_OBJECT_REMOVE, B.SHARED_OBJECT_LOOKUP)},
}


# --- Field rules --------------------------------------------------------------------------------


def test_vring_address_flags_other_than_log_are_reserved():
    payload = struct.pack("=IIQQQQ", 0, 2, 0, 0, 0, 0)
    with pytest.raises(ReservedBitsSet):
        decode_payload(F.SET_VRING_ADDR, payload, [])


@pytest.mark.parametrize("offset,size", [(0, 257), (200, 57), (256, 1), (2**32 - 1, 1)])
def test_config_access_may_not_reach_past_256_bytes(offset, size):
    with pytest.raises(BadConfigAccess):
        decode_payload(F.GET_CONFIG, struct.pack("=III", offset, size, 0) + bytes(size), [])


def test_config_flags_are_writable_or_migration():
    with pytest.raises(BadConfigAccess):
        decode_payload(F.SET_CONFIG, struct.pack("=III", 0, 1, 2) + b"\0", [])


@pytest.mark.parametrize("perm,type_", [(4, 2), (255, 2), (3, 0), (3, 5)])
def test_iotlb_permissions_and_type_must_be_known(perm, type_):
    payload = struct.pack("=QQQBB6x", 0, 1, 0, perm, type_)
    with pytest.raises(BadIotlbMessage):
        decode_payload(F.IOTLB_MSG, payload, [])


def test_requests_fastpath_does_not_decode_are_named():
    for request_ in [*UNSUPPORTED_FRONTEND, *UNSUPPORTED_BACKEND]:
        with pytest.raises(UnsupportedRequest):
            decode_payload(request_, b"", [])


# --- Round trips --------------------------------------------------------------------------------


EXAMPLES = [*FRONTEND_EXAMPLES.items(), *BACKEND_EXAMPLES.items()]


@pytest.mark.parametrize("request_,payload", EXAMPLES,
                         ids=[f"{type(r).__name__}.{r.name}" for r, _ in EXAMPLES])
def test_every_payload_type_round_trips(request_, payload):
    for flags in (0, FLAG_NEED_REPLY):
        msg = encode_message(request_, payload, flags=flags)
        decoded = decode_message(msg, fds_for(request_, payload), requests=type(request_))
        assert decoded.payload == payload
        assert (decoded.header.request, decoded.header.flags) == (request_, 1 | flags)


REPLIES = [
    (F.GET_FEATURES, U64(0x1_7020_E783), []),
    (F.SET_MEM_TABLE, U64(0), []),
    (F.SET_MEM_TABLE, table(2), []),
    (F.GET_VRING_BASE, VringState(0, 20200), []),
    (F.GET_CONFIG, DeviceConfig(0, 0, bytes(range(57))), []),
    (F.GET_CONFIG, NO_PAYLOAD, []),
    (F.SET_LOG_BASE, NO_PAYLOAD, []),
    (F.SET_LOG_BASE, U64(0), []),
    (F.GET_INFLIGHT_FD, Inflight(8192, 0, 1, 128), [5]),
    # A back-end with no area to give answers mmap_size 0 and no fd (libvhost-user).
    (F.GET_INFLIGHT_FD, Inflight(0, 0, 1, 128), []),
    (F.SET_DEVICE_STATE_FD, U64(VRING_NOFD_FLAG), []),
    (F.POSTCOPY_ADVISE, NO_PAYLOAD, [5]),
    (B.SHARED_OBJECT_LOOKUP, U64(0), [5]),
    (B.IOTLB_MSG, U64(0), []),
]


@pytest.mark.parametrize("request_,payload,fds", REPLIES, ids=lambda v: getattr(v, "name", ""))
def test_replies_round_trip(request_, payload, fds):
    msg = encode_reply(request_, payload)
    decoded = decode_message(msg, fds, requests=type(request_), reply=True)
    assert decoded.payload == payload and decoded.header.reply


def test_a_reply_must_carry_its_reply_type():
    with pytest.raises(TypeError):
        encode_reply(F.GET_VRING_BASE, U64(0))
    with pytest.raises(PayloadSizeMismatch):
        decode_payload(F.GET_VRING_BASE, bytes(4), [], reply=True)


def test_encoding_refuses_wrong_payloads_and_flags():
    with pytest.raises(TypeError):
        encode_message(F.SET_FEATURES, VringState(0, 0))
    with pytest.raises(ValueError):
        encode_message(F.SET_FEATURES, U64(2**64))
    with pytest.raises(ValueError):
        encode_message(F.SET_FEATURES, U64(0), flags=0x10)
    with pytest.raises(ValueError):
        VringFile(256)


@st.composite
def messages(draw):
    request_, strategy = draw(st.sampled_from(PAYLOADS))
    payload = draw(strategy)
    flags = draw(st.sampled_from([0, FLAG_NEED_REPLY]))
    return request_, payload, flags


@settings(max_examples=400, deadline=None)
@given(messages())
def test_decode_inverts_encode(message):
    request_, payload, flags = message
    data = encode_message(request_, payload, flags=flags)
    decoded = decode_message(data, fds_for(request_, payload), requests=type(request_))
    assert decoded.payload == payload
    assert encode_message(request_, decoded.payload, flags=flags) == data


# --- Fuzzing ------------------------------------------------------------------------------------


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0 and buf:
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif kind == 1:
        del buf[rng.randrange(len(buf) + 1):]
    elif kind == 2:
        buf += rng.randbytes(rng.choice([1, 4, 8, 32, 300]))
    elif kind == 3:
        at = rng.choice([0, 4, 8, 12, 16, 20])
        buf[at:at + 4] = struct.pack("=I", rng.choice([0, 1, 8, 9, 0xFF, 2**31, 2**32 - 1]))
    elif kind == 4 and len(buf) > 12:
        i = rng.randrange(12, len(buf))
        buf[i] = rng.choice([0, 0xFF, 1, 9])
    else:
        buf[8:12] = struct.pack("=I", max(0, len(buf) - 12 + rng.choice([-8, -1, 0, 1, 32])))
    return bytes(buf)


def test_fuzzed_messages_raise_only_named_protocol_errors():
    rng = random.Random(0x76686F73)
    valid = [encode_message(r, p) for r, p in FRONTEND_EXAMPLES.items()]
    valid += [encode_message(F.SET_MEM_TABLE, table(n)) for n in (1, 8)]
    backend = [encode_message(r, p) for r, p in BACKEND_EXAMPLES.items()]
    raised: dict[str, int] = {}
    start = time.monotonic()
    cases = 20000
    for case in range(cases):
        requests = BackendRequest if case % 5 == 0 else FrontendRequest
        pool = backend if requests is BackendRequest else valid
        source = rng.random()
        if source < 0.15:
            data = rng.randbytes(rng.randrange(0, 64))
            if len(data) >= 4:
                data = struct.pack("=I", rng.randrange(0, 50)) + data[4:]
        else:
            data = rng.choice(pool)
            for _ in range(rng.randint(1, 3)):
                data = _mutate(rng, data)
        fds = list(range(rng.choice([0, 0, 1, 1, 2, 8, 9])))
        reply = rng.random() < 0.1
        try:
            decode_message(data, fds, requests=requests, reply=reply)
        except ProtocolError as exc:
            raised[type(exc).__name__] = raised.get(type(exc).__name__, 0) + 1
    assert time.monotonic() - start < 10
    # The fuzzer reaches most rules, not just the header's.
    assert len(raised) >= 10, raised


def test_fuzzed_payloads_raise_only_named_protocol_errors():
    """Every request and reply decoder, fed random payloads near the sizes it expects."""
    rng = random.Random(0x75736572)
    sizes = [0, 1, 7, 8, 9, 12, 16, 20, 24, 32, 40, 48, 69, 264, 268, 4096, 4097]
    outcomes = {"ok": 0, "error": 0}
    start = time.monotonic()
    for request_ in [*F, *B]:
        for reply in (False, True):
            for _ in range(100):
                size = rng.choice(sizes)
                payload = bytearray(rng.randbytes(size))
                # Small numbers in the count/size fields reach the deeper checks.
                if size >= 12 and rng.random() < 0.5:
                    payload[0:8] = struct.pack("=II", rng.randrange(10), rng.randrange(300))
                fds = list(range(rng.choice([0, 1, 2, 8])))
                try:
                    decode_payload(request_, bytes(payload), fds, reply=reply)
                    outcomes["ok"] += 1
                except ProtocolError:
                    outcomes["error"] += 1
    assert time.monotonic() - start < 10
    assert outcomes["ok"] > 100 and outcomes["error"] > 100, outcomes
