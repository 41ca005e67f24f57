"""What a virtio-blk device does with requests (virtio 1.2 §5.2.6), in plain Python: the oracle
for fastpath's compiled request path (`fastpath.devices.blk.kernels`).

`parse_request` says what one popped chain comes to: a request for the executor, a request the
device completes itself (with the status and the bytes it reports), or a chain used with
nothing written. It checks in the same order as the compiled path, so that a request with
several faults fails the same way. `ReferenceQueue` serves a reference ring with it, slot for
slot and tag for tag as `BlkQueue` does. `ReferenceExecutor` is a disk in memory that carries
out BLOCK_IO records by the executor contract of `fastpath.devices.blk`.
"""

from __future__ import annotations

import ctypes
import struct
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from fastpath.devices.blk import (
    BLOCK_COMPLETION,
    IO_DISCARD,
    IO_FLAG_FUA,
    IO_FLAG_MAY_UNMAP,
    IO_FLUSH,
    IO_OPERATIONS,
    IO_READ,
    IO_WRITE,
    IO_WRITE_ZEROES,
    IOVEC,
    OUTHDR_SIZE,
    SECTOR_SIZE,
    STATUS_INVALID,
    STATUS_READ_ONLY,
    STATUS_UNSUPPORTED,
    VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
    BlkDisk,
)
from fastpath.hv import GuestMemory
from fastpath.testing.reference._common import Chain, Piece, read_guest, write_guest

HEADER = struct.Struct("<IIQ")   # type, ioprio, sector
RANGE = struct.Struct("<QII")    # sector, num_sectors, flags

KINDS = {VIRTIO_BLK_T_IN: "in", VIRTIO_BLK_T_OUT: "out", VIRTIO_BLK_T_FLUSH: "flush",
         VIRTIO_BLK_T_GET_ID: "get_id", VIRTIO_BLK_T_DISCARD: "discard",
         VIRTIO_BLK_T_WRITE_ZEROES: "write_zeroes"}


@dataclass
class Request:
    """What one chain comes to.

    `outcome` is "io" (a BLOCK_IO for the executor), "done" (the device completes it now with
    `status`) or "dropped" (used with length 0, nothing written). `kind` names the request
    type as the device counts it ("in", ..., "unknown"; None before a header was read);
    `reason` the failure ("bad_header", ...). `used_len` is what the device reports used:
    now for "done", once the executor succeeds for "io". An "io" carries `operation`,
    `offset`, `length`, `flags` and `data`, the (gpa, length) pieces of a read or write; a
    GET_ID carries `reply`, the bytes written before the status byte.
    """

    outcome: str
    kind: str | None = None
    reason: str | None = None
    status: int | None = None
    status_gpa: int | None = None
    used_len: int = 0
    operation: int = 0
    offset: int = 0
    length: int = 0
    flags: int = 0
    data: list[tuple[int, int]] = field(default_factory=list)
    reply: bytes = b""


def range_error(disk: BlkDisk, sector: int, nbytes: int) -> str | None:
    """Why the device refuses [sector, + nbytes): data in whole sectors, aligned to the logical
    block, never past the capacity (§5.2.6.1); None when it takes it."""
    if nbytes % SECTOR_SIZE:
        return "length"
    block, sectors = disk.block_size // SECTOR_SIZE, nbytes // SECTOR_SIZE
    if sector % block or sectors % block:
        return "alignment"
    if sector + sectors > disk.sectors:
        return "range"
    return None


def _span(pieces: list[Piece], skip: int, length: int) -> list[tuple[int, int]]:
    # The (gpa, length) runs of bytes [skip, skip + length) of the pieces, in order.
    runs, start = [], 0
    for p in pieces:
        low, high = max(start, skip), min(start + p.length, skip + length)
        if low < high:
            runs.append((p.gpa + low - start, high - low))
        start += p.length
    return runs


def parse_request(memory: GuestMemory, chain: Chain, disk: BlkDisk, *,
                  writethrough: bool = False) -> Request:
    """What the device makes of a popped chain, checks in the compiled path's order."""
    if chain.error:
        return Request("dropped", reason="bad_chain")
    readable = [p for p in chain.pieces if not p.writable and p.length]
    writable = [p for p in chain.pieces if p.writable and p.length]
    if not writable:
        # §5.2.6: no device-writable byte, no status byte: nothing can be reported.
        return Request("dropped", reason="no_status")
    status_gpa = writable[-1].gpa + writable[-1].length - 1

    def fail(reason: str, kind: str | None = None) -> Request:
        status = VIRTIO_BLK_S_UNSUPP if reason == "unsupported" else VIRTIO_BLK_S_IOERR
        return Request("done", kind, reason, status, status_gpa, 1)

    def done(kind: str, used_len: int = 1, reply: bytes = b"") -> Request:
        return Request("done", kind, None, VIRTIO_BLK_S_OK, status_gpa, used_len, reply=reply)

    def io(kind: str, operation: int, offset: int, length: int, flags: int = 0,
           data: list[tuple[int, int]] | None = None, used_len: int = 1) -> Request:
        if data is not None and len(data) > disk.iovecs_per_request:
            return fail("segments", kind)
        return Request("io", kind, None, None, status_gpa, used_len, operation, offset, length,
                       flags, data or [])

    readable_len = sum(p.length for p in readable)
    writable_len = sum(p.length for p in writable)
    if readable_len < OUTHDR_SIZE:
        return fail("bad_header")
    head = b"".join(read_guest(memory, a, n) for a, n in _span(readable, 0, 2 * OUTHDR_SIZE))
    kind_number, _, sector = HEADER.unpack_from(head)
    data_out = readable_len - OUTHDR_SIZE
    data_in = writable_len - 1
    kind = KINDS.get(kind_number, "unknown")
    fua = IO_FLAG_FUA if writethrough else 0
    if kind == "in":
        if data_out:
            return fail("direction", kind)
        why = range_error(disk, sector, data_in)
        if why:
            return fail(why, kind)
        if not data_in:
            return done(kind)
        return io(kind, IO_READ, sector * SECTOR_SIZE, data_in, 0,
                  _span(writable, 0, data_in), data_in + 1)
    if kind == "out":
        if data_in:
            return fail("direction", kind)
        if disk.read_only:
            return fail("read_only", kind)
        why = range_error(disk, sector, data_out)
        if why:
            return fail(why, kind)
        if not data_out:
            return done(kind)
        return io(kind, IO_WRITE, sector * SECTOR_SIZE, data_out, fua,
                  _span(readable, OUTHDR_SIZE, data_out))
    if kind == "flush":
        # §5.2.6.1: sector 0 and no data are the driver's SHOULDs; neither is checked.
        return io(kind, IO_FLUSH, 0, 0)
    if kind == "get_id":
        if data_out:
            return fail("direction", kind)
        reply = disk.serial.ljust(VIRTIO_BLK_ID_BYTES, b"\0")[:min(data_in, VIRTIO_BLK_ID_BYTES)]
        return done(kind, len(reply) + 1, reply)
    if kind in ("discard", "write_zeroes"):
        if data_in:
            return fail("direction", kind)
        if not data_out or data_out % RANGE.size:
            return fail("length", kind)
        if data_out > RANGE.size:
            return fail("unsupported", kind)   # more ranges than max_*_seg (1)
        first, sectors, flags = RANGE.unpack_from(head, OUTHDR_SIZE)
        unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        # §5.2.6.2: UNSUPP for an unknown flag, and for unmap on a discard.
        if flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP or (kind == "discard" and unmap):
            return fail("unsupported", kind)
        if disk.read_only:
            return fail("read_only", kind)
        limit = (disk.max_discard_sectors if kind == "discard"
                 else disk.max_write_zeroes_sectors)
        if sectors > limit:
            return fail("range", kind)
        why = range_error(disk, first, sectors * SECTOR_SIZE)
        if why:
            return fail(why, kind)
        if not sectors:
            return done(kind)
        if kind == "discard":
            return io(kind, IO_DISCARD, first * SECTOR_SIZE, sectors * SECTOR_SIZE)
        return io(kind, IO_WRITE_ZEROES, first * SECTOR_SIZE, sectors * SECTOR_SIZE,
                  (IO_FLAG_MAY_UNMAP if unmap else 0) | fua)
    return fail("unsupported", kind)


def status_byte(result: int) -> int:
    """The status byte for an executor's result: 0 OK, -EOPNOTSUPP UNSUPP, else IOERR."""
    if result == 0:
        return VIRTIO_BLK_S_OK
    return VIRTIO_BLK_S_UNSUPP if result == STATUS_UNSUPPORTED else VIRTIO_BLK_S_IOERR


class ReferenceExecutor:
    """A disk of `disk.capacity` bytes in memory, carrying out requests by the executor
    contract: offsets and lengths in whole blocks inside the disk (else -EINVAL), no change
    to a read-only disk (-EROFS), discarded ranges read back as zeros."""

    def __init__(self, disk: BlkDisk):
        self.disk = disk
        self.data = bytearray(disk.capacity)

    def execute(self, operation: int, offset: int, length: int, flags: int,
                buffers: list[np.ndarray]) -> int:
        """Carry out one request over `buffers` (uint8 arrays, a read's destination or a
        write's source); returns 0 or a negative errno."""
        block = self.disk.block_size
        if operation not in IO_OPERATIONS:
            return STATUS_INVALID
        if operation == IO_FLUSH:
            return 0
        if offset % block or length % block or offset + length > len(self.data):
            return STATUS_INVALID
        if operation != IO_READ and self.disk.read_only:
            return STATUS_READ_ONLY
        if operation in (IO_READ, IO_WRITE) and sum(len(b) for b in buffers) != length:
            return STATUS_INVALID
        at = offset
        for b in buffers if operation in (IO_READ, IO_WRITE) else ():
            if operation == IO_READ:
                b[:] = np.frombuffer(self.data, dtype=np.uint8, count=len(b), offset=at)
            else:
                self.data[at:at + len(b)] = b.tobytes()
            at += len(b)
        if operation in (IO_DISCARD, IO_WRITE_ZEROES):
            self.data[offset:offset + length] = bytes(length)
        return 0

    def execute_records(self, ios: np.ndarray, n: int,
                        results: list[int] | None = None) -> np.ndarray:
        """Carry out BLOCK_IO records ios[:n], in order, through their iovecs (host
        addresses, read in place); returns their BLOCK_COMPLETION records. With `results`,
        request k completes with results[k] instead, and is carried out only if that is 0."""
        done = np.zeros(n, dtype=BLOCK_COMPLETION)
        for k in range(n):
            io = ios[k]
            buffers = [_host_bytes(int(v["base"]), int(v["length"]))
                       for v in _host_records(int(io["iov"]), int(io["iovcnt"]), IOVEC)]
            result = 0 if results is None else results[k]
            if result == 0:
                result = self.execute(int(io["operation"]), int(io["offset"]),
                                      int(io["length"]), int(io["flags"]), buffers)
            done[k] = (io["tag"], result, 0)
        return done


def _host_bytes(address: int, length: int) -> np.ndarray:
    # Bytes at a host address the device handed out (an iovec of a request in flight).
    if not length:
        return np.zeros(0, dtype=np.uint8)
    return np.frombuffer((ctypes.c_uint8 * length).from_address(address), dtype=np.uint8)


def _host_records(address: int, count: int, dtype: np.dtype) -> np.ndarray:
    return _host_bytes(address, count * dtype.itemsize).view(dtype)


@dataclass
class ReferenceIO:
    """A request handed to the executor, as the reference queue hands it out: the BLOCK_IO
    fields, with the data as (gpa, length) pieces."""

    tag: int
    operation: int
    offset: int
    length: int
    flags: int
    data: list[tuple[int, int]]


class ReferenceQueue:
    """`BlkQueue`'s work on a reference device queue (`SplitDevice` or `PackedDevice`): the
    same requests out, with the same tags, and the same chains used, in the same order.

    `counters` counts what `BlkQueue.counters` counts (but for calls and broken rings).
    """

    def __init__(self, device, memory: GuestMemory, disk: BlkDisk, *, max_burst: int = 32,
                 writethrough: bool = False):
        self.device = device
        self.memory = memory
        self.disk = disk
        self.max_burst = max_burst
        self.writethrough = writethrough
        self.counters: Counter[str] = Counter()
        self._free = list(range(device.size - 1, -1, -1))   # a stack: slot 0 first
        self._generation = [0] * device.size
        self._held: dict[int, tuple[Chain, Request]] = {}

    @property
    def in_flight(self) -> int:
        """Requests handed out and not completed."""
        return len(self._held)

    def take(self, max_n: int) -> list[ReferenceIO]:
        """Pop up to max_n chains (no more than slots are free); complete at once those the
        device completes itself; returns the requests for the executor, in pop order."""
        want = min(max_n, self.max_burst, len(self._free))
        if want <= 0:
            return []
        ios, used = [], []
        for chain in self.device.pop(want):
            request = parse_request(self.memory, chain, self.disk,
                                    writethrough=self.writethrough)
            self._count(request)
            if request.outcome == "io":
                slot = self._free.pop()
                self._generation[slot] = (self._generation[slot] + 1) & 0xFFFFFFFF
                tag = self._generation[slot] << 32 | slot
                self._held[tag] = (chain, request)
                self.counters["submitted"] += 1
                ios.append(ReferenceIO(tag, request.operation, request.offset, request.length,
                                       request.flags, request.data))
                continue
            if request.outcome == "done":
                # GET_ID's reply goes before the status byte, in the writable data.
                done = 0
                for gpa, n in _span([p for p in chain.pieces if p.writable and p.length], 0,
                                    len(request.reply)):
                    write_guest(self.memory, gpa, request.reply[done:done + n])
                    done += n
                self._write_status(request.status_gpa, request.status)
            used.append((chain, request.used_len))
        if used:
            self.device.push(used)
        return ios

    def execute(self, executor: ReferenceExecutor, ios: list[ReferenceIO],
                results: list[int] | None = None) -> list[tuple[int, int]]:
        """Carry the requests out on `executor` as `ReferenceExecutor.execute_records`
        does; returns their (tag, result) completions."""
        done = []
        for k, io in enumerate(ios):
            result = 0 if results is None else results[k]
            if result == 0:
                buffers = [self.memory.view(gpa, n) for gpa, n in io.data]
                result = executor.execute(io.operation, io.offset, io.length, io.flags,
                                          buffers)
            done.append((io.tag, result))
        return done

    def complete(self, completions: list[tuple[int, int]]) -> int:
        """Complete requests by (tag, result); returns the chains used."""
        used = []
        for tag, result in completions:
            held = self._held.pop(tag, None)
            if held is None:
                self.counters["stale"] += 1
                continue
            chain, request = held
            self._free.append(tag & 0xFFFFFFFF)
            status = status_byte(result)
            self._write_status(request.status_gpa, status)
            if status == VIRTIO_BLK_S_OK and request.operation in (IO_READ, IO_WRITE):
                name = "bytes_read" if request.operation == IO_READ else "bytes_written"
                self.counters[name] += request.length
            used.append((chain, request.used_len if status == VIRTIO_BLK_S_OK else 1))
        return self.device.push(used) if used else 0

    def _count(self, request: Request) -> None:
        if request.kind:
            self.counters[request.kind] += 1
        if request.reason:
            self.counters[request.reason] += 1

    def _write_status(self, gpa: int, status: int) -> None:
        write_guest(self.memory, gpa, bytes([status]))
        self.counters[("status_ok", "status_ioerr", "status_unsupp")[status]] += 1
