"""virtio-blk on the wire (virtio 1.2 §5.2): the one home of its layouts and numbers.

A request is a device-readable header (`OUTHDR_DTYPE`), then its data (device-readable for
OUT, DISCARD and WRITE_ZEROES, device-writable for IN and GET_ID), then one device-writable
status byte (§5.2.6). With VERSION_1 the driver may frame these over descriptors as it likes
(§2.6.4): the header may share a descriptor with data, and the status byte is the last byte
of the device-writable part, wherever its descriptor starts. All fields are little-endian.
"""

import numpy as np

SECTOR_SIZE = 512   # §5.2.6: `sector` and every *_sectors field count 512-byte units

# §5.2.3 feature bits (numbers).
VIRTIO_BLK_F_SIZE_MAX = 1        # size_max: the largest single data segment
VIRTIO_BLK_F_SEG_MAX = 2         # seg_max: the most data segments in a request
VIRTIO_BLK_F_GEOMETRY = 4        # geometry: cylinders, heads, sectors
VIRTIO_BLK_F_RO = 5              # the device is read-only
VIRTIO_BLK_F_BLK_SIZE = 6        # blk_size: the logical block size
VIRTIO_BLK_F_FLUSH = 9           # VIRTIO_BLK_T_FLUSH is served
VIRTIO_BLK_F_TOPOLOGY = 10       # topology: physical block and I/O size hints
VIRTIO_BLK_F_CONFIG_WCE = 11     # writeback: the driver may switch the cache mode
VIRTIO_BLK_F_MQ = 12             # num_queues request queues
VIRTIO_BLK_F_DISCARD = 13        # VIRTIO_BLK_T_DISCARD, limits in max_discard_*
VIRTIO_BLK_F_WRITE_ZEROES = 14   # VIRTIO_BLK_T_WRITE_ZEROES, limits in max_write_zeroes_*

# §5.2.6 request types.
VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13

# §5.2.6 status byte values.
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2

# §5.2.6: struct virtio_blk_req up to its data (virtio_blk_outhdr in Linux). `ioprio` is
# called `reserved` since virtio 1.0; the device ignores it.
OUTHDR_DTYPE = np.dtype([("type", "<u4"), ("ioprio", "<u4"), ("sector", "<u8")])
OUTHDR_SIZE = OUTHDR_DTYPE.itemsize
assert OUTHDR_SIZE == 16

# §5.2.6: one range of a DISCARD or WRITE_ZEROES request (struct
# virtio_blk_discard_write_zeroes); `flags` bit 0 is unmap, bits 1-31 are reserved.
DISCARD_WRITE_ZEROES_DTYPE = np.dtype([("sector", "<u8"), ("num_sectors", "<u4"),
                                       ("flags", "<u4")])
DISCARD_WRITE_ZEROES_SIZE = DISCARD_WRITE_ZEROES_DTYPE.itemsize
assert DISCARD_WRITE_ZEROES_SIZE == 16
VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1

# §5.2.6: GET_ID's data, the device ID string: NUL-padded ASCII, no NUL when 20 bytes long.
VIRTIO_BLK_ID_BYTES = 20

# §5.2.4: struct virtio_blk_config through write_zeroes_may_unmap and its padding. The fields
# after it (secure erase, zoned) belong to features the device never offers; the engine reads
# bytes past the end as zeros.
CONFIG_DTYPE = np.dtype([
    ("capacity", "<u8"),                  # in 512-byte sectors, always present
    ("size_max", "<u4"),
    ("seg_max", "<u4"),
    ("cylinders", "<u2"),                 # struct virtio_blk_geometry
    ("heads", "u1"),
    ("sectors", "u1"),
    ("blk_size", "<u4"),
    ("physical_block_exp", "u1"),         # struct virtio_blk_topology: log2(physical/logical)
    ("alignment_offset", "u1"),           #   the first aligned logical block
    ("min_io_size", "<u2"),               #   suggested minimum I/O, in logical blocks
    ("opt_io_size", "<u4"),               #   optimal I/O, in logical blocks
    ("writeback", "u1"),                  # 1 writeback cache, 0 writethrough
    ("unused0", "u1"),
    ("num_queues", "<u2"),
    ("max_discard_sectors", "<u4"),
    ("max_discard_seg", "<u4"),
    ("discard_sector_alignment", "<u4"),
    ("max_write_zeroes_sectors", "<u4"),
    ("max_write_zeroes_seg", "<u4"),
    ("write_zeroes_may_unmap", "u1"),
    ("unused1", "u1", (3,)),
])
CONFIG_SIZE = CONFIG_DTYPE.itemsize
assert CONFIG_SIZE == 60
assert CONFIG_DTYPE.fields["writeback"][1] == 32 and CONFIG_DTYPE.fields["num_queues"][1] == 34
assert CONFIG_DTYPE.fields["write_zeroes_may_unmap"][1] == 56
WRITEBACK_OFFSET = CONFIG_DTYPE.fields["writeback"][1]
