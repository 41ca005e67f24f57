"""The null port: receives nothing, takes every frame sent and discards it."""

from numba import njit

from fastpath._numba import NJIT
from fastpath.pmd._kinds import PortKind, register_port_kind
from fastpath.pmd._port import Port

KIND = 6


@njit(**NJIT)
def rx(row, pool, mbufs, max_n):
    """Nothing arrives."""
    return 0


@njit(**NJIT)
def tx(row, pool, mbufs, n):
    """Everything is taken."""
    return n


class NullPort(Port):
    """A sink (and an empty source): what a forwarding loop's far side is when only the
    near side matters."""

    kind = KIND

    def __init__(self, pool, queues: int = 1, name: str = "null"):
        super().__init__(name, pool, queues)


register_port_kind(PortKind(
    code=KIND, name="null", argument="", options={"queues": int},
    help="receives nothing, discards what it is sent",
    make=lambda argument, pool, **options: NullPort(pool, **options), rx=rx, tx=tx))
