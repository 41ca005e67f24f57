"""One entry point for every forwarding engine: the kernel a forwarding loop calls with each
burst it received."""

from numba import njit

from fastpath._numba import NJIT
from fastpath.pmd._mbuf import free_burst
from fastpath.pmd.fwd import csum, flowgen, io, mac, macswap, rxonly, txonly


@njit(**NJIT)
def engine_burst(code, config, templates, template_lengths, state, pool, mbufs, n, burst):
    """Run engine `code` over the n frames received in mbufs[:n]; returns how many frames
    mbufs[:n_out] now holds to send.

    Forwarding engines work in place and return n (rxonly frees them and returns 0).
    Generating engines free the n frames and fill up to `burst` fresh mbufs from
    `templates`. `config` holds the engine's settings, `state` its position and counters,
    as `setup_engine` made them. An unknown code frees the frames and sends nothing.
    """
    if code == io.CODE:
        return io.forward_burst(config, state, pool, mbufs, n)
    if code == macswap.CODE:
        return macswap.forward_burst(config, state, pool, mbufs, n)
    if code == mac.CODE:
        return mac.forward_burst(config, state, pool, mbufs, n)
    if code == rxonly.CODE:
        return rxonly.forward_burst(config, state, pool, mbufs, n)
    if code == txonly.CODE:
        return txonly.generate_burst(config, templates, template_lengths, state, pool, mbufs,
                                     n, burst)
    if code == flowgen.CODE:
        return flowgen.generate_burst(config, templates, template_lengths, state, pool, mbufs,
                                      n, burst)
    if code == csum.CODE:
        return csum.forward_burst(config, state, pool, mbufs, n)
    free_burst(pool, mbufs, 0, n)
    return 0
