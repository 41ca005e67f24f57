"""fastpath's shared-memory frame ring (ring.pxd): single producer, single consumer, frames in
fixed-size slots of a file that both sides map, a burst per call.

The header is checked once, when a side attaches; from then on the core uses its own copy of
the geometry, and checks on every burst only what the other side keeps writing: its index
(it may not claim more frames than the ring holds) and, on the consumer side, each slot's
length.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memset

from fastpath._core.chain cimport FP_E_BROKEN, fp_copy, fp_release_fence


cdef extern from "fp_atomic.h":
    uint32_t fp_load_acquire_u32(const uint32_t *p) noexcept nogil
    void fp_store_release_u32(uint32_t *p, uint32_t v) noexcept nogil
    uint32_t fp_load_relaxed_u32(const uint32_t *p) noexcept nogil
    uint32_t fp_read_once_u32(const void *p) noexcept nogil


cpdef enum:
    FP_RING_VERSION = 1
    FP_RING_HEADER_SIZE = 192
    FP_RING_MAX_SLOTS = 1 << 24
    FP_RING_MIN_SLOT_SIZE = 64
    FP_RING_MAX_SLOT_SIZE = 65536
    # A burst larger than this is cut to it, so that counts fit the int the functions return.
    FP_RING_MAX_BURST = 1 << 30


# "fastring", read as a little-endian u64.
cdef uint64_t FP_RING_MAGIC = 0x676e697274736166
RING_MAGIC = b"fastring"
assert int.from_bytes(RING_MAGIC, "little") == FP_RING_MAGIC

cdef fp_ring_header _layout
assert sizeof(fp_ring_header) == FP_RING_HEADER_SIZE
assert <size_t>&_layout.producer - <size_t>&_layout == 64
assert <size_t>&_layout.consumer - <size_t>&_layout == 128


cdef inline uint8_t *_slot(const fp_ring *ring, uint32_t index) noexcept nogil:
    # SAFETY: index & mask < slots, and Ring checked that the mapping holds all the slots.
    return ring.slots + <uint64_t>(index & ring.mask) * ring.slot_stride


cdef int fp_ring_enqueue(fp_ring *ring, const uint8_t *frames, uint32_t stride,
                         const uint32_t *slots, const uint32_t *lengths,
                         uint32_t n) noexcept nogil:
    # SAFETY: `ring` was built by Ring from a mapping checked to hold every slot the mask can
    # name; a frame is copied only when its length fits both its burst slot (stride bytes, which
    # the caller provides for each slot it names) and a ring slot.
    cdef fp_ring_header *h = ring.header
    cdef uint32_t prod = fp_load_relaxed_u32(&h.producer)
    # Acquire: the consumer's reads of the slots it released are done before they are reused.
    cdef uint32_t cons = fp_load_acquire_u32(&h.consumer)
    cdef uint32_t size = ring.mask + 1
    cdef uint32_t used = prod - cons
    cdef uint32_t start = prod, taken = 0, slot, length
    cdef uint8_t *dst
    if used > size:
        return FP_E_BROKEN
    if n > FP_RING_MAX_BURST:
        n = FP_RING_MAX_BURST
    while taken < n:
        slot = slots[taken] if slots != NULL else taken
        length = lengths[slot]
        if length > ring.slot_size or length > stride:
            h.too_long += 1
            taken += 1
            continue
        if used == size:
            break
        dst = _slot(ring, prod)
        (<uint32_t *>dst)[0] = length
        fp_copy(dst + 4, frames + <uint64_t>slot * stride, length)
        prod += 1
        used += 1
        taken += 1
    if prod != start:
        # Release: the slots' bytes are visible before the index that hands them over.
        fp_store_release_u32(&h.producer, prod)
    return <int>taken


cdef int fp_ring_dequeue(fp_ring *ring, uint8_t *frames, uint32_t stride, uint32_t room,
                         const uint32_t *slots, uint32_t *lengths, uint32_t max_n) noexcept nogil:
    # SAFETY: as fp_ring_enqueue for the ring's side. A slot's length is the producer's to
    # write, so it is read once and checked against both the ring slot and the burst slot
    # before a byte is copied.
    cdef fp_ring_header *h = ring.header
    cdef uint32_t cons = fp_load_relaxed_u32(&h.consumer)
    # Acquire: the producer's writes to the slots it published are visible before we read them.
    cdef uint32_t prod = fp_load_acquire_u32(&h.producer)
    cdef uint32_t start = cons, out = 0, slot, length
    cdef const uint8_t *src
    if prod - cons > ring.mask + 1:
        return FP_E_BROKEN
    if max_n > FP_RING_MAX_BURST:
        max_n = FP_RING_MAX_BURST
    while out < max_n and cons != prod:
        src = _slot(ring, cons)
        length = fp_read_once_u32(src)
        cons += 1
        if length > ring.slot_size or length > room:
            h.rx_dropped += 1
            continue
        slot = slots[out] if slots != NULL else out
        fp_copy(frames + <uint64_t>slot * stride, src + 4, length)
        lengths[slot] = length
        out += 1
    if cons != start:
        # Release: our reads of the slots are done before the producer may overwrite them.
        fp_store_release_u32(&h.consumer, cons)
    return <int>out


def ring_bytes(slots, slot_size):
    """Bytes a ring of `slots` slots (a power of two) of `slot_size` frame bytes each takes;
    ValueError for a geometry the format does not allow."""
    if not (1 <= slots <= FP_RING_MAX_SLOTS and slots & (slots - 1) == 0):
        raise ValueError(f"a ring has a power of two slots, 1 to {FP_RING_MAX_SLOTS}, "
                         f"not {slots}")
    if not FP_RING_MIN_SLOT_SIZE <= slot_size <= FP_RING_MAX_SLOT_SIZE:
        raise ValueError(f"a ring slot holds {FP_RING_MIN_SLOT_SIZE} to "
                         f"{FP_RING_MAX_SLOT_SIZE} bytes, not {slot_size}")
    return FP_RING_HEADER_SIZE + slots * _stride(slot_size)


def _stride(slot_size):
    return (4 + slot_size + 63) // 64 * 64


def format_ring(uint8_t[::1] memory, uint32_t slots, uint32_t slot_size):
    """Write an empty ring's header into `memory` (at least ring_bytes(slots, slot_size)
    long). Nobody else may be using the memory as a ring meanwhile."""
    cdef fp_ring_header *h
    need = ring_bytes(slots, slot_size)
    # SAFETY: the header is written only once the memory is known to hold the whole ring.
    if memory.shape[0] < need:
        raise ValueError(f"a ring of {slots} slots of {slot_size} bytes needs {need} bytes, "
                         f"not {memory.shape[0]}")
    h = <fp_ring_header *>&memory[0]
    memset(h, 0, sizeof(fp_ring_header))
    h.version = FP_RING_VERSION
    h.slots = slots
    h.slot_size = slot_size
    h.slot_stride = _stride(slot_size)
    # The magic goes last: a header that has it is whole.
    fp_release_fence()
    h.magic = FP_RING_MAGIC


cdef class Ring:
    """A ring in `memory` (a writable buffer, the mapped ring file), attached: its header is
    checked (ValueError for memory that holds no fastpath ring, or one whose geometry or
    indices are impossible) and its geometry kept. The Ring holds the buffer while it lives."""
    # SAFETY: the header pointer stays valid as long as the Ring: it holds the buffer, and a
    # mapping cannot be closed while a buffer of it is held.
    cdef fp_ring ring
    cdef uint8_t[::1] memory

    def __init__(self, uint8_t[::1] memory):
        cdef fp_ring_header *h
        # SAFETY: the header is read only once the memory is known to hold one; the slots are
        # used only once it is known to hold as many as the header says, each slot_stride long.
        if memory.shape[0] < FP_RING_HEADER_SIZE:
            raise ValueError(f"{memory.shape[0]} bytes cannot hold a ring header "
                             f"({FP_RING_HEADER_SIZE} bytes): not a fastpath ring")
        h = <fp_ring_header *>&memory[0]
        if h.magic != FP_RING_MAGIC:
            raise ValueError(f"not a fastpath ring: it starts {bytes(memory[:8])!r}, "
                             f"not {RING_MAGIC!r}")
        if h.version != FP_RING_VERSION:
            raise ValueError(f"ring format version {h.version}; this build reads version "
                             f"{FP_RING_VERSION}")
        need = ring_bytes(h.slots, h.slot_size)
        if h.slot_stride != _stride(h.slot_size):
            raise ValueError(f"a ring slot of {h.slot_size} bytes is {_stride(h.slot_size)} "
                             f"bytes apart from the next, not {h.slot_stride}")
        if memory.shape[0] < need:
            raise ValueError(f"a ring of {h.slots} slots of {h.slot_size} bytes needs {need} "
                             f"bytes, and only {memory.shape[0]} are there")
        if <uint32_t>(h.producer - h.consumer) > h.slots:
            raise ValueError(f"inconsistent ring indices: producer {h.producer}, consumer "
                             f"{h.consumer}, {h.slots} slots")
        self.memory = memory
        self.ring.header = h
        self.ring.slots = &memory[0] + FP_RING_HEADER_SIZE
        self.ring.mask = h.slots - 1
        self.ring.slot_size = h.slot_size
        self.ring.slot_stride = h.slot_stride

    @property
    def handle(self):
        """Address of the core state, for kernels calling fp_ring_enqueue / fp_ring_dequeue."""
        return <uintptr_t>&self.ring

    @property
    def slots(self):
        """How many frames the ring holds."""
        return self.ring.mask + 1

    @property
    def slot_size(self):
        """The longest frame a slot holds."""
        return self.ring.slot_size

    @property
    def pending(self):
        """Frames enqueued and not yet dequeued."""
        cdef fp_ring_header *h = self.ring.header
        return <uint32_t>(fp_load_acquire_u32(&h.producer) - fp_load_acquire_u32(&h.consumer))

    @property
    def too_long(self):
        """Frames the producer dropped because they are longer than a slot."""
        return self.ring.header.too_long

    @property
    def rx_dropped(self):
        """Frames the consumer dropped because they did not fit its buffers."""
        return self.ring.header.rx_dropped

    @property
    def too_long_address(self):
        """Address of the header's too_long count (a u64 the producer alone writes)."""
        return <uintptr_t>&self.ring.header.too_long

    @property
    def rx_dropped_address(self):
        """Address of the header's rx_dropped count (a u64 the consumer alone writes)."""
        return <uintptr_t>&self.ring.header.rx_dropped
