"""I/O and MSR bitmap decisions against the reference (fastpath.testing.reference.vmx), which
keeps intercepted ports and MSRs as sets and builds the pages as little-endian integers."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastpath.hv.vmx import BITMAP_SIZE, io_exits, msr_exits, set_io_exiting, set_msr_exiting
from fastpath.testing.reference import vmx as reference

ports = st.integers(0, 0xFFFF)
port_sets = st.sets(st.one_of(ports, st.sampled_from([0x7FFE, 0x7FFF, 0x8000, 0xFFFF])),
                    max_size=40)
msrs = st.one_of(st.integers(0, 0x2100), st.integers(0xBFFF_FF00, 0xC000_2100),
                 st.integers(0, 0xFFFF_FFFF))
msr_sets = st.sets(st.one_of(st.integers(0, 0x1FFF), st.integers(0xC000_0000, 0xC000_1FFF)),
                   max_size=40)


@given(port_sets, ports, st.sampled_from([1, 2, 4]))
def test_io_decisions_match_the_reference(intercepted, port, size):
    bitmap_a, bitmap_b = reference.io_bitmaps(intercepted)
    assert io_exits(bitmap_a, bitmap_b, port, size) == reference.io_exits(intercepted, port,
                                                                          size)


@given(port_sets)
def test_setting_ports_builds_the_reference_bitmaps(intercepted):
    bitmap_a, bitmap_b = bytearray(BITMAP_SIZE), bytearray(BITMAP_SIZE)
    for port in intercepted:
        set_io_exiting(bitmap_a, bitmap_b, port)
    assert (bitmap_a, bitmap_b) == reference.io_bitmaps(intercepted)
    for port in intercepted:
        set_io_exiting(bitmap_a, bitmap_b, port, on=False)
    assert not any(bitmap_a) and not any(bitmap_b)


@given(msr_sets, msr_sets, msrs, st.booleans())
def test_msr_decisions_match_the_reference(reads, writes, msr, write):
    bitmap = reference.msr_bitmap(reads, writes)
    assert msr_exits(bitmap, msr, write) == reference.msr_exits(reads, writes, msr, write)


@given(msr_sets, msr_sets)
def test_setting_msrs_builds_the_reference_bitmap(reads, writes):
    bitmap = bytearray(BITMAP_SIZE)
    for msr in reads:
        set_msr_exiting(bitmap, msr, read=True)
    for msr in writes:
        set_msr_exiting(bitmap, msr, write=True)
    assert bitmap == reference.msr_bitmap(reads, writes)


def test_msr_bitmap_quarters_are_where_the_sdm_puts_them():
    # §25.6.9: read-low at byte 0, read-high at 1024, write-low at 2048, write-high at 3072.
    for msr, read, byte in ((0x0, True, 0), (0xC000_0000, True, 1024), (0x0, False, 2048),
                            (0xC000_0000, False, 3072), (0x1FFF, False, 3071)):
        bitmap = bytearray(BITMAP_SIZE)
        set_msr_exiting(bitmap, msr, read=True if read else None, write=None if read else True)
        assert [i for i, b in enumerate(bitmap) if b] == [byte]


def test_an_msr_outside_both_ranges_has_no_bit_to_set():
    with pytest.raises(ValueError):
        set_msr_exiting(bytearray(BITMAP_SIZE), 0x4000_0000, read=False)
