"""Data pointers (NVMe Base 2.0 §4.1.1 PRPs, §4.1.2 SGLs): what the host builds, what the
controller makes of them, and hostile pointers that must end in a status, never a stray
access."""

import numpy as np
import pytest
from nvme_helpers import Rig, command, status_of

from fastpath.spdk_like._dma import HostMemory, dma_map
from fastpath.spdk_like._nvme_dptr import (
    MAX_SGL_SEGMENTS,
    build_data_pointer,
    prp_to_iovecs,
    sgl_to_iovecs,
)
from fastpath.spdk_like._nvme_io import MAX_IOVECS
from fastpath.spdk_like._nvme_layout import (
    CDW0_PSDT_SHIFT,
    NVM_READ,
    NVM_WRITE,
    PAGE_SIZE,
    PSDT_PRP,
    PSDT_SGL_MPTR_BUFFER,
    SGL_TYPE_BIT_BUCKET,
    SGL_TYPE_DATA_BLOCK,
    SGL_TYPE_LAST_SEGMENT,
    SGL_TYPE_SEGMENT,
    SGL_TYPE_SHIFT,
    SQ_CDW0,
    SQ_PRP1,
    SQ_PRP2,
    STATUS_DATA_SGL_LENGTH_INVALID,
    STATUS_DATA_TRANSFER_ERROR,
    STATUS_INVALID_SGL_COUNT,
    STATUS_INVALID_SGL_SEGMENT,
    STATUS_PRP_OFFSET_INVALID,
    STATUS_SGL_TYPE_INVALID,
    qword,
)


@pytest.fixture
def memory():
    return HostMemory(64 * PAGE_SIZE)


def walk_prps(memory, prp1, prp2, length):
    iov = np.zeros((MAX_IOVECS, 2), dtype=np.uint64)
    n = prp_to_iovecs(dma_map([memory]), prp1, prp2, length, iov, MAX_IOVECS)
    return n if n < 0 else [tuple(map(int, piece)) for piece in iov[:n]]


def walk_sgl(memory, address, word1, length, max_iov=MAX_IOVECS):
    iov = np.zeros((max_iov, 2), dtype=np.uint64)
    n = sgl_to_iovecs(dma_map([memory]), address, word1, length, iov, max_iov)
    return n if n < 0 else [tuple(map(int, piece)) for piece in iov[:n]]


def descriptor(kind, length, subtype=0):
    return length | kind << SGL_TYPE_SHIFT | subtype << 56


def test_prp1_alone_covers_a_transfer_within_its_page(memory):
    page = memory.alloc(PAGE_SIZE).ctypes.data
    assert walk_prps(memory, page + 512, 0xBAD, 1024) == [(page + 512, 1024)]


def test_prp2_is_the_second_page_of_a_two_page_transfer(memory):
    first = memory.alloc(PAGE_SIZE).ctypes.data
    memory.alloc(PAGE_SIZE)  # keeps the two pages apart (adjacent pieces merge)
    second = memory.alloc(PAGE_SIZE).ctypes.data
    assert walk_prps(memory, first + 3072, second, 2048) == [(first + 3072, 1024),
                                                             (second, 1024)]


def test_prp_list_of_scattered_pages_and_the_chain_at_a_page_end(memory):
    pages = [memory.alloc(PAGE_SIZE).ctypes.data for _ in range(8)][::-1]
    lists = memory.alloc(2 * PAGE_SIZE)
    entries = lists.view(np.uint64)
    # The list starts two entries before its page's end: one page entry, then the pointer on
    # to the next list page (Base §4.1.1: the last entry of a list page chains).
    start = PAGE_SIZE // 8 - 2
    entries[start] = pages[1]
    entries[start + 1] = lists.ctypes.data + PAGE_SIZE
    entries[PAGE_SIZE // 8:PAGE_SIZE // 8 + 3] = pages[2:5]
    length = 4 * PAGE_SIZE + 100
    got = walk_prps(memory, pages[0], lists.ctypes.data + 8 * start, length)
    assert got == [(pages[0], PAGE_SIZE), (pages[1], PAGE_SIZE), (pages[2], PAGE_SIZE),
                   (pages[3], PAGE_SIZE), (pages[4], 100)]


def test_contiguous_prp_pages_come_back_as_one_iovec(memory):
    buffer = memory.alloc(4 * PAGE_SIZE).ctypes.data
    plist = memory.alloc(PAGE_SIZE)
    plist.view(np.uint64)[:3] = [buffer + PAGE_SIZE * k for k in (1, 2, 3)]
    assert walk_prps(memory, buffer, plist.ctypes.data, 4 * PAGE_SIZE) == [
        (buffer, 4 * PAGE_SIZE)]


@pytest.mark.parametrize("case", ["prp1_outside", "prp1_misaligned", "prp2_offset",
                                  "list_misaligned", "list_outside", "entry_offset",
                                  "entry_outside", "list_too_short", "chain_offset"])
def test_hostile_prps_end_in_their_status(memory, case):
    page = memory.alloc(PAGE_SIZE).ctypes.data
    plist = memory.alloc(PAGE_SIZE)
    entries = plist.view(np.uint64)
    entries[:4] = [memory.alloc(PAGE_SIZE).ctypes.data for _ in range(4)]
    list_address = plist.ctypes.data
    end = memory.base + memory.size
    prp1, prp2, length = page, list_address, 3 * PAGE_SIZE
    expected = STATUS_DATA_TRANSFER_ERROR
    if case == "prp1_outside":
        prp1 = end + 0x10000
    elif case == "prp1_misaligned":
        prp1, expected = page + 2, STATUS_PRP_OFFSET_INVALID
    elif case == "prp2_offset":
        prp2, length, expected = entries[0] + 8, 2 * PAGE_SIZE, STATUS_PRP_OFFSET_INVALID
    elif case == "list_misaligned":
        prp2, expected = list_address + 4, STATUS_PRP_OFFSET_INVALID
    elif case == "list_outside":
        prp2 = 0x1000
    elif case == "entry_offset":
        entries[1] += 512
        expected = STATUS_PRP_OFFSET_INVALID
    elif case == "entry_outside":
        entries[1] = end
    elif case == "list_too_short":
        # A list in the last entry of the memory the controller reaches: it must chain for
        # the pages it lacks, and its chain pointer (0) leads nowhere it may read.
        prp2 = end - 8
        length = 4 * PAGE_SIZE
    elif case == "chain_offset":
        # A list starting at a page's last entry holds only the pointer to the next list,
        # which must start a page.
        prp2 = list_address + PAGE_SIZE - 8
        entries[-1] = list_address + 16
        expected = STATUS_PRP_OFFSET_INVALID
    assert walk_prps(memory, prp1, prp2, length) == -expected


def test_an_sgl_data_block_in_the_command(memory):
    buffer = memory.alloc(PAGE_SIZE).ctypes.data + 3
    assert walk_sgl(memory, buffer, descriptor(SGL_TYPE_DATA_BLOCK, 1000), 1000) == [
        (buffer, 1000)]


def test_sgl_segments_chain_and_skip_empty_blocks(memory):
    data = memory.alloc(PAGE_SIZE).ctypes.data
    first = memory.alloc(PAGE_SIZE)
    second = memory.alloc(PAGE_SIZE)
    one = first.view(np.uint64).reshape(-1, 2)
    one[0] = (data + 1, descriptor(SGL_TYPE_DATA_BLOCK, 100))
    one[1] = (data + 999, descriptor(SGL_TYPE_DATA_BLOCK, 0))
    one[2] = (second.ctypes.data, descriptor(SGL_TYPE_LAST_SEGMENT, 32))
    two = second.view(np.uint64).reshape(-1, 2)
    two[0] = (data + 2000, descriptor(SGL_TYPE_DATA_BLOCK, 50))
    two[1] = (data + 2050, descriptor(SGL_TYPE_DATA_BLOCK, 10))
    got = walk_sgl(memory, first.ctypes.data, descriptor(SGL_TYPE_SEGMENT, 48), 160)
    assert got == [(data + 1, 100), (data + 2000, 60)]


@pytest.mark.parametrize("case", ["bit_bucket", "subtype", "segment_zero_length",
                                  "segment_not_whole", "segment_misaligned",
                                  "segment_in_last", "segment_not_last_entry", "no_follow",
                                  "loop", "too_short", "too_long", "outside", "too_many",
                                  "segment_outside"])
def test_hostile_sgls_end_in_their_status(memory, case):
    data = memory.alloc(PAGE_SIZE).ctypes.data
    segment = memory.alloc(PAGE_SIZE)
    entries = segment.view(np.uint64).reshape(-1, 2)
    for k in range(4):
        entries[k] = (data + 100 * k, descriptor(SGL_TYPE_DATA_BLOCK, 50))
    address, word1, length = segment.ctypes.data, descriptor(SGL_TYPE_LAST_SEGMENT, 64), 200
    max_iov = MAX_IOVECS
    if case == "bit_bucket":
        entries[2, 1] = descriptor(SGL_TYPE_BIT_BUCKET, 50)
        expected = STATUS_SGL_TYPE_INVALID
    elif case == "subtype":
        word1 = descriptor(SGL_TYPE_LAST_SEGMENT, 64, subtype=1)
        expected = STATUS_SGL_TYPE_INVALID
    elif case == "segment_zero_length":
        word1 = descriptor(SGL_TYPE_LAST_SEGMENT, 0)
        expected = STATUS_INVALID_SGL_SEGMENT
    elif case == "segment_not_whole":
        word1 = descriptor(SGL_TYPE_LAST_SEGMENT, 40)
        expected = STATUS_INVALID_SGL_SEGMENT
    elif case == "segment_misaligned":
        address += 4
        expected = STATUS_INVALID_SGL_SEGMENT
    elif case == "segment_in_last":
        entries[3] = (address, descriptor(SGL_TYPE_LAST_SEGMENT, 16))
        expected = STATUS_INVALID_SGL_SEGMENT
    elif case == "segment_not_last_entry":
        word1 = descriptor(SGL_TYPE_SEGMENT, 64)
        entries[1] = (address, descriptor(SGL_TYPE_LAST_SEGMENT, 16))
        expected = STATUS_INVALID_SGL_SEGMENT
    elif case == "no_follow":
        word1 = descriptor(SGL_TYPE_SEGMENT, 64)
        expected = STATUS_INVALID_SGL_SEGMENT
    elif case == "loop":
        # A segment whose last entry points back at itself.
        word1 = descriptor(SGL_TYPE_SEGMENT, 64)
        entries[3] = (address, descriptor(SGL_TYPE_SEGMENT, 64))
        length = 10_000
        expected = STATUS_INVALID_SGL_COUNT
    elif case == "too_short":
        length = 201
        expected = STATUS_DATA_SGL_LENGTH_INVALID
    elif case == "too_long":
        length = 199
        expected = STATUS_DATA_SGL_LENGTH_INVALID
    elif case == "outside":
        entries[2, 0] = memory.base + memory.size - 10
        expected = STATUS_DATA_TRANSFER_ERROR
    elif case == "too_many":
        max_iov = 3
        expected = STATUS_INVALID_SGL_COUNT
    elif case == "segment_outside":
        address = memory.base + memory.size - 32
        expected = STATUS_DATA_TRANSFER_ERROR
    assert walk_sgl(memory, address, word1, length, max_iov) == -expected
    assert MAX_SGL_SEGMENTS < 100


def built(memory, pieces):
    iov = np.array(pieces, dtype=np.uint64).reshape(-1, 2)
    page = memory.alloc(PAGE_SIZE)
    sqe = np.zeros(16, dtype=np.uint32)
    assert build_data_pointer(iov, len(iov), page.ctypes.data, sqe) == 0
    return sqe, page, (int(sqe[SQ_CDW0]) >> CDW0_PSDT_SHIFT) & 3


def test_buffers_that_fit_prps_get_prps_and_walk_back_to_themselves(memory):
    pages = [memory.alloc(PAGE_SIZE).ctypes.data for _ in range(5)]
    cases = [
        [(pages[0] + 4, 508)],
        [(pages[0] + 2048, 2048), (pages[3], 1000)],
        [(pages[0] + 1024, 3072), (pages[2], PAGE_SIZE), (pages[4], 512)],
    ]
    for pieces in cases:
        sqe, page, psdt = built(memory, pieces)
        assert psdt == PSDT_PRP
        assert qword(sqe, SQ_PRP1) == pieces[0][0]
        length = sum(n for _, n in pieces)
        assert walk_prps(memory, qword(sqe, SQ_PRP1), qword(sqe, SQ_PRP2), length) == pieces
        if len(pieces) == 3:
            assert qword(sqe, SQ_PRP2) == page.ctypes.data


def test_buffers_that_do_not_fit_prps_get_an_sgl(memory):
    base = memory.alloc(4 * PAGE_SIZE).ctypes.data
    one, _, psdt = built(memory, [(base + 1, 333)])
    assert psdt == PSDT_SGL_MPTR_BUFFER
    assert qword(one, SQ_PRP2) >> SGL_TYPE_SHIFT == SGL_TYPE_DATA_BLOCK
    assert walk_sgl(memory, qword(one, SQ_PRP1), qword(one, SQ_PRP2), 333) == [(base + 1, 333)]
    pieces = [(base + 8, 100), (base + 5000, 200), (base + 9000, 7)]
    sqe, page, psdt = built(memory, pieces)
    assert psdt == PSDT_SGL_MPTR_BUFFER
    assert qword(sqe, SQ_PRP1) == page.ctypes.data
    assert walk_sgl(memory, qword(sqe, SQ_PRP1), qword(sqe, SQ_PRP2), 307) == pieces


# --- through the controller: hostile commands fail alone, and the backing never sees them ---

@pytest.fixture(scope="module")
def rig():
    return Rig()


def test_hostile_commands_complete_with_their_status_without_reaching_the_backing(rig):
    pair = rig.driver.create_queue_pair(16)
    try:
        end = rig.memory.base + rig.memory.size
        good = rig.memory.alloc(2 * PAGE_SIZE)
        segment = rig.memory.alloc(PAGE_SIZE)
        segment.view(np.uint64)[:2] = (end, descriptor(SGL_TYPE_DATA_BLOCK, 512))
        commands = [
            (command(NVM_READ, 1, blocks=1, prp1=end + PAGE_SIZE), STATUS_DATA_TRANSFER_ERROR),
            (command(NVM_READ, 2, blocks=1, prp1=good.ctypes.data + 1),
             STATUS_PRP_OFFSET_INVALID),
            (command(NVM_WRITE, 3, blocks=16, prp1=good.ctypes.data,
                     prp2=good.ctypes.data + 100), STATUS_PRP_OFFSET_INVALID),
            (command(NVM_WRITE, 4, blocks=24, prp1=good.ctypes.data, prp2=0x10),
             STATUS_DATA_TRANSFER_ERROR),
            (command(NVM_READ, 5, blocks=1, prp1=segment.ctypes.data,
                     prp2=descriptor(SGL_TYPE_LAST_SEGMENT, 16), psdt=1),
             STATUS_DATA_TRANSFER_ERROR),
            (command(NVM_READ, 6, blocks=2, prp1=good.ctypes.data,
                     prp2=descriptor(SGL_TYPE_DATA_BLOCK, 512), psdt=1),
             STATUS_DATA_SGL_LENGTH_INVALID),
        ]
        taken = rig.disk.taken()
        completions = rig.run(pair, np.concatenate([c for c, _ in commands]))
        assert {int(c["cid"]): status_of(c) for c in completions} == {
            int(c["cid"][0]): status for c, status in commands}
        assert rig.disk.taken() == taken
    finally:
        rig.driver.delete_queue_pair(pair)
