# Guest memory a peer can take away. A front-end that shrinks the file behind a shared region
# makes every later access past the new end raise SIGBUS. A guarded range survives that: the
# handler maps zero pages over the whole range, marks it faulted, and the access goes on
# reading zeros, so that the control plane can close the connection the range belongs to.
from libc.stdint cimport uintptr_t


cpdef enum:
    # Ranges guarded at once: a connection maps at most a few dozen regions.
    FP_MAX_GUARDED = 1024
    FP_GUARD_FREE = 0
    FP_GUARD_ARMED = 1
    FP_GUARD_FAULTED = 2


cdef struct fp_guarded_range:
    uintptr_t start
    uintptr_t length
    int state                 # FP_GUARD_*, read and written atomically


# Arms a free slot for [start, start + length), installing the handler on first use. Returns
# the slot, or -1 when every slot is in use.
cdef int fp_guard(uintptr_t start, uintptr_t length) noexcept nogil
# Frees a slot (its range is no longer mapped, or no longer needs guarding).
cdef void fp_unguard(int slot) noexcept nogil
# FP_GUARD_ARMED, or FP_GUARD_FAULTED once an access to its range has faulted.
cdef int fp_guard_state(int slot) noexcept nogil
