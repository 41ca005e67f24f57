"""An SR-IOV NIC: a PF enables --vfs VFs, a burst of received frames is steered VMDq-style to
the VFs' pools and queues, and each VF's DMA goes through VT-d, where bad IOVAs fault.

What is modelled: an 82599-class PF at 3b:00.0 with TotalVFs --total-vfs, First VF Offset
--first-vf-offset and VF Stride --vf-stride (0x180 and 2, as the 82599, put VF0 on the next
bus; a VF whose RID carries out of the devfn byte moves to a further bus), and two 64-bit
prefetchable VF BARs (16 KiB registers, 16 KiB MSI-X), sized by probing and placed by
configuration writes, then Linux's enable sequence. The NIC's VMDq registers give VF k
receive address 02:00:00:00:01:k in pool k and the PF the pool after the VFs, which is also
the default pool (--no-default-pool sets DIS_DEFPL instead); every pool accepts untagged
frames and, with REPLEN, broadcast; the VLAN filter table is empty, so tagged frames are
dropped. A burst of --frames frames goes to: a VF's MAC (80 %),
the PF's (5 %), broadcast (5 %), an unknown unicast address (5 %) and a VF's MAC tagged with
VLAN 999, which VFTA filters out (5 %). With --rss the pools hold 4 queues (32 pools, RSS
picks the queue by hash), else 2 (64 pools). Each VF is given to a VM: its RID is the
source-id of its DMA, translated by a domain of its own mapping --pages pages; it writes
--dma IOVAs, a fraction --bad of them unmapped.

Tables:
  PF and VFs   each VF's RID, bus:dev.fn, whether its bus is past the PF's, and its BARs
  VMDq pools   frames each pool received (a replicated broadcast counts in every pool), and
               per queue
  Steering     frames in, delivered, dropped, replicated, and those that went to the
               default pool for want of a match
  VF DMA       per VF: requests, translated, faults by reason, and faults recorded
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from fastpath.errors import DmaFault
from fastpath.hv import HostMemory
from fastpath.hv.sriov import (
    PhysicalFunction,
    SriovReg,
    VfBar,
    enable_vfs,
    steer,
    vf_dma,
)
from fastpath.hv.vtd import (
    PAGE_4K,
    RemappingUnit,
    RootTable,
    SecondLevelTables,
    VtdCaps,
)
from fastpath.scenarios._options import (
    fraction,
    positive_int,
    positive_int_up_to,
    whole_number,
)
from fastpath.scenarios._report import Report, Table
from fastpath.scenarios._vmdq_pools import PF_MAC, VF_MAC_BASE, vmdq_registers
from fastpath.scenarios.vtd import FaultService, program_unit, reason_name

PF_RID = 0x3B00
VENDOR_INTEL, VF_DEVICE_82599 = 0x8086, 0x10ED
VF_BARS = {0: VfBar(16 << 10), 3: VfBar(16 << 10)}   # registers, MSI-X table
BAR_WINDOWS = 0x38_0000_0000                         # where the host places the VF BARs
UNKNOWN_MAC = 0x02_00_00_00_FF_FF
BROADCAST = 0xFFFF_FFFF_FFFF
FILTERED_VLAN = 999
IOVA_BASE = 0x1_0000_0000
MAX_PAGES = 1 << 13         # every VF's tables fit the table area of _vf_dma's host memory
BUFFER_HPA = 1 << 40
# The share of each kind of frame in the burst.
FRAME_MIX = {"vf": 0.80, "pf": 0.05, "broadcast": 0.05, "unknown": 0.05, "filtered": 0.05}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `fastpath hv sriov`."""
    parser.add_argument("--vfs", type=positive_int, help="VFs to enable (NumVFs)")
    parser.add_argument("--total-vfs", type=positive_int, help="TotalVFs the PF offers")
    parser.add_argument("--first-vf-offset", type=whole_number,
                        help="First VF Offset, RID distance from the PF to VF0")
    parser.add_argument("--vf-stride", type=whole_number, help="VF Stride between VF RIDs")
    parser.add_argument("--frames", type=positive_int, help="frames in the received burst")
    parser.add_argument("--rss", action=argparse.BooleanOptionalAction,
                        help="32 pools of 4 queues with RSS, instead of 64 pools of 2")
    parser.add_argument("--default-pool", action=argparse.BooleanOptionalAction,
                        help="frames no filter matched go to the PF's pool (--no-default-pool "
                        "drops them: VT_CTL.DIS_DEFPL)")
    parser.add_argument("--pages", type=positive_int_up_to(MAX_PAGES),
                        help="DMA pages each VF's domain maps")
    parser.add_argument("--dma", type=whole_number, help="DMA writes each VF makes")
    parser.add_argument("--bad", type=fraction, help="fraction of the VFs' IOVAs unmapped")
    parser.add_argument("--seed", type=whole_number, help="seed of the frames and the IOVAs")


def _probe_bars(pf: PhysicalFunction) -> dict[int, int]:
    """Size each VF BAR as Linux does (write all ones, read back), then place it; returns
    the probed size of one VF's BAR by slot."""
    sizes, base = {}, BAR_WINDOWS
    for slot in VF_BARS:
        low = SriovReg.VF_BAR0 + 4 * slot
        pf.write(low, 4, 0xFFFF_FFFF)
        pf.write(low + 4, 4, 0xFFFF_FFFF)
        probed = (pf.read(low + 4, 4) << 32 | pf.read(low, 4)) & ~0xF
        sizes[slot] = (~probed & (1 << 64) - 1) + 1
        pf.write(low, 4, base & 0xFFFF_FFFF)
        pf.write(low + 4, 4, base >> 32)
        base += pf.vf_bar_window(slot)
    return sizes


def _frames(rng: np.random.Generator, count: int, vfs: int) -> tuple[np.ndarray, np.ndarray]:
    kinds = rng.choice(list(FRAME_MIX), size=count, p=list(FRAME_MIX.values()))
    vf_macs = VF_MAC_BASE + rng.integers(0, vfs, size=count)
    macs = np.select([kinds == "vf", kinds == "pf", kinds == "broadcast", kinds == "unknown"],
                     [vf_macs, PF_MAC, BROADCAST, UNKNOWN_MAC], vf_macs).astype(np.uint64)
    vlans = np.where(kinds == "filtered", FILTERED_VLAN, -1)
    return macs, vlans


def run(vfs: int = 8, total_vfs: int = 64, first_vf_offset: int = 0x180, vf_stride: int = 2,
        frames: int = 4096, rss: bool = False, default_pool: bool = True, pages: int = 64,
        dma: int = 256, bad: float = 0.05, seed: int = 1) -> Report:
    """Enable the VFs, steer the burst, run the VFs' DMA; see the module docstring."""
    pf = PhysicalFunction(PF_RID, vendor_id=VENDOR_INTEL, vf_device_id=VF_DEVICE_82599,
                          total_vfs=total_vfs, geometry=(first_vf_offset, vf_stride),
                          bars=[VF_BARS.get(slot) for slot in range(max(VF_BARS) + 2)])
    bar_sizes = _probe_bars(pf)
    functions = enable_vfs(pf, vfs)
    rng = np.random.default_rng(seed)
    regs, pf_pool = vmdq_registers(vfs, rss, default_pool)
    macs, vlans = _frames(rng, frames, vfs)
    steering = steer(regs, macs, vlans, rng.integers(0, 1 << 32, size=frames))
    dma_results, recorded = _vf_dma(functions, pages, dma, bad, rng)
    figures = {
        "pf": {"rid": PF_RID, "bus": PF_RID >> 8, "first_vf_offset": pf.first_vf_offset,
               "vf_stride": pf.vf_stride, "vf_bar_sizes": bar_sizes,
               "vf_bar_windows": {slot: pf.vf_bar_window(slot) for slot in VF_BARS}},
        "vfs": [{"index": vf.index, "rid": vf.rid, "address": str(vf), "bus": vf.bus,
                 "bars": {slot: vf.bars[slot] for slot in VF_BARS}} for vf in functions],
        "buses": sorted({vf.bus for vf in functions}),
        "steering": _steering_figures(steering, macs, pf_pool),
        "dma": dma_results,
        "faults_recorded": recorded,
    }
    return Report("sriov", figures, _tables(figures, functions, pf_pool))


def _steering_figures(steering, macs: np.ndarray, pf_pool: int) -> dict:
    pools = steering.pools
    per_pool = {p: int(np.count_nonzero(pools >> np.uint64(p) & np.uint64(1)))
                for p in range(pf_pool + 1)}
    per_queue: Counter[int] = Counter()
    for p in range(pf_pool + 1):
        members = (pools >> np.uint64(p) & np.uint64(1)) != 0
        per_queue.update((p * steering.queues_per_pool + steering.offset[members]).tolist())
    unknown = macs == UNKNOWN_MAC
    return {
        "frames": len(pools),
        "delivered": int(np.count_nonzero(~steering.dropped)),
        "dropped": int(np.count_nonzero(steering.dropped)),
        "replicated": int(np.count_nonzero(pools & (pools - np.uint64(1)))),
        "to_default_pool": int(np.count_nonzero(unknown & ~steering.dropped)),
        "queues_per_pool": steering.queues_per_pool,
        "per_pool": per_pool,
        "per_queue": dict(sorted(per_queue.items())),
    }


def _vf_dma(functions, pages: int, count: int, bad: float,
            rng: np.random.Generator) -> tuple[list[dict], dict[str, int]]:
    """Each VF in a domain of its own, its writes through a remapping unit whose faults the
    host services at each fault event."""
    mem = HostMemory(8 << 20, table_area=(1 << 20, 8 << 20))
    try:
        root = RootTable(mem, mem.frames)
        for vf in functions:
            tables = SecondLevelTables(mem, mem.frames, 4)
            for page in range(pages):
                tables.map(IOVA_BASE + page * PAGE_4K,
                           BUFFER_HPA + (vf.index * pages + page) * PAGE_4K)
            root.attach(vf.rid, vf.index + 1, tables)
        service = FaultService()
        unit = RemappingUnit(mem, VtdCaps(), msi=service.msi)
        service.unit = unit
        program_unit(unit, root, interrupt_faults=True)
        results = []
        for vf in functions:
            span = pages * PAGE_4K
            iovas = IOVA_BASE + rng.integers(0, span, size=count)
            iovas = np.where(rng.random(count) < bad, iovas + span, iovas)
            answers = vf_dma(vf, unit, iovas.tolist(), "w")
            faults = Counter(reason_name(a.reason) for a in answers if isinstance(a, DmaFault))
            results.append({"vf": vf.index, "source_id": vf.rid, "domain": vf.index + 1,
                            "requests": count, "translated": count - sum(faults.values()),
                            "faults_by_reason": dict(faults)})
    finally:
        mem.close()
    return results, {reason_name(r): n for r, n in sorted(service.recorded.items())}


def _tables(figures: dict, functions, pf_pool: int) -> list[Table]:
    pf = figures["pf"]
    bar_columns = [f"BAR{slot} ({pf['vf_bar_sizes'][slot] >> 10} KiB)" for slot in VF_BARS]
    vf_table = Table(f"PF 3b:00.0 and its VFs (First VF Offset {pf['first_vf_offset']:#x}, "
                     f"VF Stride {pf['vf_stride']})",
                     ["VF", "RID", "address", "bus crossed", *bar_columns])
    for vf in functions:
        vf_table.rows.append([vf.index, f"{vf.rid:#06x}", str(vf),
                              "yes" if vf.bus != PF_RID >> 8 else "no",
                              *(f"{vf.bars[slot][0]:#x}" for slot in VF_BARS)])
    s = figures["steering"]
    qpp = s["queues_per_pool"]
    pools = Table("VMDq pools", ["pool", "owner", "frames",
                                 *(f"queue {q}" for q in range(qpp))])
    for pool, n in s["per_pool"].items():
        owner = "PF (default)" if pool == pf_pool else f"VF{pool}"
        pools.rows.append([pool, owner, n,
                           *(s["per_queue"].get(pool * qpp + q, 0) for q in range(qpp))])
    steering = Table("Steering", ["what", "frames"], [
        ["received", s["frames"]], ["delivered to a pool", s["delivered"]],
        ["replicated (broadcast)", s["replicated"]],
        ["unknown unicast to the default pool", s["to_default_pool"]],
        ["dropped", s["dropped"]]])
    dma = Table("VF DMA through VT-d", ["VF", "source-id", "requests", "translated",
                                        "faults by reason"])
    for r in figures["dma"]:
        dma.rows.append([r["vf"], f"{r['source_id']:#06x}", r["requests"], r["translated"],
                         ", ".join(f"{k}: {n}" for k, n in r["faults_by_reason"].items())
                         or "-"])
    recorded = Table("Faults recorded by the unit", ["reason", "recorded"],
                     [[k, n] for k, n in figures["faults_recorded"].items()])
    return [vf_table, pools, steering, dma, recorded]
