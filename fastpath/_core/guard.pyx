"""Surviving SIGBUS on shared guest memory (guard.pxd): a table of guarded ranges and the
signal handler that replaces a range whose file shrank with zero pages."""

from libc.stdint cimport uintptr_t
from libc.string cimport memset
from posix.mman cimport MAP_ANONYMOUS, MAP_FAILED, MAP_FIXED, MAP_PRIVATE, PROT_READ, \
    PROT_WRITE, mmap
from posix.signal cimport SA_SIGINFO, sigaction, sigaction_t, sigemptyset, siginfo_t


cdef extern from "<signal.h>" nogil:
    enum:
        SIGBUS
        SA_ONSTACK
        SA_NODEFER
    void (*SIG_DFL)(int)
    void (*SIG_IGN)(int)


cdef extern from *:
    """
    #define fp_guard_load(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
    #define fp_guard_store(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
    #define fp_guard_claim(p) ({ int free_ = 0; \\
        __atomic_compare_exchange_n((p), &free_, -1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED); })
    """
    int fp_guard_load(int *p) nogil
    void fp_guard_store(int *p, int v) nogil
    bint fp_guard_claim(int *p) nogil


ctypedef void (*plain_handler)(int) noexcept nogil
ctypedef void (*info_handler)(int, siginfo_t *, void *) noexcept nogil


cdef fp_guarded_range _ranges[FP_MAX_GUARDED]
cdef sigaction_t _previous
cdef bint _installed = False


cdef void _pass_on(int signal, siginfo_t *info, void *context) noexcept nogil:
    # Not a guarded range: whoever handled SIGBUS before (Python's faulthandler, say) gets it.
    # With the default action restored, returning runs the access again and it kills the
    # process, as it would have without us.
    if _previous.sa_flags & SA_SIGINFO:
        (<info_handler>_previous.sa_sigaction)(signal, info, context)
    elif _previous.sa_handler == SIG_DFL or _previous.sa_handler == SIG_IGN:
        sigaction(SIGBUS, &_previous, NULL)
    else:
        (<plain_handler>_previous.sa_handler)(signal)


cdef void _on_sigbus(int signal, siginfo_t *info, void *context) noexcept nogil:
    # SAFETY: runs in signal context on the faulting thread. It reads the table with atomic
    # loads only (a slot is armed after its range is written, freed before it is reused) and
    # calls mmap(2), a plain system call on Linux. MAP_FIXED over the range drops the file's
    # pages for zero-filled private ones of the same size, so the access that faulted, and any
    # later one, reads zeros instead of faulting again.
    cdef uintptr_t address = <uintptr_t>info.si_addr
    cdef int slot, state
    for slot in range(FP_MAX_GUARDED):
        state = fp_guard_load(&_ranges[slot].state)
        if state != FP_GUARD_ARMED and state != FP_GUARD_FAULTED:
            continue
        if _ranges[slot].start <= address < _ranges[slot].start + _ranges[slot].length:
            if mmap(<void *>_ranges[slot].start, _ranges[slot].length, PROT_READ | PROT_WRITE,
                    MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) != MAP_FAILED:
                fp_guard_store(&_ranges[slot].state, FP_GUARD_FAULTED)
                return
            break
    _pass_on(signal, info, context)


cdef int _install() noexcept nogil:
    global _installed
    cdef sigaction_t action
    if _installed:
        return 0
    memset(&action, 0, sizeof(action))
    action.sa_sigaction = _on_sigbus
    action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER
    sigemptyset(&action.sa_mask)
    if sigaction(SIGBUS, &action, &_previous) != 0:
        return -1
    _installed = True
    return 0


cdef int fp_guard(uintptr_t start, uintptr_t length) noexcept nogil:
    cdef int slot
    if _install() != 0:
        return -1
    for slot in range(FP_MAX_GUARDED):
        if fp_guard_claim(&_ranges[slot].state):
            _ranges[slot].start = start
            _ranges[slot].length = length
            fp_guard_store(&_ranges[slot].state, FP_GUARD_ARMED)
            return slot
    return -1


cdef void fp_unguard(int slot) noexcept nogil:
    if 0 <= slot < FP_MAX_GUARDED:
        fp_guard_store(&_ranges[slot].state, FP_GUARD_FREE)


cdef int fp_guard_state(int slot) noexcept nogil:
    if 0 <= slot < FP_MAX_GUARDED:
        return fp_guard_load(&_ranges[slot].state)
    return FP_GUARD_FREE


def guard(uintptr_t start, uintptr_t length):
    """Guard [start, start + length) against SIGBUS; the slot to ask about and free it by."""
    cdef int slot = fp_guard(start, length)
    if slot < 0:
        raise OSError("no guard slot is free, or SIGBUS could not be handled")
    return slot


def unguard(int slot):
    """Stop guarding a slot's range."""
    fp_unguard(slot)


def faulted(int slot):
    """Whether an access to the slot's range has faulted (and now reads zeros)."""
    return fp_guard_state(slot) == FP_GUARD_FAULTED
