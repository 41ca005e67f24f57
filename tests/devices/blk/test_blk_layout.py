"""The wire layouts of virtio-blk (virtio 1.2 §5.2) against the spec's own numbers."""

import struct

import numpy as np
import pytest

from fastpath.devices import blk

# §5.2.4 struct virtio_blk_config: every field at the offset the spec's layout gives it.
CONFIG_OFFSETS = {
    "capacity": 0, "size_max": 8, "seg_max": 12, "cylinders": 16, "heads": 18, "sectors": 19,
    "blk_size": 20, "physical_block_exp": 24, "alignment_offset": 25, "min_io_size": 26,
    "opt_io_size": 28, "writeback": 32, "unused0": 33, "num_queues": 34,
    "max_discard_sectors": 36, "max_discard_seg": 40, "discard_sector_alignment": 44,
    "max_write_zeroes_sectors": 48, "max_write_zeroes_seg": 52, "write_zeroes_may_unmap": 56,
    "unused1": 57,
}


def test_config_fields_sit_at_their_spec_offsets():
    assert {name: blk.CONFIG_DTYPE.fields[name][1] for name in CONFIG_OFFSETS} == CONFIG_OFFSETS
    assert blk.CONFIG_SIZE == 60 and blk.WRITEBACK_OFFSET == 32


def test_request_header_and_range_are_16_bytes_little_endian():
    header = struct.pack("<IIQ", 1, 7, 0x1122334455667788)
    record = np.frombuffer(header, dtype=blk.OUTHDR_DTYPE)[0]
    assert (record["type"], record["ioprio"], record["sector"]) == (1, 7, 0x1122334455667788)
    segment = struct.pack("<QII", 99, 8, blk.VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)
    record = np.frombuffer(segment, dtype=blk.DISCARD_WRITE_ZEROES_DTYPE)[0]
    assert (record["sector"], record["num_sectors"], record["flags"]) == (99, 8, 1)
    assert blk.OUTHDR_SIZE == blk.DISCARD_WRITE_ZEROES_SIZE == 16
    assert blk.VIRTIO_BLK_ID_BYTES == 20 and blk.SECTOR_SIZE == 512


def test_numbers_are_the_specs():
    # §5.2.3 feature bits, §5.2.6 request types and status values.
    assert [blk.VIRTIO_BLK_F_SIZE_MAX, blk.VIRTIO_BLK_F_SEG_MAX, blk.VIRTIO_BLK_F_GEOMETRY,
            blk.VIRTIO_BLK_F_RO, blk.VIRTIO_BLK_F_BLK_SIZE, blk.VIRTIO_BLK_F_FLUSH,
            blk.VIRTIO_BLK_F_TOPOLOGY, blk.VIRTIO_BLK_F_CONFIG_WCE, blk.VIRTIO_BLK_F_MQ,
            blk.VIRTIO_BLK_F_DISCARD, blk.VIRTIO_BLK_F_WRITE_ZEROES] == [
                1, 2, 4, 5, 6, 9, 10, 11, 12, 13, 14]
    assert [blk.VIRTIO_BLK_T_IN, blk.VIRTIO_BLK_T_OUT, blk.VIRTIO_BLK_T_FLUSH,
            blk.VIRTIO_BLK_T_GET_ID, blk.VIRTIO_BLK_T_DISCARD,
            blk.VIRTIO_BLK_T_WRITE_ZEROES] == [0, 1, 4, 8, 11, 13]
    assert [blk.VIRTIO_BLK_S_OK, blk.VIRTIO_BLK_S_IOERR, blk.VIRTIO_BLK_S_UNSUPP] == [0, 1, 2]


def test_config_space_describes_the_disk():
    disk = blk.BlkDisk(8 << 20, block_size=4096, seg_max=30, size_max=65536,
                       max_discard_sectors=2048, max_write_zeroes_sectors=4096,
                       write_zeroes_may_unmap=False)
    config = blk.blk_config(disk, num_queues=4, writeback=1)
    fields = struct.unpack_from("<QIIHBBIBBHIBBHIIIIIB", config)
    assert fields == (16384, 65536, 30, 0, 0, 0, 4096, 0, 0, 1, 0, 1, 0, 4, 2048, 1, 8, 4096,
                      1, 0)
    assert config[57:60] == bytes(3) and len(config) == blk.CONFIG_SIZE


@pytest.mark.parametrize("bad", [
    {"capacity": 1000},                      # not whole sectors
    {"capacity": 4096 + 512, "block_size": 4096},
    {"capacity": 4096, "block_size": 1024},
    {"capacity": 4096, "seg_max": 0},
    {"capacity": 4096, "size_max": 256},
    {"capacity": 4096, "max_discard_sectors": 1 << 32},
    {"capacity": 4096, "serial": b"x" * 21},
    {"capacity": 4096, "serial": "é".encode()},
])
def test_disk_refuses_what_the_config_space_cannot_say(bad):
    with pytest.raises(ValueError):
        blk.BlkDisk(**bad)
