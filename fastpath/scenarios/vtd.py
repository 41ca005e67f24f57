"""Devices' DMA bursts through a VT-d remapping unit (`RemappingUnit`), programmed through its
registers as a host driver programs it: translations, faults by reason as the walker found
them and as the fault recording registers recorded them, the context cache and IOTLB, a
queued invalidation ended by a wait descriptor, and interrupt remapping of the devices' MSIs.

What is modelled: --devices functions of device 03:00, each attached to a domain of its own
with 4-level second-level tables mapping --pages 4 KiB buffer pages (one page in 8 read-only:
rings the device only reads), and function 7, which has no context entry. Each device sends
--bursts bursts of --burst-size DMA requests (reads and writes in turn) to random IOVAs of its
buffers, of which a fraction --bad is wrong: half on unmapped pages, half beyond the 48-bit
address width. After each burst it signals completion with a remappable-format MSI through
its IRTE; function 7 sends one burst and a compatibility-format MSI, which the unit blocks.
Faults are serviced as Linux's dmar_fault does (read each pending record, clear its F bit,
clear PFO): at each fault event (--fault-handling interrupt), or once after the run
(deferred), when faults of a source-id with a pending record are not recorded and, once every
record is pending, the next fault sets Primary Fault Overflow and is lost. Then queued
invalidation is turned on and an IOTLB invalidation (--invalidate) with a context-cache one
and a wait descriptor (status write and completion interrupt) is submitted, and the devices'
bursts are replayed.

Tables:
  DMA              requests, translated, faults and paging-structure reads, per pass
  Faults by reason the walker's fault reasons, and what reached the fault recording registers
  Fault recording  records read by the handler, faults not recorded, overflows (PFO), events
  Caches           context cache and IOTLB hits and misses per pass, and what the queued
                   invalidation dropped
  Interrupts       MSIs remapped through IRTEs, blocked, and the interrupt entry cache
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from fastpath.errors import InterruptRemappingFault
from fastpath.hv import HostMemory
from fastpath.hv.vtd import (
    PAGE_4K,
    Descriptor,
    FaultReason,
    Fsts,
    Gcmd,
    Reg,
    RemappingUnit,
    RootTable,
    SecondLevelTables,
    VtdCaches,
    VtdCaps,
    irta,
    remappable_msi,
    remapped_irte,
    source_id,
    write_irte,
)
from fastpath.scenarios._options import (
    fraction,
    positive_int,
    positive_int_up_to,
    power_of_two,
    whole_number,
)
from fastpath.scenarios._report import Report, Table

BUS, DEVICE = 0x03, 0x00
UNATTACHED_FUNCTION = 7
MAX_DEVICES = 7
MAX_PAGES = 1 << 14         # the devices' tables fit the table area below
IOVA_BASE = 0x1_0000_0000
BUFFER_HPA = 1 << 40          # DMA data needs no host memory: translation reads only tables
BEYOND_ADDRESS_WIDTH = 1 << 48
READ_ONLY_EVERY = 8
# Host memory: the tables, then the invalidation queue, the wait status word and the
# interrupt remapping table.
TABLES = (1 << 20, 6 << 20)
QUEUE = 6 << 20
STATUS = QUEUE + PAGE_4K
IRT = STATUS + PAGE_4K
HOST_MEMORY = 8 << 20
IRT_ENTRIES = 256
# Where the unit's events go: the fault event and the invalidation completion event.
FAULT_EVENT = (0xFEE0_0000, 0x40)
COMPLETION_EVENT = (0xFEE0_0000, 0x41)
INVALIDATIONS = {"global": 1, "domain": 2, "page": 3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `fastpath hv vtd`."""
    parser.add_argument("--devices", type=positive_int_up_to(MAX_DEVICES),
                        help=f"functions of device 03:00 doing DMA, 1 to {MAX_DEVICES}")
    parser.add_argument("--bursts", type=positive_int, help="bursts each device sends")
    parser.add_argument("--burst-size", type=positive_int, help="DMA requests in a burst")
    parser.add_argument("--pages", type=positive_int_up_to(MAX_PAGES),
                        help="buffer pages each device maps")
    parser.add_argument("--bad", type=fraction,
                        help="fraction of IOVAs that are wrong (unmapped, or beyond the "
                        "address width)")
    parser.add_argument("--fault-handling", choices=("interrupt", "deferred"),
                        help="service the fault records at each fault event, or once after "
                        "the bursts (records fill up: compression and overflow)")
    parser.add_argument("--fault-records", type=positive_int,
                        help="fault recording registers the unit has (CAP.NFR + 1)")
    parser.add_argument("--invalidate", choices=tuple(INVALIDATIONS),
                        help="the queued IOTLB invalidation's granularity (domain and page: "
                        "the first device's domain, page: its first buffer page)")
    parser.add_argument("--iotlb-entries", type=power_of_two, help="IOTLB entries")
    parser.add_argument("--context-entries", type=power_of_two, help="context-cache entries")
    parser.add_argument("--seed", type=whole_number, help="seed of the IOVAs")


def reason_name(reason: int) -> str:
    """A fault reason's number and name (interrupt-remapping reasons are 0x20-0x28)."""
    if reason in FaultReason._value2member_map_:
        return f"{reason:#x} {FaultReason(reason).name}"
    return f"{reason:#x} interrupt remapping"


class FaultService:
    """The host's fault handler, as Linux's dmar_fault: read each pending fault record,
    count it, clear its F bit (write 1 to clear), then clear PFO if it was set."""

    def __init__(self):
        self.unit: RemappingUnit | None = None
        self.recorded: Counter[int] = Counter()
        self.overflows = 0
        self.fault_events = 0
        self.completion_events = 0

    def msi(self, address: int, data: int) -> None:
        """The unit's interrupts: a fault event is serviced at once."""
        if (address, data) == FAULT_EVENT:
            self.fault_events += 1
            self.service()
        elif (address, data) == COMPLETION_EVENT:
            self.completion_events += 1

    def service(self) -> None:
        """Read and clear every pending record, then PFO."""
        unit = self.unit
        for k in range(unit.caps.fault_records):
            hi = unit.read(Reg.FRCD + 16 * k + 8, 8)
            if hi >> 63:
                self.recorded[hi >> 32 & 0xFF] += 1
                unit.write(Reg.FRCD + 16 * k + 8, 8, 1 << 63)
        if unit.read(Reg.FSTS, 4) & Fsts.PFO:
            self.overflows += 1
            unit.write(Reg.FSTS, 4, Fsts.PFO)


def command(unit: RemappingUnit, bit: int) -> None:
    """Software's GCMD write: the current levels with one more command set (hv.md §3.1)."""
    status = unit.read(Reg.GSTS, 4) & ~(Gcmd.SRTP | Gcmd.SIRTP)
    unit.write(Reg.GCMD, 4, status | bit)


def program_unit(unit: RemappingUnit, root: RootTable, interrupt_faults: bool) -> None:
    """What a host driver does before DMA is remapped: the event addresses and data (the
    completion event unmasked, the fault event too with `interrupt_faults`), the root table
    latched with SRTP, then translation enabled."""
    unit.write(Reg.FEADDR, 4, FAULT_EVENT[0])
    unit.write(Reg.FEDATA, 4, FAULT_EVENT[1])
    unit.write(Reg.IEADDR, 4, COMPLETION_EVENT[0])
    unit.write(Reg.IEDATA, 4, COMPLETION_EVENT[1])
    unit.write(Reg.IECTL, 4, 0)
    if interrupt_faults:
        unit.write(Reg.FECTL, 4, 0)
    unit.write(Reg.RTADDR, 8, root.root)
    command(unit, Gcmd.SRTP)
    command(unit, Gcmd.TE)


class VtdPlatform:
    """Host memory with the root table, a domain per device and the interrupt remapping
    table, and a unit programmed through its registers."""

    def __init__(self, devices: int, pages: int, caps: VtdCaps, caches: VtdCaches,
                 interrupt_faults: bool):
        self.mem = HostMemory(HOST_MEMORY, table_area=TABLES)
        self.root = RootTable(self.mem, self.mem.frames)
        self.sids = [source_id(BUS, DEVICE, f) for f in range(devices)]
        self.unattached = source_id(BUS, DEVICE, UNATTACHED_FUNCTION)
        self.domains = {}
        for function, sid in enumerate(self.sids):
            tables = SecondLevelTables(self.mem, self.mem.frames, 4)
            for page in range(pages):
                perms = "r" if page % READ_ONLY_EVERY == READ_ONLY_EVERY - 1 else "rw"
                tables.map(IOVA_BASE + page * PAGE_4K,
                           BUFFER_HPA + (function * pages + page) * PAGE_4K, PAGE_4K, perms)
            self.domains[sid] = function + 1
            self.root.attach(sid, function + 1, tables)
            write_irte(self.mem, IRT, function, remapped_irte(0x30 + function, 0))
        self.faults = FaultService()
        self.unit = RemappingUnit(self.mem, caps, caches=caches, msi=self.faults.msi)
        self.faults.unit = self.unit
        program_unit(self.unit, self.root, interrupt_faults)
        self.unit.write(Reg.IRTA, 8, irta(IRT, IRT_ENTRIES))
        command(self.unit, Gcmd.SIRTP)
        command(self.unit, Gcmd.IRE)

    def submit(self, *descriptors: Descriptor) -> None:
        """Write descriptors at the queue's tail and ring the IQT doorbell."""
        tail = self.unit.queue_tail()
        _, size, entries = self.unit.queue_geometry()
        for d in descriptors:
            self.mem.write64(QUEUE + size * tail, d.lo)
            self.mem.write64(QUEUE + size * tail + 8, d.hi)
            tail = (tail + 1) % entries
        self.unit.write(Reg.IQT, 8, tail * size)   # IQT holds a byte offset

    def close(self) -> None:
        """Let go of host memory."""
        self.mem.close()


def _iovas(rng: np.random.Generator, pages: int, count: int, bad: float) -> np.ndarray:
    iovas = IOVA_BASE + rng.integers(0, pages * PAGE_4K, size=count, dtype=np.uint64)
    wrong = rng.random(count) < bad
    unmapped = IOVA_BASE + pages * PAGE_4K + rng.integers(0, pages * PAGE_4K, size=count,
                                                          dtype=np.uint64)
    beyond = BEYOND_ADDRESS_WIDTH + iovas
    halves = np.arange(count) % 2 == 0
    return np.where(wrong, np.where(halves, unmapped, beyond), iovas).astype(np.uint64)


def _dma_pass(platform: VtdPlatform, plan: list[tuple[int, np.ndarray, str]],
              interrupts: Counter) -> dict:
    caches = platform.unit.caches
    caches.reset_counters()
    faults: Counter[int] = Counter()
    requests = translated = references = 0
    for sid, iovas, access in plan:
        burst = platform.unit.dma_burst(sid, iovas, access)
        requests += len(iovas)
        translated += burst.translated
        references += burst.references
        faults.update(int(r) for r in burst.reasons if r)
        _completion_interrupt(platform, sid, interrupts, faults)
    return {"requests": requests, "translated": translated, "references": references,
            "faults_by_reason": faults,
            "iotlb_hits": caches.iotlb_hits, "iotlb_misses": caches.iotlb_misses,
            "context_hits": caches.context_hits, "context_misses": caches.context_misses}


def _completion_interrupt(platform: VtdPlatform, sid: int, interrupts: Counter,
                          faults: Counter) -> None:
    # An attached device's MSI names its IRTE; the unattached one writes a compatibility-
    # format MSI, which the unit blocks with CFI off.
    if sid == platform.unattached:
        address, data = 0xFEE0_0000, 0x30
    else:
        address, data = remappable_msi(platform.sids.index(sid))
    try:
        platform.unit.remap_interrupt(sid, address, data)
    except InterruptRemappingFault as fault:
        interrupts["blocked"] += 1
        faults[fault.reason] += 1
    else:
        interrupts["remapped"] += 1


def run(devices: int = 4, bursts: int = 8, burst_size: int = 64, pages: int = 64,
        bad: float = 0.05, fault_handling: str = "interrupt", fault_records: int = 8,
        invalidate: str = "domain", iotlb_entries: int = 1024, context_entries: int = 256,
        seed: int = 1) -> Report:
    """Run the devices' DMA through the unit, invalidate, run it again; see the module
    docstring."""
    platform = VtdPlatform(devices, pages, VtdCaps(fault_records=fault_records),
                           VtdCaches(iotlb_entries, context_entries),
                           fault_handling == "interrupt")
    try:
        rng = np.random.default_rng(seed)
        plan = [(sid, _iovas(rng, pages, burst_size, bad), "rw"[k % 2])
                for k in range(bursts) for sid in platform.sids]
        plan.append((platform.unattached, _iovas(rng, pages, burst_size, 0), "r"))
        interrupts: Counter[str] = Counter()
        first = _dma_pass(platform, plan, interrupts)
        if fault_handling == "deferred":
            platform.faults.service()
        invalidation = _queued_invalidation(platform, invalidate, pages)
        second = _dma_pass(platform, plan, interrupts)
        platform.faults.service()
        entry_cache = platform.unit.interrupt_entries
        figures = {
            "devices": [{"source_id": f"{sid >> 8:02x}:{sid >> 3 & 0x1F:02x}.{sid & 7}",
                         "domain": platform.domains.get(sid)}
                        for sid in [*platform.sids, platform.unattached]],
            "passes": {"before_invalidation": _named(first), "after_invalidation":
                       _named(second)},
            "faults": {
                "by_walker": sum(first["faults_by_reason"].values())
                + sum(second["faults_by_reason"].values()),
                "recorded": sum(platform.faults.recorded.values()),
                "recorded_by_reason": {reason_name(r): n
                                       for r, n in sorted(platform.faults.recorded.items())},
                "overflows": platform.faults.overflows,
                "fault_events": platform.faults.fault_events,
            },
            "invalidation": invalidation,
            "interrupts": {"remapped": interrupts["remapped"], "blocked": interrupts["blocked"],
                           "entry_cache_hits": entry_cache.hits,
                           "entry_cache_misses": entry_cache.misses},
        }
    finally:
        platform.close()
    return Report("vtd", figures, _tables(figures, first, second, platform.faults))


def _queued_invalidation(platform: VtdPlatform, granularity: str, pages: int) -> dict:
    unit, caches = platform.unit, platform.unit.caches
    domain = platform.domains[platform.sids[0]]
    before = {"iotlb_entries": caches.iotlb_size, "context_entries": caches.context_size}
    unit.write(Reg.IQA, 8, QUEUE)
    command(unit, Gcmd.QIE)
    events_before = platform.faults.completion_events
    platform.submit(Descriptor.iotlb(INVALIDATIONS[granularity], domain, IOVA_BASE),
                    Descriptor.context_cache(INVALIDATIONS["global"]),
                    Descriptor.wait(STATUS, 1, interrupt=True))
    status = platform.mem.read64(STATUS) & 0xFFFF_FFFF
    unit.write(Reg.ICS, 4, 1)       # acknowledge the completion (write 1 to clear IWC)
    return {"granularity": granularity, "domain": domain, "before": before,
            "after": {"iotlb_entries": caches.iotlb_size,
                      "context_entries": caches.context_size},
            "wait_status": status,
            "completion_interrupts": platform.faults.completion_events - events_before,
            "queue_error": bool(unit.read(Reg.FSTS, 4) & Fsts.IQE)}


def _named(dma_pass: dict) -> dict:
    return dma_pass | {"faults_by_reason": {reason_name(r): n for r, n in
                                            sorted(dma_pass["faults_by_reason"].items())}}


def _tables(figures: dict, first: dict, second: dict, service: FaultService) -> list[Table]:
    passes = (("before invalidation", first), ("after invalidation", second))
    dma = Table("DMA", ["pass", "requests", "translated", "faults", "refs/request"],
                [[name, p["requests"], p["translated"], p["requests"] - p["translated"],
                  f"{p['references'] / p['requests']:.2f}"] for name, p in passes])
    walker = first["faults_by_reason"] + second["faults_by_reason"]
    reasons = Table("Faults by reason", ["reason", "faulted", "recorded"],
                    [[reason_name(r), walker[r], service.recorded[r]]
                     for r in sorted(walker.keys() | service.recorded.keys())])
    f = figures["faults"]
    recording = Table("Fault recording", ["what", "count"], [
        ["faults (walker)", f["by_walker"]], ["recorded and serviced", f["recorded"]],
        ["not recorded (compressed or overflowed)", f["by_walker"] - f["recorded"]],
        ["primary fault overflows (PFO)", f["overflows"]],
        ["fault events (MSIs)", f["fault_events"]]])
    caches = Table("Caches", ["pass", "context hits", "context misses", "IOTLB hits",
                              "IOTLB misses"],
                   [[name, p["context_hits"], p["context_misses"], p["iotlb_hits"],
                     p["iotlb_misses"]] for name, p in passes])
    inv = figures["invalidation"]
    invalidation = Table(f"Queued invalidation: IOTLB {inv['granularity']}-selective "
                         f"(domain {inv['domain']}), context cache global, wait",
                         ["what", "before", "after"], [
                             ["IOTLB entries", inv["before"]["iotlb_entries"],
                              inv["after"]["iotlb_entries"]],
                             ["context-cache entries", inv["before"]["context_entries"],
                              inv["after"]["context_entries"]],
                             ["wait status word", 0, inv["wait_status"]],
                             ["completion interrupts", 0, inv["completion_interrupts"]]])
    irq = figures["interrupts"]
    interrupts = Table("Interrupts", ["what", "count"], [
        ["MSIs remapped through IRTEs", irq["remapped"]],
        ["MSIs blocked (compatibility format)", irq["blocked"]],
        ["interrupt entry cache hits", irq["entry_cache_hits"]],
        ["interrupt entry cache misses", irq["entry_cache_misses"]]])
    return [dma, reasons, recording, caches, invalidation, interrupts]
