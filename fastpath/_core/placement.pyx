"""How far apart two CPUs are: the time one cache line takes to go from one to the other.

This machine's two CPUs are virtual, and the host moves them closer together or further apart
every few seconds; a busy-poll rate between them follows the distance by a factor of three or
more. Measured between runs, it tells which placement a run had."""

from libc.stdint cimport int64_t, uint64_t, uintptr_t

from fastpath._core.clock cimport fp_monotonic_ns


cdef extern from "fp_atomic.h" nogil:
    uint64_t fp_load_acquire_u64(const void *p)
    void fp_store_release_u64(void *p, uint64_t v)

cdef enum:
    CLOCK_EVERY = 4096   # spins between looks at the clock while waiting for the other side


cdef inline bint _wait_for(const uint64_t *line, uint64_t value,
                           int64_t deadline_ns) noexcept nogil:
    # Spin until the word holds `value`; False if the deadline passed first.
    cdef uint64_t spins = 0
    while fp_load_acquire_u64(line) != value:
        spins += 1
        if spins % CLOCK_EVERY == 0 and fp_monotonic_ns() > deadline_ns:
            return False
    return True


cdef int64_t fp_line_bounce(uint64_t *line, uint64_t side, uint64_t rounds,
                            int64_t deadline_ns) noexcept nogil:
    # Side 0 writes odd values and waits for the even ones after them, side 1 the other way
    # round, so that the line crosses between the two CPUs twice a round. Returns the
    # nanoseconds side 0 spent on its rounds after the first (the first waits for side 1 to
    # start): rounds - 1 round trips. 0 for side 1; -1 when the other side fell silent past
    # the deadline.
    cdef uint64_t i, value
    cdef int64_t start = 0
    for i in range(rounds):
        value = 2 * i + side
        if not _wait_for(line, value, deadline_ns):
            return -1
        if i == 1 and side == 0:
            start = fp_monotonic_ns()
        fp_store_release_u64(line, value + 1)
    if side == 1:
        return 0
    # The last answer closes side 0's last round.
    if not _wait_for(line, 2 * rounds, deadline_ns):
        return -1
    return fp_monotonic_ns() - start


def line_bounce(uintptr_t line, uint64_t side, uint64_t rounds, int64_t deadline_ns):
    """Play one side (0 or 1) of `rounds` rounds over the 8-byte word at `line` (zero at the
    start, alone on its cache line); returns side 0's nanoseconds for the round trips after
    the first (rounds - 1 of them), 0 for side 1, or -1 if the other side stopped answering
    before monotonic time `deadline_ns`. Runs without the GIL."""
    cdef int64_t took
    if side > 1 or rounds < 2:
        raise ValueError("side is 0 or 1, and a bounce takes 2 rounds at least")
    with nogil:
        took = fp_line_bounce(<uint64_t *>line, side, rounds, deadline_ns)
    return took
