"""The driver side of one virtio-blk request queue (virtio 1.2 §5.2.6), compiled: a burst of
requests becomes descriptor chains on the ring in one call (`submit_requests`), and a burst of
used chains becomes completions in another (`reap_completions`), no Python per request.

A request is a `DRIVER_REQUEST` record: a tag of the caller's, a type (VIRTIO_BLK_T_*), its
first 512-byte sector, and its data buffer, a guest-physical address in the front-end's memory
and a length in bytes. IN and OUT move `length` bytes at `sector`; GET_ID reads the 20-byte ID
string into the buffer; FLUSH has no data; DISCARD and WRITE_ZEROES cover `length` bytes from
`sector` (their range record is the driver's to write, the buffer is not used), `flags` taking
VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP for a write-zeroes that may deallocate. A completion is a
`DRIVER_COMPLETION` record: the tag, the status byte the device wrote, and the length the
device reported in its used element.

Each request in flight holds a slot, with a control block in guest memory (`SLOT_DTYPE`: the
request header, a discard/write-zeroes range and the status byte) and, when INDIRECT_DESC was
negotiated, an indirect descriptor table. The chain is framed as Linux's virtio_blk frames it
(header, data, status each in descriptors of their own), which every back-end takes; with an
indirect table a request takes one ring entry whatever its pieces, so a ring of N entries holds
N requests.

The kernels check every request against what the device said (capacity, logical block size,
the features that allow FLUSH, DISCARD and WRITE_ZEROES, their limits, size_max and seg_max)
and that its buffer lies in the data area, before anything reaches the ring: `submit_requests`
refuses a burst with a request it must not send, whole, and leaves the reason in the state's
Q_REFUSED column, which `BlkDriverQueue.submit` turns into a ValueError.

One thread drives a queue, both calls: they share the queue's scratch arrays.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastpath._numba import NJIT, carray, u32_pointer, u64_pointer, void_pointer
from fastpath.devices.blk._layout import (
    CONFIG_DTYPE,
    CONFIG_SIZE,
    DISCARD_WRITE_ZEROES_DTYPE,
    DISCARD_WRITE_ZEROES_SIZE,
    OUTHDR_DTYPE,
    OUTHDR_SIZE,
    SECTOR_SIZE,
    VIRTIO_BLK_F_BLK_SIZE,
    VIRTIO_BLK_F_CONFIG_WCE,
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
)
from fastpath.hv import GuestMemory
from fastpath.vring import (
    DRIVER_CHAIN_DTYPE,
    SEG_WRITE,
    SEGMENT_DTYPE,
    USED_ELEM_DTYPE,
    DriverQueue,
)
from fastpath.vring.kernels import add_burst, collect_burst, driver_should_kick, eventfd_signal

# A request as the caller hands it in (see the module's docstring).
DRIVER_REQUEST = np.dtype([("tag", "<u8"), ("sector", "<u8"), ("data", "<u8"),
                           ("length", "<u4"), ("type", "<u4"), ("flags", "<u4"),
                           ("reserved", "<u4")])

# A request the device finished: its tag, status byte (VIRTIO_BLK_S_*) and used length.
DRIVER_COMPLETION = np.dtype([("tag", "<u8"), ("written", "<u4"), ("status", "u1"),
                              ("reserved", "u1", (3,))])

# What a slot's status byte holds until the device writes it: no VIRTIO_BLK_S_* value, so a
# device that uses a chain without writing its status shows as such.
STATUS_NOT_WRITTEN = 0xFF

# A slot's control block in guest memory: the request header (§5.2.6's virtio_blk_outhdr),
# then the range of a DISCARD or WRITE_ZEROES, then the status byte; the fields are the
# layouts' own (fastpath.devices.blk._layout), the range's prefixed with "range_".
_RANGE_AT = OUTHDR_SIZE
_STATUS_AT = _RANGE_AT + DISCARD_WRITE_ZEROES_SIZE
SLOT_BYTES = 64
SLOT_DTYPE = np.dtype({
    "names": [*OUTHDR_DTYPE.names, *(f"range_{n}" for n in DISCARD_WRITE_ZEROES_DTYPE.names),
              "status"],
    "formats": [OUTHDR_DTYPE.fields[n][0] for n in OUTHDR_DTYPE.names]
    + [DISCARD_WRITE_ZEROES_DTYPE.fields[n][0] for n in DISCARD_WRITE_ZEROES_DTYPE.names]
    + ["u1"],
    "offsets": [OUTHDR_DTYPE.fields[n][1] for n in OUTHDR_DTYPE.names]
    + [_RANGE_AT + DISCARD_WRITE_ZEROES_DTYPE.fields[n][1]
       for n in DISCARD_WRITE_ZEROES_DTYPE.names] + [_STATUS_AT],
    "itemsize": SLOT_BYTES,
})

# The most data descriptors one request takes (a buffer is cut at size_max); a request that
# would need more is refused. Linux's virtio_blk allows seg_max, 126 at QEMU's devices.
MAX_DATA_PIECES = 126
SLOT_SEGMENTS = MAX_DATA_PIECES + 2     # header (or header and range) ... status
# An indirect table holds a slot's descriptors, 16 bytes each (§2.7.5.3, §2.8.7).
INDIRECT_TABLE_BYTES = 16 * SLOT_SEGMENTS

# Why `submit_requests` refused a burst (state[Q_REFUSED]).
REFUSED_TYPE = 1          # not a request type this driver sends
REFUSED_UNSUPPORTED = 2   # FLUSH, DISCARD or WRITE_ZEROES without its feature negotiated
REFUSED_ALIGNMENT = 3     # sector or length not whole logical blocks, or no length
REFUSED_RANGE = 4         # past the end of the disk
REFUSED_BUFFER = 5        # data outside the data area, GET_ID's not 20 bytes, FLUSH with data
REFUSED_TOO_LARGE = 6     # more pieces than seg_max allows, or past the discard/zeroes limits
REFUSED_FLAGS = 7         # a flag on anything but WRITE_ZEROES, or an unknown flag

REFUSALS = {
    REFUSED_TYPE: "is of no type a virtio-blk driver sends (VIRTIO_BLK_T_IN, OUT, FLUSH, "
                  "GET_ID, DISCARD, WRITE_ZEROES)",
    REFUSED_UNSUPPORTED: "needs a feature the device did not offer (VIRTIO_BLK_F_FLUSH, "
                         "DISCARD or WRITE_ZEROES)",
    REFUSED_ALIGNMENT: "is not whole logical blocks (its sector or its length), or empty",
    REFUSED_RANGE: "ends past the end of the disk",
    REFUSED_BUFFER: "has a buffer outside the data area, GET_ID's not of 20 bytes, or a "
                    "FLUSH with data",
    REFUSED_TOO_LARGE: "is larger than the device takes in one request (seg_max * size_max, "
                       "max_discard_sectors, max_write_zeroes_sectors)",
    REFUSED_FLAGS: "has flags other than WRITE_ZEROES' unmap",
}

# --- state: one uint64 array per queue ---
Q_DRIVER = 0          # the DriverQueue's handle
Q_PACKED = 1          # 1 for a packed ring
Q_KICK = 2            # the kick eventfd
Q_SIZE = 3            # ring entries, and slots
Q_CHAINS = 4          # address of DRIVER_CHAIN_DTYPE[size]: the chains of the next add
Q_SEGMENTS = 5        # address of SEGMENT_DTYPE[size * SLOT_SEGMENTS]: slot s's from s * that
Q_USED = 6            # address of USED_ELEM_DTYPE[size]: the used elements of a reap
Q_SLOT_OF_ID = 7      # address of uint32[size]: the slot of each buffer id in flight
Q_TAGS = 8            # address of uint64[size]: the tag of each slot's request
Q_FREE = 9            # address of uint32[size]: a stack of the free slots
Q_FREE_COUNT = 10
Q_BLOCKS_HOST = 11    # host address of slot 0's control block (SLOT_DTYPE)
Q_BLOCKS_GPA = 12     # its guest-physical address
Q_TABLES_GPA = 13     # guest-physical address of slot 0's indirect table; 0: no indirect
Q_DATA_START = 14     # the guest-physical range request buffers must lie in
Q_DATA_END = 15
Q_CAPACITY = 16       # sectors
Q_BLOCK_SECTORS = 17  # the logical block size, in sectors
Q_SIZE_MAX = 18       # the largest data descriptor, bytes (0: any)
Q_MAX_PIECES = 19     # the most data descriptors in a request
Q_OPERATIONS = 20     # bit VIRTIO_BLK_T_x set: the device takes type x
Q_MAX_DISCARD = 21    # sectors in one DISCARD (0: any that fits the range record)
Q_MAX_WRITE_ZEROES = 22
Q_REFUSED = 23        # REFUSED_*: why the last burst was refused (0: it was not)
Q_REFUSED_AT = 24     # the index of the request refused in it
Q_COLUMNS = 25

_U32_MAX = 0xFFFFFFFF
# Numba makes a float of uint64 mixed with a plain int: the kernels' constants are uint64.
_SECTOR = np.uint64(SECTOR_SIZE)
_ZERO = np.uint64(0)
_ONE = np.uint64(1)


@njit(**NJIT)
def _refusal(state, request):
    """0 when the driver may send `request`, else the REFUSED_* reason."""
    kind = np.uint64(request["type"])
    if kind >= np.uint64(64) or not state[Q_OPERATIONS] >> kind & _ONE:
        if (kind == VIRTIO_BLK_T_FLUSH or kind == VIRTIO_BLK_T_DISCARD
                or kind == VIRTIO_BLK_T_WRITE_ZEROES):
            return REFUSED_UNSUPPORTED
        return REFUSED_TYPE
    flags = np.uint64(request["flags"])
    if flags and not (kind == VIRTIO_BLK_T_WRITE_ZEROES
                      and flags == VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP):
        return REFUSED_FLAGS
    length = np.uint64(request["length"])
    if kind == VIRTIO_BLK_T_FLUSH:
        return REFUSED_BUFFER if length else 0
    data = np.uint64(request["data"])
    inside = (state[Q_DATA_START] <= data <= state[Q_DATA_END]
              and length <= state[Q_DATA_END] - data)
    if kind == VIRTIO_BLK_T_GET_ID:
        return 0 if inside and length == VIRTIO_BLK_ID_BYTES else REFUSED_BUFFER
    sector = np.uint64(request["sector"])
    block = state[Q_BLOCK_SECTORS]
    if length == _ZERO or length % (block * _SECTOR) or sector % block:
        return REFUSED_ALIGNMENT
    sectors = length // _SECTOR
    if sector > state[Q_CAPACITY] or sectors > state[Q_CAPACITY] - sector:
        return REFUSED_RANGE
    if kind == VIRTIO_BLK_T_DISCARD:
        return REFUSED_TOO_LARGE if sectors > state[Q_MAX_DISCARD] else 0
    if kind == VIRTIO_BLK_T_WRITE_ZEROES:
        return REFUSED_TOO_LARGE if sectors > state[Q_MAX_WRITE_ZEROES] else 0
    if not inside:
        return REFUSED_BUFFER
    if _pieces(state, length) > state[Q_MAX_PIECES]:
        return REFUSED_TOO_LARGE
    return 0


@njit(**NJIT)
def _pieces(state, length):
    size_max = state[Q_SIZE_MAX]
    if size_max == _ZERO:
        return _ONE
    return (length + size_max - _ONE) // size_max


@njit(**NJIT)
def _frame(state, request, slot, blocks, segments, chains, k):
    """Write `request`'s header (and range) into `slot`'s control block and its chain's
    segments, as chains[k]."""
    kind = np.uint32(request["type"])
    block = blocks[slot]
    block["type"] = kind
    block["ioprio"] = 0
    # §5.2.6: sector is reserved (zero) for requests without a position.
    positioned = kind != VIRTIO_BLK_T_FLUSH and kind != VIRTIO_BLK_T_GET_ID
    block["sector"] = request["sector"] if positioned else _ZERO
    block["status"] = STATUS_NOT_WRITTEN
    at = state[Q_BLOCKS_GPA] + np.uint64(slot) * np.uint64(SLOT_BYTES)
    first = np.uint64(slot) * np.uint64(SLOT_SEGMENTS)
    nseg = np.uint64(0)
    segments[first]["addr"] = at
    segments[first]["len"] = OUTHDR_SIZE
    segments[first]["flags"] = 0
    nseg += np.uint64(1)
    if kind == VIRTIO_BLK_T_DISCARD or kind == VIRTIO_BLK_T_WRITE_ZEROES:
        block["range_sector"] = request["sector"]
        block["range_num_sectors"] = np.uint32(np.uint64(request["length"]) // _SECTOR)
        block["range_flags"] = np.uint32(request["flags"])
        segments[first + nseg]["addr"] = at + np.uint64(_RANGE_AT)
        segments[first + nseg]["len"] = DISCARD_WRITE_ZEROES_SIZE
        segments[first + nseg]["flags"] = 0
        nseg += np.uint64(1)
    elif kind != VIRTIO_BLK_T_FLUSH:
        # IN and GET_ID: the device writes the data; OUT: it reads it.
        flags = 0 if kind == VIRTIO_BLK_T_OUT else SEG_WRITE
        data = np.uint64(request["data"])
        left = np.uint64(request["length"])
        size_max = state[Q_SIZE_MAX]
        while left:
            piece = left if size_max == _ZERO or left < size_max else size_max
            segments[first + nseg]["addr"] = data
            segments[first + nseg]["len"] = np.uint32(piece)
            segments[first + nseg]["flags"] = flags
            data += piece
            left -= piece
            nseg += np.uint64(1)
    segments[first + nseg]["addr"] = at + np.uint64(_STATUS_AT)
    segments[first + nseg]["len"] = 1
    segments[first + nseg]["flags"] = SEG_WRITE
    nseg += np.uint64(1)
    tables = state[Q_TABLES_GPA]
    chains[k]["indirect_table"] = (tables + np.uint64(slot) * np.uint64(INDIRECT_TABLE_BYTES)
                                   if tables else _ZERO)
    chains[k]["first_seg"] = np.uint32(first)
    chains[k]["nseg"] = np.uint16(nseg)


@njit(**NJIT)
def submit_requests(state, requests, n):
    """Offer requests[:n] (DRIVER_REQUEST) to the device in one burst and kick it if it wants;
    returns how many were taken, in order (fewer than n: the ring or the slots are full).

    A burst with a request the device must not get is refused whole: 0 comes back, with
    the reason in state[Q_REFUSED] and the request's index in state[Q_REFUSED_AT]."""
    state[Q_REFUSED] = 0
    for k in range(n):
        refused = _refusal(state, requests[k])
        if refused:
            state[Q_REFUSED] = refused
            state[Q_REFUSED_AT] = k
            return 0
    size = np.int64(state[Q_SIZE])
    # SAFETY: each array was allocated by the BlkDriverQueue with exactly these sizes (size
    # chains, used elements, slot numbers, tags and free slots, size * SLOT_SEGMENTS segments)
    # and lives as long as the state naming it; the control blocks are size SLOT_DTYPE
    # records of the front-end's guest memory, kept mapped by the queue.
    chains = carray(void_pointer(state[Q_CHAINS]), (size,), DRIVER_CHAIN_DTYPE)
    segments = carray(void_pointer(state[Q_SEGMENTS]), (size * SLOT_SEGMENTS,), SEGMENT_DTYPE)
    blocks = carray(void_pointer(state[Q_BLOCKS_HOST]), (size,), SLOT_DTYPE)
    slot_of_id = carray(u32_pointer(state[Q_SLOT_OF_ID]), (size,))
    tags = carray(u64_pointer(state[Q_TAGS]), (size,))
    free = carray(u32_pointer(state[Q_FREE]), (size,))
    free_count = np.int64(state[Q_FREE_COUNT])
    framed = min(np.int64(n), free_count)
    for k in range(framed):
        slot = free[free_count - 1 - k]
        tags[slot] = requests[k]["tag"]
        _frame(state, requests[k], slot, blocks, segments, chains, k)
    if framed == 0:
        return 0
    # The control blocks are written before the add publishes the chains: its release store
    # of the avail index (§2.7.13) or of the descriptors' flags (§2.8.21) orders them.
    added = np.int64(add_burst(state[Q_PACKED] != 0, state[Q_DRIVER], state[Q_CHAINS],
                               framed, state[Q_SEGMENTS]))
    for k in range(added):
        slot_of_id[chains[k]["id"]] = chains[k]["first_seg"] // SLOT_SEGMENTS
    # The slots of the chains not added stay on the stack, below the top it now has.
    state[Q_FREE_COUNT] = free_count - added
    if added and driver_should_kick(state[Q_PACKED] != 0, state[Q_DRIVER]):
        eventfd_signal(np.int32(state[Q_KICK]))
    return added


@njit(**NJIT)
def reap_completions(state, completions, max_n):
    """Collect up to max_n used requests into completions (DRIVER_COMPLETION), oldest first;
    returns how many. Their slots are free again."""
    size = np.int64(state[Q_SIZE])
    n = min(np.int64(max_n), size)
    if n <= 0:
        return 0
    # SAFETY: as in submit_requests: arrays of the queue's own, of these sizes, alive with it.
    used = carray(void_pointer(state[Q_USED]), (size,), USED_ELEM_DTYPE)
    blocks = carray(void_pointer(state[Q_BLOCKS_HOST]), (size,), SLOT_DTYPE)
    slot_of_id = carray(u32_pointer(state[Q_SLOT_OF_ID]), (size,))
    tags = carray(u64_pointer(state[Q_TAGS]), (size,))
    free = carray(u32_pointer(state[Q_FREE]), (size,))
    # The collect's acquire load of the used index (§2.7.14) or of the descriptor's flags
    # (§2.8.22) makes the device's writes before it visible: status bytes and data alike.
    # It checks every id against what is in flight, so slot_of_id[id] names a live slot.
    got = np.int64(collect_burst(state[Q_PACKED] != 0, state[Q_DRIVER], state[Q_USED], n))
    free_count = np.int64(state[Q_FREE_COUNT])
    for k in range(got):
        slot = slot_of_id[used[k]["id"]]
        completions[k]["tag"] = tags[slot]
        completions[k]["written"] = used[k]["len"]
        completions[k]["status"] = blocks[slot]["status"]
        free[free_count] = slot
        free_count += 1
    state[Q_FREE_COUNT] = free_count
    return got


class BlkConfig:
    """What a driver knows of a virtio-blk device once features are negotiated: its config
    space (§5.2.4), each field read as the features say it may be (§5.2.5), with the
    defaults that hold for a field whose feature is absent."""

    def __init__(self, raw: bytes, features: int):
        if len(raw) < CONFIG_SIZE:
            raise ValueError(f"a virtio-blk config space is {CONFIG_SIZE} bytes, not {len(raw)}")
        config = np.frombuffer(raw[:CONFIG_SIZE], dtype=CONFIG_DTYPE)[0]

        def has(bit: int) -> bool:
            return bool(features >> bit & 1)

        #: The negotiated virtio features.
        self.features = features
        #: The disk's size in 512-byte sectors.
        self.capacity = int(config["capacity"])
        #: The logical block size in bytes (512 without VIRTIO_BLK_F_BLK_SIZE).
        self.block_size = int(config["blk_size"]) if has(VIRTIO_BLK_F_BLK_SIZE) else SECTOR_SIZE
        #: The largest data descriptor in bytes, 0 for any.
        self.size_max = int(config["size_max"]) if has(VIRTIO_BLK_F_SIZE_MAX) else 0
        #: The most data descriptors in a request, 0 for any.
        self.seg_max = int(config["seg_max"]) if has(VIRTIO_BLK_F_SEG_MAX) else 0
        #: Request queues the device has (1 without VIRTIO_BLK_F_MQ).
        self.num_queues = int(config["num_queues"]) if has(VIRTIO_BLK_F_MQ) else 1
        #: Whether writes fail (VIRTIO_BLK_F_RO).
        self.read_only = has(VIRTIO_BLK_F_RO)
        #: Whether FLUSH, DISCARD and WRITE_ZEROES may be sent.
        self.flush = has(VIRTIO_BLK_F_FLUSH)
        self.discard = has(VIRTIO_BLK_F_DISCARD)
        self.write_zeroes = has(VIRTIO_BLK_F_WRITE_ZEROES)
        #: Discard's limits: sectors in one request (0: any), and the alignment it prefers.
        self.max_discard_sectors = int(config["max_discard_sectors"]) if self.discard else 0
        self.discard_sector_alignment = (int(config["discard_sector_alignment"])
                                         if self.discard else 0)
        #: Write-zeroes' limit (0: any), and whether its unmap flag may deallocate.
        self.max_write_zeroes_sectors = (int(config["max_write_zeroes_sectors"])
                                         if self.write_zeroes else 0)
        self.write_zeroes_may_unmap = (bool(config["write_zeroes_may_unmap"])
                                       if self.write_zeroes else False)
        #: The cache mode: 1 writeback, 0 writethrough; §5.2.5: without CONFIG_WCE it is
        #: writeback exactly when FLUSH was negotiated.
        self.writeback = (int(config["writeback"]) if has(VIRTIO_BLK_F_CONFIG_WCE)
                          else int(self.flush))
        if self.block_size < SECTOR_SIZE or self.block_size % SECTOR_SIZE:
            raise ValueError(f"the device's logical block size {self.block_size} is not a "
                             f"multiple of {SECTOR_SIZE}")

    @property
    def size(self) -> int:
        """The disk's size in bytes."""
        return self.capacity * SECTOR_SIZE

    @property
    def max_pieces(self) -> int:
        """The most data descriptors this driver puts in one request."""
        return min(self.seg_max or MAX_DATA_PIECES, MAX_DATA_PIECES)

    @property
    def operations(self) -> int:
        """A bit per request type (1 << VIRTIO_BLK_T_x) the device takes."""
        return sum(1 << kind for kind, allowed in (
            (VIRTIO_BLK_T_IN, True), (VIRTIO_BLK_T_OUT, True), (VIRTIO_BLK_T_GET_ID, True),
            (VIRTIO_BLK_T_FLUSH, self.flush), (VIRTIO_BLK_T_DISCARD, self.discard),
            (VIRTIO_BLK_T_WRITE_ZEROES, self.write_zeroes)) if allowed)


class BlkDriverQueue:
    """The driver side of one request queue: `submit` and `reap` a burst each, compiled.

    `queue` is the ring's driver side and `kick` its kick eventfd; `blocks` is the guest-
    physical address of the queue's `queue.size` control blocks (SLOT_DTYPE each), `tables`
    that of as many indirect tables of INDIRECT_TABLE_BYTES (0: INDIRECT_DESC not negotiated,
    chains go on the ring itself), `data` the guest-physical range (start, end) request
    buffers must lie in. Numba loops call `submit_requests(queue.state, ...)` and
    `reap_completions(queue.state, ...)` themselves.
    """

    def __init__(self, memory: GuestMemory, queue: DriverQueue, kick: int, config: BlkConfig,
                 *, blocks: int, tables: int, data: tuple[int, int]):
        size = queue.size
        self.queue = queue
        self.config = config
        # The arrays the state names, kept alive here (the view keeps its mapping).
        self._blocks = memory.view(blocks, size * SLOT_BYTES)
        if tables:
            # The core writes the tables where the chains say, unchecked: they must be there.
            memory.translate(tables, size * INDIRECT_TABLE_BYTES)
        self._chains = np.zeros(size, dtype=DRIVER_CHAIN_DTYPE)
        self._segments = np.zeros(size * SLOT_SEGMENTS, dtype=SEGMENT_DTYPE)
        self._used = np.zeros(size, dtype=USED_ELEM_DTYPE)
        self._slot_of_id = np.zeros(size, dtype=np.uint32)
        self._tags = np.zeros(size, dtype=np.uint64)
        self._free = np.arange(size - 1, -1, -1, dtype=np.uint32)
        state = np.zeros(Q_COLUMNS, dtype=np.uint64)
        state[Q_DRIVER] = queue.handle
        state[Q_PACKED] = int(queue.packed)
        state[Q_KICK] = kick
        state[Q_SIZE] = size
        state[Q_CHAINS] = self._chains.ctypes.data
        state[Q_SEGMENTS] = self._segments.ctypes.data
        state[Q_USED] = self._used.ctypes.data
        state[Q_SLOT_OF_ID] = self._slot_of_id.ctypes.data
        state[Q_TAGS] = self._tags.ctypes.data
        state[Q_FREE] = self._free.ctypes.data
        state[Q_FREE_COUNT] = size
        state[Q_BLOCKS_HOST] = self._blocks.ctypes.data
        state[Q_BLOCKS_GPA] = blocks
        state[Q_TABLES_GPA] = tables
        state[Q_DATA_START], state[Q_DATA_END] = data
        state[Q_CAPACITY] = config.capacity
        state[Q_BLOCK_SECTORS] = config.block_size // SECTOR_SIZE
        state[Q_SIZE_MAX] = config.size_max
        # Without indirect tables a chain's descriptors are the ring's own: header and status
        # take two.
        state[Q_MAX_PIECES] = config.max_pieces if tables else max(min(config.max_pieces,
                                                                       size - 2), 0)
        state[Q_OPERATIONS] = config.operations
        # The range record counts sectors in 32 bits (§5.2.6).
        state[Q_MAX_DISCARD] = config.max_discard_sectors or _U32_MAX
        state[Q_MAX_WRITE_ZEROES] = config.max_write_zeroes_sectors or _U32_MAX
        #: The kernels' view of the queue (Q_* columns), for Numba loops.
        self.state = state

    def submit(self, requests: np.ndarray, n: int | None = None) -> int:
        """Offer requests[:n] (DRIVER_REQUEST; all by default) and kick the device if it
        wants; returns how many were taken (fewer when the ring is full). Raises ValueError,
        offering none, when one of them is a request the device must not get."""
        if requests.dtype != DRIVER_REQUEST:
            raise TypeError(f"requests are DRIVER_REQUEST records, not {requests.dtype}")
        n = len(requests) if n is None else min(n, len(requests))
        taken = submit_requests(self.state, requests, n)
        refused = int(self.state[Q_REFUSED])
        if refused:
            at = int(self.state[Q_REFUSED_AT])
            request = requests[at]
            raise ValueError(
                f"request {at} (type {int(request['type'])}, sector {int(request['sector'])}, "
                f"{int(request['length'])} bytes at {int(request['data']):#x}) "
                f"{REFUSALS[refused]}: none of the {n} was submitted")
        return taken

    def reap(self, completions: np.ndarray) -> int:
        """Fill completions (DRIVER_COMPLETION) with the requests the device used, oldest
        first; returns how many."""
        if completions.dtype != DRIVER_COMPLETION:
            raise TypeError(f"completions are DRIVER_COMPLETION records, not "
                            f"{completions.dtype}")
        return reap_completions(self.state, completions, len(completions))

    @property
    def max_transfer(self) -> int:
        """The most data bytes one request may carry: seg_max pieces of size_max (a 32-bit
        descriptor length each), at most what the 32-bit `length` field holds."""
        size_max = int(self.state[Q_SIZE_MAX]) or _U32_MAX
        return min(int(self.state[Q_MAX_PIECES]) * size_max, _U32_MAX)

    @property
    def in_flight(self) -> int:
        """Requests submitted and not reaped."""
        return self.queue.size - int(self.state[Q_FREE_COUNT])
