"""A command's data pointer, both ways: the host builds PRPs or an SGL for its buffers; the
controller walks them back into iovecs, checking everything it reads.

PRPs (Base §4.1.1) name memory pages: PRP entry 1 may start anywhere dword aligned in its page;
every later page starts at offset 0. When the transfer spans two pages PRP entry 2 is the
second page; past two it points (qword aligned, maybe inside a page) to a PRP list, whose
entries run to the end of that page, the last entry of a full page pointing to the next list
page. Buffers fit PRPs when each but the first starts on a page and each but the last ends on
one; other buffers need an SGL (Base §4.1.2): a Data Block descriptor in the command for one
buffer, else a Last Segment descriptor pointing to a segment of Data Block descriptors.

The controller's walk supports of SGLs: Data Block descriptors, and Segment and Last Segment
descriptors as the last entry of a segment (Bit Bucket, Keyed and Transport descriptors get
SGL Descriptor Type Invalid). Every range it reads (a list, a segment) or hands on (a data
piece) must lie in the DMA map, else the command fails with Data Transfer Error; a malformed
pointer gets its own status (PRP Offset Invalid, Invalid SGL Segment Descriptor, Invalid
Number of SGL Descriptors, Data SGL Length Invalid). The walk returns the number of iovecs it
wrote, or the negated status.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastpath._numba import NJIT, carray, u64_pointer
from fastpath.spdk_like._dma import dma_inside
from fastpath.spdk_like._nvme_layout import (
    CDW0_PSDT_MASK,
    CDW0_PSDT_SHIFT,
    PAGE_SIZE,
    PRP_ENTRY_SIZE,
    PSDT_PRP,
    PSDT_SGL_MPTR_BUFFER,
    SGL_DESCRIPTOR,
    SGL_LENGTH_MASK,
    SGL_SUBTYPE_ADDRESS,
    SGL_SUBTYPE_SHIFT,
    SGL_TYPE_DATA_BLOCK,
    SGL_TYPE_LAST_SEGMENT,
    SGL_TYPE_SEGMENT,
    SGL_TYPE_SHIFT,
    SQ_CDW0,
    SQ_PRP1,
    SQ_PRP2,
    STATUS_DATA_SGL_LENGTH_INVALID,
    STATUS_DATA_TRANSFER_ERROR,
    STATUS_INTERNAL_ERROR,
    STATUS_INVALID_SGL_COUNT,
    STATUS_INVALID_SGL_SEGMENT,
    STATUS_PRP_OFFSET_INVALID,
    STATUS_SGL_TYPE_INVALID,
    qword,
    set_qword,
)

_PAGE_MASK = PAGE_SIZE - 1
_DESCRIPTOR_SIZE = SGL_DESCRIPTOR.itemsize
# Segments one command's SGL may chain through: a bound on the walk, whatever the host wrote
# (a segment pointing back to itself would otherwise never end).
MAX_SGL_SEGMENTS = 16
# Data Block descriptors the model's controller takes in one command (PCIe controllers do not
# report a limit; a host of the model keeps to this one).
MAX_SGL_DATA_DESCRIPTORS = 32


@njit(**NJIT)
def _add_piece(iov, count, max_iov, address, length):
    # Append [address, address + length) to iov[:count], merging it into the last piece when
    # it continues it; returns the new count, or -1 when iov is full.
    if count > 0 and iov[count - 1, 0] + iov[count - 1, 1] == address:
        iov[count - 1, 1] += length
        return count
    if count == max_iov:
        return -1
    iov[count, 0] = address
    iov[count, 1] = length
    return count + 1


@njit(**NJIT)
def prp_to_iovecs(regions, prp1, prp2, length, iov, max_iov):
    """Walk PRP entries 1 and 2 (and the lists they lead to) for a transfer of `length` bytes
    (more than 0) into iov (uint64 rows of address and length) up to max_iov (1 or more)
    pieces; returns the pieces, or the negated status of the first fault (Internal Error when
    iov is too short: the caller bounds `length` by its maximum transfer)."""
    if prp1 & 3:
        # Bits 1:0 of an entry are 0 (Base §4.1.1); the controller may fail the command.
        return -STATUS_PRP_OFFSET_INVALID
    first = min(length, PAGE_SIZE - np.int64(prp1 & _PAGE_MASK))
    if not dma_inside(regions, prp1, first):
        return -STATUS_DATA_TRANSFER_ERROR
    count = _add_piece(iov, 0, max_iov, prp1, first)
    left = length - first
    if left == 0:
        return count
    if left <= PAGE_SIZE:
        # PRP entry 2 is the second (and last) page.
        if prp2 & _PAGE_MASK:
            return -STATUS_PRP_OFFSET_INVALID
        if not dma_inside(regions, prp2, left):
            return -STATUS_DATA_TRANSFER_ERROR
        count = _add_piece(iov, count, max_iov, prp2, left)
        return count if count >= 0 else -STATUS_INTERNAL_ERROR
    if prp2 & (PRP_ENTRY_SIZE - 1):
        return -STATUS_PRP_OFFSET_INVALID
    entry = np.uint64(prp2)
    while left > 0:
        in_page = (PAGE_SIZE - np.int64(entry & _PAGE_MASK)) // PRP_ENTRY_SIZE
        needed = (left + PAGE_SIZE - 1) // PAGE_SIZE
        # A list that does not end in this page uses the page's last entry to point on.
        pages = needed if needed <= in_page else in_page - 1
        read = needed if needed <= in_page else in_page
        if not dma_inside(regions, entry, read * PRP_ENTRY_SIZE):
            return -STATUS_DATA_TRANSFER_ERROR
        # SAFETY: `read` entries from `entry` lie in the DMA map, checked just above.
        entries = carray(u64_pointer(entry), (read,))
        for k in range(pages):
            page = entries[k]
            n = min(left, PAGE_SIZE)
            if page & _PAGE_MASK:
                return -STATUS_PRP_OFFSET_INVALID
            if not dma_inside(regions, page, n):
                return -STATUS_DATA_TRANSFER_ERROR
            count = _add_piece(iov, count, max_iov, page, n)
            if count < 0:
                return -STATUS_INTERNAL_ERROR
            left -= n
        if left > 0:
            entry = entries[read - 1]
            if entry & _PAGE_MASK:
                return -STATUS_PRP_OFFSET_INVALID
    return count


@njit(**NJIT)
def sgl_to_iovecs(regions, address, word1, length, iov, max_iov):
    """Walk the SGL whose first descriptor is (address, word1) (the two qwords of the
    command's data pointer) for a transfer of `length` bytes into iov up to max_iov pieces;
    returns the pieces, or the negated status of the first fault."""
    # As uint64, whoever calls: the walk moves them on to descriptors it reads.
    segment_address = np.uint64(address)
    segment_word = np.uint64(word1)
    count = 0
    total = 0
    kind = np.int64(segment_word >> SGL_TYPE_SHIFT)
    if (segment_word >> SGL_SUBTYPE_SHIFT) & 0xF != SGL_SUBTYPE_ADDRESS:
        return -STATUS_SGL_TYPE_INVALID
    if kind == SGL_TYPE_DATA_BLOCK:
        total = np.int64(segment_word & SGL_LENGTH_MASK)
        if total != length:
            return -STATUS_DATA_SGL_LENGTH_INVALID
        if not dma_inside(regions, segment_address, total):
            return -STATUS_DATA_TRANSFER_ERROR
        return _add_piece(iov, 0, max_iov, segment_address, total)
    segments = 0
    while True:
        if kind != SGL_TYPE_SEGMENT and kind != SGL_TYPE_LAST_SEGMENT:
            return -STATUS_SGL_TYPE_INVALID
        nbytes = np.int64(segment_word & SGL_LENGTH_MASK)
        if nbytes == 0 or nbytes % _DESCRIPTOR_SIZE or segment_address & 7:
            # A segment is a whole number of descriptors, qword aligned (Base §4.1.2).
            return -STATUS_INVALID_SGL_SEGMENT
        segments += 1
        if segments > MAX_SGL_SEGMENTS:
            return -STATUS_INVALID_SGL_COUNT
        if not dma_inside(regions, segment_address, nbytes):
            return -STATUS_DATA_TRANSFER_ERROR
        n = nbytes // _DESCRIPTOR_SIZE
        # SAFETY: the segment's n descriptors lie in the DMA map, checked just above.
        segment = carray(u64_pointer(segment_address), (n, 2))
        last = kind == SGL_TYPE_LAST_SEGMENT
        next_kind = -1
        for k in range(n):
            piece_address = segment[k, 0]
            piece_word = segment[k, 1]
            piece_kind = np.int64(piece_word >> SGL_TYPE_SHIFT)
            if (piece_word >> SGL_SUBTYPE_SHIFT) & 0xF != SGL_SUBTYPE_ADDRESS:
                return -STATUS_SGL_TYPE_INVALID
            if piece_kind == SGL_TYPE_DATA_BLOCK:
                piece_length = np.int64(piece_word & SGL_LENGTH_MASK)
                if piece_length == 0:
                    continue
                if not dma_inside(regions, piece_address, piece_length):
                    return -STATUS_DATA_TRANSFER_ERROR
                count = _add_piece(iov, count, max_iov, piece_address, piece_length)
                if count < 0:
                    return -STATUS_INVALID_SGL_COUNT
                total += piece_length
            elif piece_kind == SGL_TYPE_SEGMENT or piece_kind == SGL_TYPE_LAST_SEGMENT:
                # Only the last descriptor of a segment that is not the last may point on.
                if last or k != n - 1:
                    return -STATUS_INVALID_SGL_SEGMENT
                next_kind = piece_kind
                segment_address = piece_address
                segment_word = piece_word
            else:
                return -STATUS_SGL_TYPE_INVALID
        if last:
            break
        if next_kind < 0:
            # A Segment descriptor promises a further segment.
            return -STATUS_INVALID_SGL_SEGMENT
        kind = next_kind
    if total != length:
        return -STATUS_DATA_SGL_LENGTH_INVALID
    return count


@njit(**NJIT)
def data_to_iovecs(regions, sqe, length, iov, max_iov):
    """The pieces of a command's data pointer (PRPs or an SGL, as its PSDT says) for
    `length` bytes, as `prp_to_iovecs` and `sgl_to_iovecs` return them; a reserved PSDT
    never reaches here."""
    psdt = (sqe[SQ_CDW0] >> CDW0_PSDT_SHIFT) & CDW0_PSDT_MASK
    if psdt == PSDT_PRP:
        return prp_to_iovecs(regions, qword(sqe, SQ_PRP1), qword(sqe, SQ_PRP2), length, iov,
                             max_iov)
    return sgl_to_iovecs(regions, qword(sqe, SQ_PRP1), qword(sqe, SQ_PRP2), length, iov,
                         max_iov)


# --- the host's side ---

@njit(**NJIT)
def _fits_prps(iov, n):
    # Whether the buffers follow the PRP rules: dword-aligned start, and page boundaries
    # between them.
    if iov[0, 0] & 3:
        return False
    for k in range(n):
        if k > 0 and iov[k, 0] & _PAGE_MASK:
            return False
        if k < n - 1 and (iov[k, 0] + iov[k, 1]) & _PAGE_MASK:
            return False
    return True


@njit(**NJIT)
def build_data_pointer(iov, n, list_page, sqe):
    """Describe the n buffers of iov (uint64 rows of address and length, n > 0, no empty
    one) in the command `sqe` (16 dwords): PRPs when they fit, with the PRP list (if any) in
    the page at `list_page`; else an SGL, its segment in that page. Sets PSDT and the data
    pointer; returns 0, or -1 when one page of list or segment cannot hold them."""
    sqe[SQ_CDW0] &= ~np.uint32(CDW0_PSDT_MASK << CDW0_PSDT_SHIFT)
    if _fits_prps(iov, n):
        # SAFETY: list_page is the caller's page of host memory, PAGE_SIZE bytes.
        entries = carray(u64_pointer(list_page), (PAGE_SIZE // PRP_ENTRY_SIZE,))
        pages = 0
        second = np.uint64(0)
        for k in range(n):
            end = iov[k, 0] + iov[k, 1]
            page = iov[k, 0] & ~np.uint64(_PAGE_MASK)
            while page < end:
                if pages == 1:
                    second = page
                if pages >= 1:
                    if pages - 1 == entries.shape[0]:
                        return -1
                    entries[pages - 1] = page
                pages += 1
                page += np.uint64(PAGE_SIZE)
        set_qword(sqe, SQ_PRP1, iov[0, 0])
        if pages == 1:
            set_qword(sqe, SQ_PRP2, 0)
        elif pages == 2:
            set_qword(sqe, SQ_PRP2, second)
        else:
            set_qword(sqe, SQ_PRP2, list_page)
        return 0
    sqe[SQ_CDW0] |= np.uint32(PSDT_SGL_MPTR_BUFFER << CDW0_PSDT_SHIFT)
    if n == 1:
        set_qword(sqe, SQ_PRP1, iov[0, 0])
        set_qword(sqe, SQ_PRP2, iov[0, 1] | np.uint64(SGL_TYPE_DATA_BLOCK) << SGL_TYPE_SHIFT)
        return 0
    if n > PAGE_SIZE // _DESCRIPTOR_SIZE:
        return -1
    # SAFETY: as above: the caller's page holds PAGE_SIZE // 16 descriptors.
    segment = carray(u64_pointer(list_page), (n, 2))
    for k in range(n):
        segment[k, 0] = iov[k, 0]
        segment[k, 1] = iov[k, 1] | np.uint64(SGL_TYPE_DATA_BLOCK) << SGL_TYPE_SHIFT
    set_qword(sqe, SQ_PRP1, list_page)
    set_qword(sqe, SQ_PRP2, np.uint64(n * _DESCRIPTOR_SIZE)
              | np.uint64(SGL_TYPE_LAST_SEGMENT) << SGL_TYPE_SHIFT)
    return 0
