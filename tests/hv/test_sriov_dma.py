"""A VF given to a VM does its DMA through VT-d (shared/specs/hv.md §4.2, TV5): VF5's RID is
source-id 0x3B8A, TV5's tables built with the VT-d builders translate its write to
0xDEADBEEF, and a bad IOVA is a recorded fault while another VF's DMA goes through."""

from __future__ import annotations

from fastpath.errors import DmaFault
from fastpath.hv import HostMemory
from fastpath.hv.sriov import PhysicalFunction, constant_geometry, enable_vfs, vf_dma
from fastpath.hv.vtd import (
    PAGE_4K,
    FaultReason,
    Fsts,
    Gcmd,
    Reg,
    RemappingUnit,
    RootTable,
    SecondLevelTables,
)

MIB = 1 << 20
TV5_RTADDR = 0x300000
TV5_DID = 0x42


def tv5():
    """TV5 through the builders: frames handed out from 0x300000 in the spec's order land
    every structure at its listed address. VF6 (0x3B8C) is a second domain's VF."""
    mem = HostMemory(8 * MIB, table_area=(TV5_RTADDR, 4 * MIB))
    root = RootTable(mem, mem.frames)
    vfs = enable_vfs(PhysicalFunction(0x3B00, vendor_id=0x8086, vf_device_id=0x10ED,
                                      total_vfs=65, geometry=constant_geometry(0x80, 2)), 8)
    root.context_table(vfs[5].bus)
    tables = SecondLevelTables(mem, mem.frames, 4)
    tables.map(0xDEADB000, 0x777777000, PAGE_4K, "rw")
    root.attach(vfs[5].rid, TV5_DID, tables)
    other = SecondLevelTables(mem, mem.frames, 4)
    other.map(0x1000, 0x5000, PAGE_4K, "r")
    root.attach(vfs[6].rid, 7, other)
    return mem, root, vfs


def test_tv5_tables_from_the_builders_are_byte_for_byte_the_spec():
    mem, root, _ = tv5()
    assert root.root == TV5_RTADDR
    expected = {0x3003B0: 0x301001, 0x3003B8: 0, 0x3018A0: 0x302001, 0x3018A8: 0x4202,
                0x302000: 0x303003, 0x303018: 0x304003, 0x3047A8: 0x305003,
                0x3056D8: 0x777777003}
    assert {hpa: mem.read64(hpa) for hpa in expected} == expected


def test_tv5_vf5_write_translates_through_the_raw_walk():
    mem, root, vfs = tv5()
    assert vfs[5].rid == 0x3B8A
    (answer,) = vf_dma(vfs[5], (mem, root.root), [0xDEADBEEF], "w")
    assert (answer.hpa, answer.domain_id, answer.references) == (0x777777EEF, TV5_DID, 6)


def unit_for(mem, root) -> RemappingUnit:
    unit = RemappingUnit(mem)
    unit.write(Reg.RTADDR, 8, root.root)
    unit.write(Reg.GCMD, 4, Gcmd.SRTP)
    unit.write(Reg.GCMD, 4, Gcmd.TE)
    return unit


def test_a_vf_fault_is_recorded_while_another_vf_dma_goes_through():
    mem, root, vfs = tv5()
    unit = unit_for(mem, root)
    good, bad = vf_dma(vfs[5], unit, [0xDEADBEEF, 0xDEAD0000], "w")
    assert (good.hpa, good.domain_id, good.references) == (0x777777EEF, TV5_DID, 6)
    assert isinstance(bad, DmaFault) and bad.reason == FaultReason.FR_WRITE
    assert bad.references == 4          # the context entry came from the context cache
    (other,) = vf_dma(vfs[6], unit, [0x1234], "r")
    assert (other.hpa, other.domain_id) == (0x5234, 7)
    (denied,) = vf_dma(vfs[6], unit, [0x1234], "w")
    assert isinstance(denied, DmaFault) and denied.source_id == vfs[6].rid
    records = [r for r in unit.records() if r[1] >> 63]
    assert [(lo, hi & 0xFFFF, hi >> 32 & 0xFF, hi >> 62 & 1) for lo, hi in records] == [
        (0xDEAD0000, 0x3B8A, FaultReason.FR_WRITE, 0), (0x1000, 0x3B8C, FaultReason.FR_WRITE, 0)]
    assert unit.read(Reg.FSTS, 4) & Fsts.PPF


def test_a_vf_without_a_context_entry_faults_without_a_unit():
    mem, root, vfs = tv5()
    (answer,) = vf_dma(vfs[0], (mem, root.root), [0xDEADBEEF], "r")
    assert isinstance(answer, DmaFault)
    assert (answer.reason, answer.source_id, answer.read) == (
        FaultReason.FR_CONTEXT_NOT_PRESENT, 0x3B80, True)
