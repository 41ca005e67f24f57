"""The records that cross between Python, the compiled core and Numba, as numpy dtypes.

Each mirrors a packed struct in fastpath/_core/chain.pxd, which is the layout's one definition;
the sizes are checked against the core at import.
"""

import numpy as np

from fastpath._core import chain as _chain

# A piece of a buffer: host address (device side) or guest-physical address (driver side).
SEGMENT_DTYPE = np.dtype([("addr", "<u8"), ("len", "<u4"), ("flags", "<u2"), ("reserved", "<u2")])

# A popped buffer: segments[first_seg : first_seg + nseg], readable ones first.
CHAIN_DTYPE = np.dtype(
    [
        ("id", "<u4"),
        ("first_seg", "<u4"),
        ("nseg", "<u2"),
        ("nreadable", "<u2"),
        ("ndesc", "<u2"),
        ("error", "<i2"),
        ("readable_len", "<u4"),
        ("writable_len", "<u4"),
        ("written", "<u4"),
        ("reserved", "<u4"),
    ]
)

# A buffer a driver offers; `indirect_table` (guest-physical, 0 for none) holds its descriptors.
DRIVER_CHAIN_DTYPE = np.dtype(
    [("indirect_table", "<u8"), ("first_seg", "<u4"), ("nseg", "<u2"), ("id", "<u2")]
)

# A completion: buffer id and bytes the device wrote (virtio 1.2 §2.7.8).
USED_ELEM_DTYPE = np.dtype([("id", "<u4"), ("len", "<u4")])

SEG_WRITE = _chain.FP_SEG_WRITE



def _check_layout(dtype: np.dtype, record: str, size: int) -> None:
    # Field by field against the compiler's layout: a swapped or resized field fails here.
    assert dtype.itemsize == size, (record, dtype.itemsize, size)
    for field, offset in _chain.record_offsets()[record].items():
        assert dtype.fields[field][1] == offset, (record, field)


_check_layout(SEGMENT_DTYPE, "segment", _chain.SEGMENT_SIZE)
_check_layout(CHAIN_DTYPE, "chain", _chain.CHAIN_SIZE)
_check_layout(DRIVER_CHAIN_DTYPE, "driver_chain", _chain.DRIVER_CHAIN_SIZE)
_check_layout(USED_ELEM_DTYPE, "used_elem", _chain.USED_ELEM_SIZE)


def as_bytes(records: np.ndarray) -> np.ndarray:
    """The raw bytes of a contiguous record array, as the core's wrappers take them."""
    if not records.flags.c_contiguous:
        raise ValueError("record arrays passed to the core must be contiguous")
    return records.view(np.uint8).reshape(-1)
