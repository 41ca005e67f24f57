"""The modelled controller: I/O commands to the backing bdev and back (NVM Command Set
1.0 §3.2, Base 2.0 §7.1), the statuses of commands it refuses without the backing, the
backing's errors as NVMe statuses, and the admin commands a driver brings it up with."""

import errno

import numpy as np
import pytest
from nvme_helpers import Rig, command, status_of

from fastpath.devices.blk import IO_DISCARD, IO_FLAG_FUA, IO_FLAG_MAY_UNMAP, IO_READ, IO_WRITE
from fastpath.errors import NvmeCommandFailed
from fastpath.spdk_like._nvme_layout import (
    ADMIN_CREATE_IO_CQ,
    ADMIN_CREATE_IO_SQ,
    ADMIN_DELETE_IO_CQ,
    ADMIN_DELETE_IO_SQ,
    CDW0_FUSE_SHIFT,
    CDW11_AD,
    CDW11_PC,
    CDW12_DEAC,
    CDW12_FUA,
    DSM_RANGE,
    NSID_ALL,
    NVM_DATASET_MANAGEMENT,
    NVM_FLUSH,
    NVM_READ,
    NVM_WRITE,
    NVM_WRITE_ZEROES,
    PAGE_SIZE,
    STATUS_CAPACITY_EXCEEDED,
    STATUS_INTERNAL_ERROR,
    STATUS_INVALID_CQ,
    STATUS_INVALID_FIELD,
    STATUS_INVALID_NAMESPACE,
    STATUS_INVALID_OPCODE,
    STATUS_INVALID_QUEUE_DELETION,
    STATUS_INVALID_QUEUE_ID,
    STATUS_INVALID_QUEUE_SIZE,
    STATUS_LBA_OUT_OF_RANGE,
    STATUS_UNRECOVERED_READ_ERROR,
    STATUS_WRITE_FAULT,
    STATUS_WRITE_PROTECTED,
)


@pytest.fixture(scope="module")
def rig():
    return Rig(blocks=4096)


@pytest.fixture
def pair(rig):
    pair = rig.driver.create_queue_pair(32)
    yield pair
    rig.driver.delete_queue_pair(pair)


def one(rig, pair, sqe):
    return rig.run(pair, sqe)[0]


def data_command(rig, opcode, cid, slba, buffer):
    # A read or write of `buffer` (page aligned, whole blocks) at slba, through PRPs.
    pages = -(-len(buffer) // PAGE_SIZE)
    prp2 = 0
    if pages == 2:
        prp2 = buffer.ctypes.data + PAGE_SIZE
    elif pages > 2:
        plist = rig.memory.alloc(PAGE_SIZE).view(np.uint64)
        plist[:pages - 1] = [buffer.ctypes.data + PAGE_SIZE * k for k in range(1, pages)]
        prp2 = plist.ctypes.data
    return command(opcode, cid, slba=slba, blocks=len(buffer) // rig.driver.block_size,
                   prp1=buffer.ctypes.data, prp2=prp2)


@pytest.mark.parametrize("blocks", [1, 8, 9, 64, 256])
def test_writes_and_reads_round_trip_through_the_backing(rig, pair, blocks):
    source = rig.memory.alloc(blocks * 512)
    source[:] = np.random.default_rng(blocks).integers(0, 256, len(source), dtype=np.uint8)
    assert status_of(one(rig, pair, data_command(rig, NVM_WRITE, 1, 100, source))) == 0
    assert (rig.disk.data[100 * 512:(100 + blocks) * 512] == source).all()
    target = rig.memory.alloc(blocks * 512)
    completion = one(rig, pair, data_command(rig, NVM_READ, 2, 100, target))
    assert status_of(completion) == 0
    assert (target == source).all()
    assert completion["sq_id"] == pair.qid and completion["dw0"] == 0


def test_completions_out_of_order_reach_their_commands(rig, pair):
    rig.disk.reverse = True
    try:
        buffers = [rig.memory.alloc(512) for _ in range(20)]
        for k, buffer in enumerate(buffers):
            buffer[:] = k
        commands = np.concatenate([data_command(rig, NVM_WRITE, 100 + k, 2000 + k, buffer)
                                   for k, buffer in enumerate(buffers)])
        completions = rig.run(pair, commands)
        assert sorted(completions["cid"].tolist()) == list(range(100, 120))
        assert completions["cid"].tolist() != list(range(100, 120))
        assert (rig.disk.data[2000 * 512:2020 * 512].reshape(20, 512)
                == np.arange(20)[:, None]).all()
    finally:
        rig.disk.reverse = False


def test_a_shallow_backing_takes_requests_as_it_frees_them():
    rig = Rig(blocks=256, depth=2)
    pair = rig.driver.create_queue_pair(64)
    buffers = [rig.memory.alloc(512) for _ in range(40)]
    commands = np.concatenate([data_command(rig, NVM_WRITE, k, k, buffer)
                               for k, buffer in enumerate(buffers)])
    completions = rig.run(pair, commands)
    assert (completions["status"] >> 1 == 0).all() and len(completions) == 40


def test_flush_write_zeroes_and_deallocate(rig, pair):
    disk = rig.disk.data
    disk[3000 * 512:3100 * 512] = 0xAB
    assert status_of(one(rig, pair, command(NVM_FLUSH, 1, nsid=NSID_ALL))) == 0
    assert status_of(one(rig, pair, command(NVM_WRITE_ZEROES, 2, slba=3000, blocks=10,
                                            cdw12=9 | CDW12_DEAC))) == 0
    assert (disk[3000 * 512:3010 * 512] == 0).all() and disk[3010 * 512] == 0xAB
    ranges = rig.memory.alloc(3 * DSM_RANGE.itemsize).view(DSM_RANGE)
    ranges[:] = [(0, 5, 3020), (0, 0, 999_999), (0, 2, 3050)]
    dsm = command(NVM_DATASET_MANAGEMENT, 3, prp1=ranges.ctypes.data, cdw10=2, cdw11=0)
    # Without Deallocate the ranges are hints: nothing changes.
    assert status_of(one(rig, pair, dsm)) == 0
    assert (disk[3020 * 512:3025 * 512] == 0xAB).all()
    taken = rig.disk.taken()
    dsm["cdw11"] = CDW11_AD
    assert status_of(one(rig, pair, dsm)) == 0
    # One discard per non-empty range.
    assert rig.disk.taken() == taken + 2
    assert (disk[3020 * 512:3025 * 512] == 0).all() and (disk[3050 * 512:3052 * 512] == 0).all()
    assert disk[3025 * 512] == 0xAB and disk[3052 * 512] == 0xAB
    # A range out of the namespace fails the whole command before anything is deallocated.
    disk[3020 * 512:3025 * 512] = 0xAB
    ranges[1] = (0, 1, 4096)
    assert status_of(one(rig, pair, dsm)) == STATUS_LBA_OUT_OF_RANGE
    assert (disk[3020 * 512:3025 * 512] == 0xAB).all()


def test_force_unit_access_and_deallocate_reach_the_backing_as_request_flags(rig, pair):
    buffer = rig.memory.alloc(PAGE_SIZE)
    cases = [
        (command(NVM_WRITE, 1, prp1=buffer.ctypes.data, cdw12=CDW12_FUA), IO_FLAG_FUA),
        (command(NVM_WRITE, 2, prp1=buffer.ctypes.data), 0),
        (command(NVM_READ, 3, prp1=buffer.ctypes.data, cdw12=CDW12_FUA), 0),
        (command(NVM_WRITE_ZEROES, 4, cdw12=CDW12_FUA | CDW12_DEAC),
         IO_FLAG_FUA | IO_FLAG_MAY_UNMAP),
    ]
    for sqe, flags in cases:
        assert status_of(one(rig, pair, sqe)) == 0
        assert rig.disk.last_flags == flags


def test_commands_the_controller_refuses_never_reach_the_backing(rig, pair):
    buffer = rig.memory.alloc(PAGE_SIZE)
    address = buffer.ctypes.data
    fused = command(NVM_READ, 5, prp1=address)
    fused["flags"] = 1 << (CDW0_FUSE_SHIFT - 8)
    cases = [
        (command(0x05, 1, prp1=address), STATUS_INVALID_OPCODE),        # Compare
        (command(0x7F, 2), STATUS_INVALID_OPCODE),
        (command(NVM_READ, 3, nsid=2, prp1=address), STATUS_INVALID_NAMESPACE),
        (command(NVM_FLUSH, 4, nsid=0), STATUS_INVALID_NAMESPACE),
        (fused, STATUS_INVALID_FIELD),
        (command(NVM_READ, 6, prp1=address, psdt=3), STATUS_INVALID_FIELD),
        (command(NVM_READ, 7, slba=4096, prp1=address), STATUS_LBA_OUT_OF_RANGE),
        (command(NVM_WRITE, 8, slba=4095, blocks=2, prp1=address), STATUS_LBA_OUT_OF_RANGE),
        (command(NVM_READ, 9, slba=(1 << 64) - 1, prp1=address), STATUS_LBA_OUT_OF_RANGE),
        (command(NVM_WRITE_ZEROES, 10, slba=4000, blocks=97), STATUS_LBA_OUT_OF_RANGE),
        # 257 blocks of 512 bytes: more than the 128 KiB MDTS allows.
        (command(NVM_READ, 11, blocks=257, prp1=address), STATUS_INVALID_FIELD),
    ]
    taken = rig.disk.taken()
    completions = rig.run(pair, np.concatenate([sqe for sqe, _ in cases]))
    assert {int(c["cid"]): status_of(c) for c in completions} == {
        int(sqe["cid"][0]): status for sqe, status in cases}
    assert rig.disk.taken() == taken
    assert rig.controller.statistics.stray == 0


@pytest.mark.parametrize("operation, opcode, error, expected", [
    (IO_READ, NVM_READ, errno.EIO, STATUS_UNRECOVERED_READ_ERROR),
    (IO_WRITE, NVM_WRITE, errno.EIO, STATUS_WRITE_FAULT),
    (IO_WRITE, NVM_WRITE, errno.EROFS, STATUS_WRITE_PROTECTED),
    (IO_WRITE, NVM_WRITE, errno.ENOSPC, STATUS_CAPACITY_EXCEEDED),
    (IO_DISCARD, NVM_DATASET_MANAGEMENT, errno.EIO, STATUS_INTERNAL_ERROR),
    (IO_READ, NVM_READ, errno.EINVAL, STATUS_INVALID_FIELD),
    (IO_READ, NVM_READ, errno.EOPNOTSUPP, STATUS_INVALID_OPCODE),
    (IO_READ, NVM_READ, errno.EBADF, STATUS_INTERNAL_ERROR),
])
def test_errors_of_the_backing_become_nvme_statuses(rig, pair, operation, opcode, error,
                                                    expected):
    buffer = rig.memory.alloc(PAGE_SIZE)
    if opcode == NVM_DATASET_MANAGEMENT:
        buffer.view(DSM_RANGE)[:2] = [(0, 1, 10), (0, 1, 20)]
        sqe = command(opcode, 1, prp1=buffer.ctypes.data, cdw10=1, cdw11=CDW11_AD)
    else:
        sqe = command(opcode, 1, slba=10, prp1=buffer.ctypes.data)
    rig.disk.inject_errors({operation}, -error, count=1)
    assert status_of(one(rig, pair, sqe)) == expected
    assert status_of(one(rig, pair, sqe)) == 0


# --- admin ---

@pytest.mark.parametrize("block_size, blocks", [(512, 4096), (4096, 100)])
def test_identify_tells_the_host_the_block_size_and_capacity(block_size, blocks):
    rig = Rig(blocks=blocks, block_size=block_size, io_queues=3, slots=64)
    assert (rig.driver.block_size, rig.driver.num_blocks) == (block_size, blocks)
    assert rig.driver.io_queues == 3
    assert rig.driver.max_transfer == 128 * 1024
    identify = rig.driver.identify_controller()
    assert identify["nn"] == 1 and identify["maxcmd"] == 64
    assert identify["sn"].rstrip() == b"FASTPATH0001"
    with pytest.raises(NvmeCommandFailed) as failed:
        rig.driver.identify_namespace(2)
    assert failed.value.status == STATUS_INVALID_NAMESPACE


def test_admin_commands_the_controller_refuses(rig):
    driver = rig.driver
    queue = rig.memory.alloc(PAGE_SIZE)
    address = queue.ctypes.data
    cases = [
        (0x80, {}, STATUS_INVALID_OPCODE),                        # Format NVM
        (ADMIN_CREATE_IO_CQ, {"cdw10": 0 | 3 << 16}, STATUS_INVALID_QUEUE_ID),
        (ADMIN_CREATE_IO_CQ, {"cdw10": 99 | 3 << 16}, STATUS_INVALID_QUEUE_ID),
        (ADMIN_CREATE_IO_CQ, {"cdw10": 1 | 0 << 16}, STATUS_INVALID_QUEUE_SIZE),
        (ADMIN_CREATE_IO_CQ, {"cdw10": 1 | 3 << 16, "cdw11": 0}, STATUS_INVALID_FIELD),
        (ADMIN_CREATE_IO_SQ, {"cdw10": 1 | 3 << 16, "cdw11": 2 << 16 | CDW11_PC},
         STATUS_INVALID_CQ),
        (ADMIN_DELETE_IO_SQ, {"cdw10": 3}, STATUS_INVALID_QUEUE_ID),
        (ADMIN_DELETE_IO_CQ, {"cdw10": 0}, STATUS_INVALID_QUEUE_ID),
    ]
    for opcode, fields, expected in cases:
        fields.setdefault("cdw11", CDW11_PC)
        completion = driver.admin(opcode, prp1=address, check=False, **fields)
        assert status_of(completion) == expected, (opcode, fields)
    pair = driver.create_queue_pair(8)
    with pytest.raises(NvmeCommandFailed) as failed:
        driver.admin(ADMIN_DELETE_IO_CQ, cdw10=pair.qid)
    assert failed.value.status == STATUS_INVALID_QUEUE_DELETION
    driver.delete_queue_pair(pair)


def test_deleting_a_submission_queue_waits_for_its_commands(rig):
    pair = rig.driver.create_queue_pair(8)
    buffer = rig.memory.alloc(PAGE_SIZE)
    rig.disk.hold = True
    try:
        assert pair.submit(data_command(rig, NVM_READ, 7, 0, buffer)) == 1
        rig.controller.poll()
        # The deletion waits while the backing holds the read...
        assert rig.driver.admin_queue.submit(command(ADMIN_DELETE_IO_SQ, 99, nsid=0,
                                                     cdw10=pair.qid)) == 1
        for _ in range(5):
            rig.controller.poll()
        assert len(rig.driver.admin_queue.reap()) == 0
        rig.disk.hold = False
        # ...and completes once the read did, after it.
        for _ in range(5):
            rig.controller.poll()
        completion = rig.driver.admin_queue.reap()
        assert completion["cid"].tolist() == [99] and status_of(completion[0]) == 0
        assert pair.reap()["cid"].tolist() == [7]
    finally:
        rig.disk.hold = False
    rig.driver.admin(ADMIN_DELETE_IO_CQ, cdw10=pair.qid)
    del rig.driver.queue_pairs[pair.qid]
    pair.release()
