"""Numba loops that move chains through one queue for `fastpath bench vring`.

Each loop calls the core once per burst; nothing per chain runs in Python. `packed` selects the
ring type's functions (fastpath.vring.kernels); the branch is taken once per burst.
"""

from numba import njit

from fastpath._numba import NJIT
from fastpath.vring.kernels import add_burst, collect_burst, gather_burst, pop_burst, push_burst


@njit(**NJIT)
def device_step(packed, device, chains, burst, segments, max_segments, copy_to, copy_bytes):
    """Pop a burst, copy each chain's first bytes out, push it back; returns chains or < 0."""
    n = pop_burst(packed, device, chains, burst, segments, max_segments)
    if n > 0:
        gather_burst(chains, n, segments, copy_to, copy_bytes)
        push_burst(packed, device, chains, n)
    return n


@njit(**NJIT)
def one_process_loop(packed, driver, device, driver_chains, driver_segments, used, chains,
                     segments, max_segments, copy_to, burst, copy_bytes, total):
    """Driver offers a burst, device serves it, driver collects; until `total` chains moved."""
    moved = 0
    while moved < total:
        add_burst(packed, driver, driver_chains, burst, driver_segments)
        n = device_step(packed, device, chains, burst, segments, max_segments, copy_to,
                        copy_bytes)
        if n < 0:
            return n
        collect_burst(packed, driver, used, burst)
        moved += n
    return moved


@njit(**NJIT)
def driver_loop(packed, driver, driver_chains, driver_segments, used, burst, total, stop):
    """Keep the ring full and collect until `total` chains came back or stop[0] is set."""
    collected = 0
    while collected < total and stop[0] == 0:
        add_burst(packed, driver, driver_chains, burst, driver_segments)
        collected += collect_burst(packed, driver, used, burst)
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
