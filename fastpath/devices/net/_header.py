"""The virtio-net header (virtio 1.2 §5.1.6, struct virtio_net_hdr, VERSION_1 so 12 bytes)
before every frame both ways: the Python side's one home for it, the twin of the core's
`fp_net_hdr` (fastpath/_core/net.pxd) and held to it here."""

import numpy as np

from fastpath._core import net as _net

NET_HDR_DTYPE = np.dtype([
    ("flags", "u1"),
    ("gso_type", "u1"),
    ("hdr_len", "<u2"),
    ("gso_size", "<u2"),
    ("csum_start", "<u2"),
    ("csum_offset", "<u2"),
    ("num_buffers", "<u2"),   # buffers a mergeable receive frame spans
])
NET_HDR_SIZE = NET_HDR_DTYPE.itemsize
NUM_BUFFERS_OFFSET = NET_HDR_DTYPE.fields["num_buffers"][1]
assert NET_HDR_SIZE == _net.HDR_SIZE and NUM_BUFFERS_OFFSET == _net.NUM_BUFFERS_OFFSET
