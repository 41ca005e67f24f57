"""The vhost-user wire layouts, each defined once, and the frozen dataclasses they decode to.

Layouts follow QEMU docs/interop/vhost-user.rst, "Message Specification" (section names are cited
beside each one). Every number is in the machine's native byte order, so each layout uses `=`:
native order, standard sizes, no implicit alignment; padding is spelled out where QEMU's C structs
have it, because QEMU sends `sizeof` the struct.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from enum import IntEnum, IntFlag
from typing import Any
from uuid import UUID

from fastpath.errors import (
    BadConfigAccess,
    BadIotlbMessage,
    BadMemoryRegion,
    BadRegionCount,
    OverlappingRegions,
    PayloadSizeMismatch,
    ReservedBitsSet,
)

MAX_MEM_REGIONS = 8
"""Regions in one SET_MEM_TABLE ("Multiple Memory regions description": region0 ... region7)."""
MAX_CONFIG_SIZE = 256
"""Bytes of device config space one GET/SET_CONFIG may reach (QEMU VHOST_USER_MAX_CONFIG_SIZE)."""
MAX_PAYLOAD_SIZE = 4096
"""Largest payload accepted (rust-vmm MAX_MSG_SIZE); every layout here fits, as asserted below."""
MAX_FDS = 8
"""Most file descriptors one message carries: SET_MEM_TABLE's one per region."""
VRING_INDEX_MASK = 0xFF
"""Bits 0-7 of a vring-fd or vring-area u64: the vring index."""
VRING_NOFD_FLAG = 0x100
"""Bit 8 of a vring-fd or vring-area u64: no fd is attached (the peer polls instead)."""
VRING_F_LOG = 0x1
"""Vring address flag VHOST_VRING_F_LOG (bit 0): log writes to the used ring."""
_U64_END = 1 << 64

# "Message Specification" > "Header": request, flags, size.
HEADER_LAYOUT = struct.Struct("=III")
# "A single 64-bit integer".
U64_LAYOUT = struct.Struct("=Q")
# "A vring state description": index, num.
VRING_STATE_LAYOUT = struct.Struct("=II")
# "A vring address description": index, flags, descriptor, used, available, log.
VRING_ADDRESS_LAYOUT = struct.Struct("=IIQQQQ")
# "Memory region description": guest address, size, user address, mmap offset.
MEMORY_REGION_LAYOUT = struct.Struct("=QQQQ")
# "Multiple Memory regions description": num regions, padding; the regions follow.
MEMORY_TABLE_HEAD_LAYOUT = struct.Struct("=I4x")
# "Single memory region description": padding, region.
SINGLE_REGION_LAYOUT = struct.Struct("=8xQQQQ")
# "Log description": log size, log offset.
LOG_LAYOUT = struct.Struct("=QQ")
# "An IOTLB message": iova, size, user address, permissions, type; 6 bytes of tail padding
# because QEMU sends sizeof(struct vhost_iotlb_msg), which is 32.
IOTLB_LAYOUT = struct.Struct("=QQQBB6x")
# "Virtio device config space": offset, size, flags; `size` bytes of config follow.
CONFIG_HEAD_LAYOUT = struct.Struct("=III")
# "Vring area description": u64 (index and flags), size, offset.
VRING_AREA_LAYOUT = struct.Struct("=QQQ")
# "Inflight description": mmap size, mmap offset, num queues, queue size; 4 bytes of tail
# padding because QEMU and DPDK send sizeof(VhostUserInflight), which is 24.
INFLIGHT_LAYOUT = struct.Struct("=QQHH4x")
# "VhostUserShared": a 16-byte UUID, already in RFC 4122 (big-endian) byte order.
SHARED_OBJECT_LAYOUT = struct.Struct("=16s")
# "Device state transfer parameters": transfer direction, migration phase.
DEVICE_STATE_LAYOUT = struct.Struct("=II")
EMPTY_LAYOUT = struct.Struct("")

assert HEADER_LAYOUT.size == 12
assert U64_LAYOUT.size == 8
assert VRING_STATE_LAYOUT.size == 8
assert VRING_ADDRESS_LAYOUT.size == 40
assert MEMORY_REGION_LAYOUT.size == 32
assert MEMORY_TABLE_HEAD_LAYOUT.size == 8
assert SINGLE_REGION_LAYOUT.size == 40
assert LOG_LAYOUT.size == 16
assert IOTLB_LAYOUT.size == 32
assert CONFIG_HEAD_LAYOUT.size == 12
assert VRING_AREA_LAYOUT.size == 24
assert INFLIGHT_LAYOUT.size == 24
assert SHARED_OBJECT_LAYOUT.size == 16
assert DEVICE_STATE_LAYOUT.size == 8
assert MEMORY_TABLE_HEAD_LAYOUT.size + MAX_MEM_REGIONS * MEMORY_REGION_LAYOUT.size <= (
    MAX_PAYLOAD_SIZE
)
assert CONFIG_HEAD_LAYOUT.size + MAX_CONFIG_SIZE <= MAX_PAYLOAD_SIZE


# --- Payloads ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoPayload:
    """An empty payload (size 0)."""


NO_PAYLOAD = NoPayload()
"""The one empty payload."""


@dataclass(frozen=True)
class U64:
    """A single 64-bit integer: feature bits, a status, a count, or a reply's 0 (ok) / non-0."""

    value: int


@dataclass(frozen=True)
class VringState:
    """A vring state description: a vring index and a number (size, base, enable, ...)."""

    index: int
    num: int


@dataclass(frozen=True)
class VringFile:
    """The u64 of SET_VRING_KICK/CALL/ERR: a vring index (0-255), and whether no fd is attached."""

    index: int
    no_fd: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.index <= VRING_INDEX_MASK:
            raise ValueError(f"a vring-fd message names vrings 0 to 255, not {self.index}")


@dataclass(frozen=True)
class VringAddress:
    """A vring address description: where a vring's areas are, and where to log used writes."""

    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int

    def __post_init__(self) -> None:
        if self.flags & ~VRING_F_LOG:
            raise ReservedBitsSet(f"vring address flags {self.flags:#x} set reserved bits")


@dataclass(frozen=True)
class MemoryRegion:
    """A memory region description: guest-physical base, size, front-end virtual base, and where
    the region starts in the fd that maps it."""

    guest_phys_addr: int
    size: int
    user_addr: int
    mmap_offset: int

    def __post_init__(self) -> None:
        if self.size == 0:
            raise BadMemoryRegion("a memory region is empty")
        for name in ("guest_phys_addr", "user_addr", "mmap_offset"):
            if getattr(self, name) + self.size > _U64_END:
                raise BadMemoryRegion(f"region {name} + size wraps past 2**64")


@dataclass(frozen=True)
class MemoryTable:
    """A multiple memory regions description: 1 to 8 regions, none overlapping another."""

    regions: tuple[MemoryRegion, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "regions", tuple(self.regions))
        if not 1 <= len(self.regions) <= MAX_MEM_REGIONS:
            raise BadRegionCount(f"a memory table holds 1 to 8 regions, not {len(self.regions)}")
        # "Memory region description": guest and user ranges of live regions never overlap.
        for base in ("guest_phys_addr", "user_addr"):
            spans = sorted((getattr(r, base), getattr(r, base) + r.size) for r in self.regions)
            for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
                if start < end:
                    raise OverlappingRegions(f"two regions overlap at {base} {start:#x}")


@dataclass(frozen=True)
class LogArea:
    """A log description: size of the dirty log, and its offset in the fd that maps it."""

    size: int
    offset: int


class IotlbType(IntEnum):
    """The type of an IOTLB message ("An IOTLB message")."""

    MISS = 1
    UPDATE = 2
    INVALIDATE = 3
    ACCESS_FAIL = 4


class IotlbAccess(IntFlag):
    """The permissions of an IOTLB entry ("An IOTLB message")."""

    NONE = 0
    READ = 1
    WRITE = 2
    READ_WRITE = 3


@dataclass(frozen=True)
class IotlbMessage:
    """An IOTLB message: a translation of [iova, iova + size) to user_addr, or its invalidation."""

    iova: int
    size: int
    user_addr: int
    perm: IotlbAccess
    type: IotlbType

    def __post_init__(self) -> None:
        if not 0 <= self.perm <= IotlbAccess.READ_WRITE:
            raise BadIotlbMessage(f"unknown IOTLB permissions {self.perm}")
        try:
            object.__setattr__(self, "type", IotlbType(self.type))
        except ValueError:
            raise BadIotlbMessage(f"unknown IOTLB message type {self.type}") from None
        object.__setattr__(self, "perm", IotlbAccess(self.perm))


class ConfigFlag(IntEnum):
    """The flags of a config-space access ("Virtio device config space")."""

    WRITABLE = 0
    MIGRATION = 1


@dataclass(frozen=True)
class DeviceConfig:
    """A virtio device config space access: `len(data)` bytes at `offset`."""

    offset: int
    flags: ConfigFlag
    data: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", bytes(self.data))
        if self.offset + len(self.data) > MAX_CONFIG_SIZE:
            raise BadConfigAccess(
                f"config access {self.offset}+{len(self.data)} ends past {MAX_CONFIG_SIZE}"
            )
        try:
            object.__setattr__(self, "flags", ConfigFlag(self.flags))
        except ValueError:
            raise BadConfigAccess(f"unknown config access flags {self.flags}") from None


@dataclass(frozen=True)
class VringArea:
    """A vring area description: a host notifier page for a vring, at offset in the attached fd."""

    index: int
    no_fd: bool
    size: int
    offset: int

    def __post_init__(self) -> None:
        if not 0 <= self.index <= VRING_INDEX_MASK:
            raise ValueError(f"a vring area names vrings 0 to 255, not {self.index}")


@dataclass(frozen=True)
class Inflight:
    """An inflight description: the shared buffer that tracks in-flight I/O across reconnects."""

    mmap_size: int
    mmap_offset: int
    num_queues: int
    queue_size: int


@dataclass(frozen=True)
class SharedObject:
    """A VhostUserShared: the UUID of a shared (dma-buf) object."""

    uuid: UUID


@dataclass(frozen=True)
class DeviceStateTransfer:
    """Device state transfer parameters: direction (0 save, 1 load) and migration phase."""

    direction: int
    phase: int


# --- Codecs --------------------------------------------------------------------------------------


def _split_vring_u64(value: int) -> tuple[int, bool]:
    """A vring-fd u64 as (index, no_fd); bits above 8 are reserved."""
    if value & ~(VRING_INDEX_MASK | VRING_NOFD_FLAG):
        raise ReservedBitsSet(f"vring u64 {value:#x} sets bits above 8")
    return value & VRING_INDEX_MASK, bool(value & VRING_NOFD_FLAG)


def _join_vring_u64(index: int, no_fd: bool) -> int:
    return index | (VRING_NOFD_FLAG if no_fd else 0)


def _field_values(obj: Any) -> tuple:
    return tuple(getattr(obj, f.name) for f in fields(obj))


def _pack(layout: struct.Struct, *values: Any) -> bytes:
    try:
        return layout.pack(*values)
    except struct.error as exc:
        raise ValueError(f"a field does not fit its wire layout: {exc}") from None


def request_name(request: Any) -> str:
    """A request as its enum and member name (an IntEnum's str() is just its number)."""
    name = getattr(request, "name", None)
    return f"{type(request).__name__}.{name}" if name else str(request)


def _expect_size(request: Any, payload: bytes, sizes: str, ok: bool) -> None:
    if not ok:
        name = request_name(request)
        raise PayloadSizeMismatch(f"{name} carries {len(payload)} bytes, not {sizes}")


class Codec:
    """Turns one payload type to bytes and back; `kinds` are the dataclasses it accepts."""

    kinds: tuple[type, ...]

    def decode(self, request: Any, payload: bytes) -> Any:
        """The payload as a dataclass; raises ProtocolError subclasses only."""
        raise NotImplementedError

    def encode(self, obj: Any) -> bytes:
        """The payload's bytes."""
        raise NotImplementedError

    def check_kind(self, obj: Any) -> None:
        """Raise TypeError unless obj is a payload this codec encodes."""
        if not isinstance(obj, self.kinds):
            names = " or ".join(k.__name__ for k in self.kinds)
            raise TypeError(f"expected a {names} payload, not {type(obj).__name__}")


class FixedCodec(Codec):
    """A payload of one fixed-size layout."""

    def __init__(self, layout: struct.Struct, kind: type, unpack=None, pack=None) -> None:
        self.layout = layout
        self.kinds = (kind,)
        self._unpack = unpack or (lambda values: kind(*values))
        self._pack = pack or _field_values

    def decode(self, request: Any, payload: bytes) -> Any:
        size = self.layout.size
        _expect_size(request, payload, f"{size}", len(payload) == size)
        return self._unpack(self.layout.unpack(payload))

    def encode(self, obj: Any) -> bytes:
        self.check_kind(obj)
        return _pack(self.layout, *self._pack(obj))


class MemoryTableCodec(Codec):
    """"Multiple Memory regions description": 8 + 32 * num bytes, 1 <= num <= 8."""

    kinds = (MemoryTable,)

    def decode(self, request: Any, payload: bytes) -> MemoryTable:
        head, region = MEMORY_TABLE_HEAD_LAYOUT.size, MEMORY_REGION_LAYOUT.size
        _expect_size(request, payload, "8 + 32 * num", len(payload) >= head)
        (num,) = MEMORY_TABLE_HEAD_LAYOUT.unpack_from(payload)
        if not 1 <= num <= MAX_MEM_REGIONS:
            name = request_name(request)
            raise BadRegionCount(f"{name} names {num} regions, not 1 to {MAX_MEM_REGIONS}")
        size = head + region * num
        _expect_size(request, payload, f"{size}", len(payload) == size)
        return MemoryTable(
            tuple(
                MemoryRegion(*MEMORY_REGION_LAYOUT.unpack_from(payload, head + region * i))
                for i in range(num)
            )
        )

    def encode(self, obj: MemoryTable) -> bytes:
        self.check_kind(obj)
        parts = [_pack(MEMORY_TABLE_HEAD_LAYOUT, len(obj.regions))]
        parts += [_pack(MEMORY_REGION_LAYOUT, *_field_values(r)) for r in obj.regions]
        return b"".join(parts)


class ConfigCodec(Codec):
    """"Virtio device config space": a 12-byte head, then exactly `size` bytes."""

    kinds = (DeviceConfig,)

    def decode(self, request: Any, payload: bytes) -> DeviceConfig:
        head = CONFIG_HEAD_LAYOUT.size
        _expect_size(request, payload, "12 + config size", len(payload) >= head)
        offset, size, flags = CONFIG_HEAD_LAYOUT.unpack_from(payload)
        _expect_size(request, payload, f"12 + {size}", len(payload) == head + size)
        return DeviceConfig(offset, flags, payload[head:])

    def encode(self, obj: DeviceConfig) -> bytes:
        self.check_kind(obj)
        return _pack(CONFIG_HEAD_LAYOUT, obj.offset, len(obj.data), obj.flags) + obj.data


class EitherCodec(Codec):
    """One of two payloads told apart by size: `first` when the size is `first_size`."""

    def __init__(self, first: FixedCodec, other: Codec) -> None:
        self.first, self.other = first, other
        self.kinds = first.kinds + other.kinds

    def decode(self, request: Any, payload: bytes) -> Any:
        codec = self.first if len(payload) == self.first.layout.size else self.other
        return codec.decode(request, payload)

    def encode(self, obj: Any) -> bytes:
        return (self.first if isinstance(obj, self.first.kinds) else self.other).encode(obj)


EMPTY = FixedCodec(EMPTY_LAYOUT, NoPayload)
U64_CODEC = FixedCodec(U64_LAYOUT, U64)
VRING_STATE = FixedCodec(VRING_STATE_LAYOUT, VringState)
VRING_FILE = FixedCodec(
    U64_LAYOUT,
    VringFile,
    unpack=lambda values: VringFile(*_split_vring_u64(values[0])),
    pack=lambda f: (_join_vring_u64(f.index, f.no_fd),),
)
VRING_ADDRESS = FixedCodec(VRING_ADDRESS_LAYOUT, VringAddress)
MEMORY_TABLE = MemoryTableCodec()
SINGLE_REGION = FixedCodec(SINGLE_REGION_LAYOUT, MemoryRegion)
LOG = FixedCodec(LOG_LAYOUT, LogArea)
IOTLB = FixedCodec(IOTLB_LAYOUT, IotlbMessage)
CONFIG = ConfigCodec()
VRING_AREA = FixedCodec(
    VRING_AREA_LAYOUT,
    VringArea,
    unpack=lambda values: VringArea(*_split_vring_u64(values[0]), *values[1:]),
    pack=lambda a: (_join_vring_u64(a.index, a.no_fd), a.size, a.offset),
)
INFLIGHT = FixedCodec(INFLIGHT_LAYOUT, Inflight)
SHARED_OBJECT = FixedCodec(
    SHARED_OBJECT_LAYOUT,
    SharedObject,
    unpack=lambda values: SharedObject(UUID(bytes=values[0])),
    pack=lambda s: (s.uuid.bytes,),
)
DEVICE_STATE = FixedCodec(DEVICE_STATE_LAYOUT, DeviceStateTransfer)
