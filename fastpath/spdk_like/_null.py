"""The null bdev: completes every request at once and keeps nothing (reads leave the buffers
as they were), as SPDK's null bdev does: the ceiling of the bdev layer itself."""

from numba import njit

from fastpath._numba import NJIT
from fastpath.spdk_like._bdev import Bdev, BdevKind, complete_now, parse_size, register_bdev_kind

KIND = 1


@njit(**NJIT)
def start(channel, io):
    complete_now(channel, io.tag, 0)
    return 1


class NullBdev(Bdev):
    """`size` bytes of nothing."""

    kind = KIND


register_bdev_kind(BdevKind(
    code=KIND, name="null", argument="SIZE", options={"block_size": int},
    help="completes every request at once, keeps no data",
    make=lambda argument, **options: NullBdev(size=parse_size(argument), **options),
    start=start))
