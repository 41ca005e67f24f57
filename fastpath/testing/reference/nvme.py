"""A plain-Python NVMe controller's I/O commands: the oracle for the compiled controller.

Written from NVM Express Base Specification 2.0 and the NVM Command Set Specification 1.0 for
readability, not speed, and independently of `fastpath.spdk_like`'s layouts: commands are
parsed with `struct` from the common command format (Base §3.3.3.1), data pointers walked
from the PRP (Base §4.1.1) and SGL (Base §4.1.2) rules, and statuses are the spec's codes
(Base §3.3.3.2.1). `NvmeReference.execute` carries out one command at a time on a disk in a
bytearray, reaching host memory (this process's, by address, as the modelled controller does)
only inside the areas it was given, and returns the status the controller would complete the
command with. The model's choices where the spec leaves room are the compiled controller's:
the order of checks (opcode; fused operation and PSDT; namespace; transfer size; LBA range;
data pointer), the SGL descriptors served (Data Block; Segment and Last Segment as a
segment's last entry), Dataset Management without Deallocate as hints alone, and deallocated
blocks reading back as zeros (as the test executors do).
"""

from __future__ import annotations

import ctypes
import struct

__all__ = ["NvmeReference", "STATUS", "status"]

# The common command format: CDW0 (opcode, flags, CID), NSID, CDW2, CDW3, MPTR, PRP1, PRP2,
# CDW10 to CDW15.
_COMMAND = struct.Struct("<BBHIIIQQQIIIIII")
_SGL = struct.Struct("<QI3xB")       # address, length, reserved, identifier
_DSM_RANGE = struct.Struct("<IIQ")    # context attributes, blocks, starting LBA

PAGE = 4096                          # CC.MPS = 0
MAX_SEGMENTS = 16                    # the model's bound on a chain of SGL segments
MAX_PIECES = 33                      # iovecs the model gives one command


def status(sct: int, sc: int, dnr: bool = True) -> int:
    """The status field without the phase tag (Base Figure 92 shifted down a bit)."""
    return sc | sct << 8 | (1 << 14 if dnr and (sct or sc) else 0)


STATUS = {
    "success": 0,
    "invalid_opcode": status(0, 0x01),
    "invalid_field": status(0, 0x02),
    "data_transfer_error": status(0, 0x04),
    "internal_error": status(0, 0x06, dnr=False),
    "invalid_namespace": status(0, 0x0B),
    "invalid_sgl_segment": status(0, 0x0D),
    "invalid_sgl_count": status(0, 0x0E),
    "data_sgl_length_invalid": status(0, 0x0F),
    "sgl_type_invalid": status(0, 0x11),
    "prp_offset_invalid": status(0, 0x13),
    "lba_out_of_range": status(0, 0x80),
}

FLUSH, WRITE, READ, WRITE_ZEROES, DATASET_MANAGEMENT = 0x00, 0x01, 0x02, 0x08, 0x09


class _Fault(Exception):
    def __init__(self, name: str):
        super().__init__(name)
        self.status = STATUS[name]


class NvmeReference:
    """Namespace 1 of `len(disk) // block_size` blocks in `disk`; host memory reachable in
    `regions` ([start, end) address pairs); commands move up to `max_transfer` bytes."""

    def __init__(self, disk: bytearray, block_size: int, regions: list[tuple[int, int]],
                 max_transfer: int = 32 * PAGE):
        self.disk = disk
        self.block_size = block_size
        self.blocks = len(disk) // block_size
        self.regions = list(regions)
        self.max_transfer = max_transfer

    def execute(self, command: bytes) -> int:
        """Carry out one 64-byte command; returns its status (0 for success)."""
        try:
            self._execute(command)
        except _Fault as fault:
            return fault.status
        return 0

    # --- the commands ---

    def _execute(self, command: bytes) -> None:
        (opcode, flags, _cid, nsid, _, _, _mptr, prp1, prp2,
         cdw10, cdw11, cdw12, _, _, _) = _COMMAND.unpack(command)
        if opcode not in (FLUSH, WRITE, READ, WRITE_ZEROES, DATASET_MANAGEMENT):
            raise _Fault("invalid_opcode")
        psdt = flags >> 6
        if flags & 0x3 or psdt == 3:
            raise _Fault("invalid_field")
        if opcode == FLUSH:
            if nsid not in (1, 0xFFFFFFFF):
                raise _Fault("invalid_namespace")
            return
        if nsid != 1:
            raise _Fault("invalid_namespace")
        if opcode == DATASET_MANAGEMENT:
            nbytes = ((cdw10 & 0xFF) + 1) * _DSM_RANGE.size
            data = self._gather(self._pieces(psdt, prp1, prp2, nbytes))
            ranges = [_DSM_RANGE.unpack_from(data, k) for k in range(0, nbytes, _DSM_RANGE.size)]
            for _, blocks, slba in ranges:
                if blocks and not self._in_range(slba, blocks):
                    raise _Fault("lba_out_of_range")
            if cdw11 & 0x4:
                for _, blocks, slba in ranges:
                    self._zero(slba, blocks)
            return
        slba = cdw10 | cdw11 << 32
        blocks = (cdw12 & 0xFFFF) + 1
        length = blocks * self.block_size
        if opcode != WRITE_ZEROES and length > self.max_transfer:
            raise _Fault("invalid_field")
        if not self._in_range(slba, blocks):
            raise _Fault("lba_out_of_range")
        if opcode == WRITE_ZEROES:
            self._zero(slba, blocks)
            return
        pieces = self._pieces(psdt, prp1, prp2, length)
        offset = slba * self.block_size
        if opcode == WRITE:
            self.disk[offset:offset + length] = self._gather(pieces)
        else:
            self._scatter(pieces, bytes(self.disk[offset:offset + length]))

    def _in_range(self, slba: int, blocks: int) -> bool:
        return slba + blocks <= self.blocks

    def _zero(self, slba: int, blocks: int) -> None:
        start = slba * self.block_size
        self.disk[start:start + blocks * self.block_size] = bytes(blocks * self.block_size)

    # --- host memory ---

    def _reachable(self, address: int, length: int) -> bool:
        return any(start <= address and address + length <= end for start, end in self.regions)

    def _read(self, address: int, length: int) -> bytes:
        if not self._reachable(address, length):
            raise _Fault("data_transfer_error")
        return ctypes.string_at(address, length)

    def _gather(self, pieces: list[tuple[int, int]]) -> bytes:
        return b"".join(ctypes.string_at(address, length) for address, length in pieces)

    def _scatter(self, pieces: list[tuple[int, int]], data: bytes) -> None:
        done = 0
        for address, length in pieces:
            ctypes.memmove(address, data[done:done + length], length)
            done += length

    # --- data pointers ---

    def _pieces(self, psdt: int, prp1: int, prp2: int, length: int) -> list[tuple[int, int]]:
        if psdt == 0:
            return self._prp_pieces(prp1, prp2, length)
        return self._sgl_pieces(prp1, prp2, length)

    def _data(self, address: int, length: int) -> tuple[int, int]:
        # A piece of the data buffer, which must be host memory the controller reaches.
        if not self._reachable(address, length):
            raise _Fault("data_transfer_error")
        return address, length

    def _prp_pieces(self, prp1: int, prp2: int, length: int) -> list[tuple[int, int]]:
        if prp1 & 3:
            raise _Fault("prp_offset_invalid")
        first = min(length, PAGE - prp1 % PAGE)
        pieces = [self._data(prp1, first)]
        left = length - first
        if left == 0:
            return pieces
        if left <= PAGE:
            if prp2 % PAGE:
                raise _Fault("prp_offset_invalid")
            return pieces + [self._data(prp2, left)]
        if prp2 % 8:
            raise _Fault("prp_offset_invalid")
        entry = prp2
        while left:
            # The entries of a list run to the end of its page; when the transfer needs more,
            # the page's last entry points to the next list.
            in_page = (PAGE - entry % PAGE) // 8
            needed = -(-left // PAGE)
            chains = needed > in_page
            count = in_page if chains else needed
            raw = self._read(entry, count * 8)
            entries = list(struct.unpack(f"<{count}Q", raw))
            for page in entries[:count - 1] if chains else entries:
                if page % PAGE:
                    raise _Fault("prp_offset_invalid")
                n = min(left, PAGE)
                pieces.append(self._data(page, n))
                left -= n
            if chains:
                entry = entries[-1]
                if entry % PAGE:
                    raise _Fault("prp_offset_invalid")
        return pieces

    def _sgl_pieces(self, address: int, word1: int, length: int) -> list[tuple[int, int]]:
        kind, subtype, size = word1 >> 60, word1 >> 56 & 0xF, word1 & 0xFFFFFFFF
        if subtype:
            raise _Fault("sgl_type_invalid")
        if kind == 0x0:
            if size != length:
                raise _Fault("data_sgl_length_invalid")
            return [self._data(address, size)]
        pieces: list[tuple[int, int]] = []
        segments = 0
        while True:
            if kind not in (0x2, 0x3):
                raise _Fault("sgl_type_invalid")
            if size == 0 or size % 16 or address % 8:
                raise _Fault("invalid_sgl_segment")
            segments += 1
            if segments > MAX_SEGMENTS:
                raise _Fault("invalid_sgl_count")
            raw = self._read(address, size)
            descriptors = [_SGL.unpack_from(raw, k) for k in range(0, size, 16)]
            follow = None
            for k, (piece, piece_size, identifier) in enumerate(descriptors):
                piece_kind = identifier >> 4
                if identifier & 0xF:
                    raise _Fault("sgl_type_invalid")
                if piece_kind == 0x0:
                    if piece_size:
                        _append(pieces, *self._data(piece, piece_size))
                elif piece_kind in (0x2, 0x3):
                    if kind == 0x3 or k != len(descriptors) - 1:
                        raise _Fault("invalid_sgl_segment")
                    follow = (piece, piece_size, piece_kind)
                else:
                    raise _Fault("sgl_type_invalid")
            if kind == 0x3:
                break
            if follow is None:
                raise _Fault("invalid_sgl_segment")
            address, size, kind = follow
        if sum(n for _, n in pieces) != length:
            raise _Fault("data_sgl_length_invalid")
        return pieces


def _append(pieces: list[tuple[int, int]], address: int, length: int) -> None:
    # One more data piece; a piece continuing the last one joins it (the model hands the
    # executor the fewest iovecs), and a command has at most MAX_PIECES.
    if pieces and sum(pieces[-1]) == address:
        pieces[-1] = (pieces[-1][0], pieces[-1][1] + length)
        return
    if len(pieces) == MAX_PIECES:
        raise _Fault("invalid_sgl_count")
    pieces.append((address, length))
