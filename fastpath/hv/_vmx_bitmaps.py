"""I/O and MSR bitmaps: 4 KiB pages of host memory whose bits say which accesses exit.

I/O bitmap A covers ports 0x0000-0x7FFF and B ports 0x8000-0xFFFF, one bit per port (SDM Vol.
3C §25.6.4). An access exits if the bit of any port it touches is set, which may need both
bitmaps, and always if it runs past port 0xFFFF (§26.1.3; Bochs `VMexit_IO`).

The MSR bitmap (§25.6.9) is four 1 KiB quarters: reads of MSRs 0x0-0x1FFF at +0, reads of
0xC0000000-0xC0001FFF at +1024, and writes of the same two ranges at +2048 and +3072. An RDMSR
or WRMSR of an MSR outside both ranges always exits (§26.1.3).

Each function takes the bitmap pages as writable buffers (a slice of host memory, a
bytearray, a numpy uint8 array).
"""

from __future__ import annotations

__all__ = ["BITMAP_SIZE", "io_exits", "msr_exits", "set_io_exiting", "set_msr_exiting"]

BITMAP_SIZE = 4096
PORTS_PER_BITMAP = BITMAP_SIZE * 8  # 0x8000: bitmap B starts at port 0x8000
_PORT_LIMIT = 2 * PORTS_PER_BITMAP

_MSR_RANGES = ((0x0000_0000, 0), (0xC000_0000, 1024))  # (first MSR, offset of its read quarter)
_MSRS_PER_RANGE = 0x2000
_WRITE_OFFSET = 2048


def _bit(page, n: int) -> bool:
    return bool(page[n >> 3] >> (n & 7) & 1)


def _set_bit(page, n: int, on: bool) -> None:
    if on:
        page[n >> 3] |= 1 << (n & 7)
    else:
        page[n >> 3] &= ~(1 << (n & 7)) & 0xFF


def io_exits(bitmap_a, bitmap_b, port: int, size: int) -> bool:
    """Whether an I/O access of `size` bytes at `port` exits under these I/O bitmaps."""
    if port + size > _PORT_LIMIT:
        return True
    pages = (bitmap_a, bitmap_b)
    return any(_bit(pages[p // PORTS_PER_BITMAP], p % PORTS_PER_BITMAP)
               for p in range(port, port + size))


def set_io_exiting(bitmap_a, bitmap_b, port: int, on: bool = True) -> None:
    """Make accesses to one port exit (on) or not, in whichever bitmap covers it."""
    if not 0 <= port < _PORT_LIMIT:
        raise ValueError(f"{port:#x} is not an I/O port")
    _set_bit((bitmap_a, bitmap_b)[port // PORTS_PER_BITMAP], port % PORTS_PER_BITMAP, on)


def _msr_bit(msr: int, write: bool) -> int | None:
    # The bit of the 4 KiB bitmap that controls this access, or None outside both ranges.
    for first, offset in _MSR_RANGES:
        if first <= msr < first + _MSRS_PER_RANGE:
            return (offset + (_WRITE_OFFSET if write else 0)) * 8 + msr - first
    return None


def msr_exits(bitmap, msr: int, write: bool) -> bool:
    """Whether an RDMSR (write False) or WRMSR of `msr` exits under this MSR bitmap."""
    bit = _msr_bit(msr, write)
    return bit is None or _bit(bitmap, bit)


def set_msr_exiting(bitmap, msr: int, read: bool | None = None,
                    write: bool | None = None) -> None:
    """Make reads and/or writes of one MSR exit (True) or not (False); None leaves it."""
    for is_write, on in ((False, read), (True, write)):
        if on is None:
            continue
        bit = _msr_bit(msr, is_write)
        if bit is None:
            raise ValueError(f"MSR {msr:#x} has no bit in an MSR bitmap: it always exits")
        _set_bit(bitmap, bit, on)
