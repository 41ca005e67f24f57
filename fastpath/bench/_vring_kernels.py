"""Numba loops that move chains through one queue for `fastpath bench vring`.

Each loop calls the core once per burst; nothing per chain runs in Python. `packed` selects the
ring type's functions; the branch is taken once per burst.
"""

from numba import njit

from fastpath._numba import NJIT
from fastpath.vring import kernels as core


@njit(**NJIT)
def _add(packed, driver, chains, n, segments):
    if packed:
        return core.packed_add_burst(driver, chains, n, segments)
    return core.split_add_burst(driver, chains, n, segments)


@njit(**NJIT)
def _pop(packed, device, chains, n, segments, max_segments):
    if packed:
        return core.packed_pop_burst(device, chains, n, segments, max_segments)
    return core.split_pop_burst(device, chains, n, segments, max_segments)


@njit(**NJIT)
def _push(packed, device, chains, n):
    if packed:
        return core.packed_push_burst(device, chains, n)
    return core.split_push_burst(device, chains, n)


@njit(**NJIT)
def _collect(packed, driver, used, n):
    if packed:
        return core.packed_collect_burst(driver, used, n)
    return core.split_collect_burst(driver, used, n)


@njit(**NJIT)
def device_step(packed, device, chains, burst, segments, max_segments, copy_to, copy_bytes):
    """Pop a burst, copy each chain's first bytes out, push it back; returns chains or < 0."""
    n = _pop(packed, device, chains, burst, segments, max_segments)
    if n > 0:
        core.gather_burst(chains, n, segments, copy_to, copy_bytes)
        _push(packed, device, chains, n)
    return n


@njit(**NJIT)
def one_process_loop(packed, driver, device, driver_chains, driver_segments, used, chains,
                     segments, max_segments, copy_to, burst, copy_bytes, total):
    """Driver offers a burst, device serves it, driver collects; until `total` chains moved."""
    moved = 0
    while moved < total:
        _add(packed, driver, driver_chains, burst, driver_segments)
        n = device_step(packed, device, chains, burst, segments, max_segments, copy_to,
                        copy_bytes)
        if n < 0:
            return n
        _collect(packed, driver, used, burst)
        moved += n
    return moved


@njit(**NJIT)
def driver_loop(packed, driver, driver_chains, driver_segments, used, burst, total, stop):
    """Keep the ring full and collect until `total` chains came back or stop[0] is set."""
    collected = 0
    while collected < total and stop[0] == 0:
        _add(packed, driver, driver_chains, burst, driver_segments)
        collected += _collect(packed, driver, used, burst)
    return collected


@njit(**NJIT)
def device_loop(packed, device, chains, segments, max_segments, copy_to, burst, copy_bytes,
                total, stop):
    """Serve chains until `total` were moved or stop[0] is set; returns the count or < 0."""
    moved = 0
    while moved < total and stop[0] == 0:
        n = device_step(packed, device, chains, burst, segments, max_segments, copy_to,
                        copy_bytes)
        if n < 0:
            return n
        moved += n
    return moved
