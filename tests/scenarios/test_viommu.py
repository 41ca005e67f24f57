"""The VT-d model behind fastpath's `Frontend`, on fastpath's net back-end (hv.md §5.5): every
translation the back-end uses comes from the guest's second-level tables through the remapping
unit; an invalidation the guest queues withdraws what it reaches from the back-end before the
wait descriptor behind it completes; a DMA to an IOVA the tables do not map is a fault recorded
in the unit's fault recording registers, and everything else goes on."""

from __future__ import annotations

import json
import time

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from fastpath.hv import HostMemory, SharedRegion
from fastpath.hv.vtd import (
    PAGE_1G,
    PAGE_2M,
    PAGE_4K,
    Descriptor,
    FaultReason,
    Fsts,
    Granularity,
    Reg,
    RootTable,
    SecondLevelTables,
    translate,
)
from fastpath.scenarios import VirtualIommu, iotlb_mapping
from fastpath.scenarios.viommu import (
    COMPLETION_MSI,
    RING_IOVA,
    RX_IOVA,
    TX_IOVA,
    UNMAPPED_IOVA,
    ForwardingBackend,
    ViommuGuest,
    exchange,
    frame,
)
from fastpath.scenarios.viommu import run as run_viommu
from fastpath.vhost_user import Frontend
from fastpath.vhost_user.wire import IotlbAccess, IotlbType
from fastpath.vring import VIRTIO_F_VERSION_1

MISS_DEADLINE = 1.0
RING_TYPES = pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])


@pytest.fixture
def backend(tmp_path):
    with ForwardingBackend(str(tmp_path / "vhost.sock"), miss_deadline=MISS_DEADLINE,
                           queue_pairs=2) as served:
        yield served


@pytest.fixture
def guests():
    """Guests made in a test, closed after it."""
    made: list[ViommuGuest] = []
    yield made
    for guest in made:
        guest.close()


def guest_on(backend, guests, **kwargs) -> ViommuGuest:
    guest = ViommuGuest(backend.path, **kwargs)
    guests.append(guest)
    return guest


def frames_for(first: int, n: int = 16) -> list[bytes]:
    return [frame(first + k, 60 + 97 * (k % 15)) for k in range(n)]


def round_trip(guest: ViommuGuest, first: int = 0) -> None:
    """Every pair of the guest sends frames and gets them back, byte for byte."""
    flows = {p: frames_for(first + 100 * p.index) for p in guest.pairs}
    before = {p: len(p.received) for p in guest.pairs}
    exchange(flows)
    for p, sent in flows.items():
        assert p.received[before[p]:] == sent


def engine_of(backend):
    (engine,) = backend.backends
    return engine


def holds(engine, iova: int) -> bool:
    return any(e.iova <= iova < e.end for e in engine.iotlb.entries)


# --- Translations come from the model ---------------------------------------------------------

@RING_TYPES
def test_frames_round_trip_with_every_translation_from_the_vtd_model(backend, guests, packed):
    guest = guest_on(backend, guests, packed=packed, queue_pairs=2)
    round_trip(guest)
    viommu = guest.viommu
    updates = [m for m in viommu.sent if m.type == IotlbType.UPDATE]
    assert updates and viommu.misses == viommu.answered == len(updates)
    assert guest.unit.caches.iotlb_misses > 0 and not viommu.faults
    for update in updates:
        # What the tables say, walked afresh: the update is (part of) that VT-d page, at the
        # user address of its guest-physical address, with the leaf's permissions.
        walked = translate(guest.ram, guest.root.root, guest.source_id, update.iova, "r")
        assert guest.memory.user_to_guest(update.user_addr) == walked.hpa
        assert update.size <= walked.page_size
        assert update.perm == {"rw": IotlbAccess.READ_WRITE, "r": IotlbAccess.READ}[
            walked.permissions]
    # The transmit buffers came as one 2 MiB read-only page, cut to nothing smaller.
    assert any(u.iova == TX_IOVA and u.size == PAGE_2M and u.perm == IotlbAccess.READ
               for u in updates)
    # The back-end holds exactly what was handed out.
    engine = engine_of(backend)
    assert {(e.iova, e.size, e.user_addr) for e in engine.iotlb.entries} <= {
        (u.iova, u.size, u.user_addr) for u in updates}


def test_transmit_buffers_moved_under_the_same_iovas_are_read_from_the_new_memory(backend,
                                                                                   guests):
    guest = guest_on(backend, guests)
    round_trip(guest)
    old = guest.tx_gpa
    guest.move_transmit_buffers()
    # Whatever the old page holds now must never reach the wire.
    guest.memory.write(old, b"\xee" * PAGE_2M)
    round_trip(guest, first=1000)
    assert guest.tx_gpa != old
    invalidations = [m for m in guest.viommu.sent if m.type == IotlbType.INVALIDATE]
    assert [(m.iova, m.size) for m in invalidations] == [(TX_IOVA, PAGE_2M)]


# --- Invalidations reach the back-end before the wait completes -------------------------------

def test_a_page_selective_invalidation_reaches_the_backend_before_the_wait_completes(backend,
                                                                                      guests):
    guest = guest_on(backend, guests)
    round_trip(guest)
    engine = engine_of(backend)
    assert holds(engine, TX_IOVA)
    seen = []
    # Listeners are told in the order they were added: this one hears after the vIOMMU's
    # has returned, at the moment the unit would go on to the wait descriptor.
    guest.unit.add_invalidation_listener(lambda _: seen.append(
        (holds(engine, TX_IOVA), guest.wait_status, list(guest.unit.interrupts))))
    guest.unmap(TX_IOVA, PAGE_2M)
    status = guest.invalidate(Descriptor.iotlb(Granularity.DEVICE_OR_PAGE, guest.domain_id,
                                               TX_IOVA + 0x3000, 9))
    assert seen == [(False, 0, [])]
    assert guest.wait_status == status and guest.unit.interrupts == [COMPLETION_MSI]
    # Nothing else was withdrawn.
    assert holds(engine, RX_IOVA) and holds(engine, RING_IOVA + guest.pairs[0].rx.addresses.desc)


REACHING = {
    "IOTLB global": lambda g: Descriptor.iotlb(Granularity.GLOBAL),
    "IOTLB domain": lambda g: Descriptor.iotlb(Granularity.DOMAIN, g.domain_id),
    "context global": lambda g: Descriptor.context_cache(Granularity.GLOBAL),
    "context domain": lambda g: Descriptor.context_cache(Granularity.DOMAIN, g.domain_id),
    "context device": lambda g: Descriptor.context_cache(Granularity.DEVICE_OR_PAGE, 0,
                                                         g.source_id),
    # FM 3 leaves out the function number: function 5 of the same device names it too.
    "context device, function mask": lambda g: Descriptor.context_cache(
        Granularity.DEVICE_OR_PAGE, 0, g.source_id | 5, 3),
}


@pytest.mark.parametrize("kind", sorted(REACHING))
def test_a_domain_global_or_context_invalidation_withdraws_everything_handed_out(backend,
                                                                                  guests, kind):
    guest = guest_on(backend, guests)
    round_trip(guest)
    engine = engine_of(backend)
    handed_out = list(guest.viommu.mappings)
    assert handed_out and engine.iotlb.entries
    sent_before = len(guest.viommu.sent)
    guest.invalidate(REACHING[kind](guest))
    assert engine.iotlb.entries == [] and guest.viommu.mappings == []
    invalidated = [(m.iova, m.iova + m.size) for m in guest.viommu.sent[sent_before:]]
    assert all(m.type == IotlbType.INVALIDATE for m in guest.viommu.sent[sent_before:])
    assert all(any(a <= m.iova and m.end <= b for a, b in invalidated) for m in handed_out)
    # The rings went with their mappings (DPDK's vring_invalidate): they come back by misses.
    assert not engine.vrings[0].started
    round_trip(guest, first=1000)


ELSEWHERE = {
    "IOTLB of another domain": lambda g: Descriptor.iotlb(Granularity.DOMAIN, g.domain_id + 1),
    "IOTLB page nothing was handed out for": lambda g: Descriptor.iotlb(
        Granularity.DEVICE_OR_PAGE, g.domain_id, 0x7_0000_0000),
    "context of another domain": lambda g: Descriptor.context_cache(Granularity.DOMAIN,
                                                                    g.domain_id + 1),
    "context of another device": lambda g: Descriptor.context_cache(
        Granularity.DEVICE_OR_PAGE, 0, g.source_id + 1),
    "device-TLB of another device": lambda g: Descriptor.device_tlb(g.source_id + 1, TX_IOVA),
}


@pytest.mark.parametrize("kind", sorted(ELSEWHERE))
def test_an_invalidation_that_does_not_reach_the_device_withdraws_nothing(backend, guests,
                                                                           kind):
    guest = guest_on(backend, guests)
    round_trip(guest)
    entries = list(engine_of(backend).iotlb.entries)
    sent = len(guest.viommu.sent)
    guest.invalidate(ELSEWHERE[kind](guest))
    assert engine_of(backend).iotlb.entries == entries and len(guest.viommu.sent) == sent


def test_a_device_tlb_invalidation_withdraws_its_range_alone(backend, guests):
    guest = guest_on(backend, guests)
    round_trip(guest)
    engine = engine_of(backend)
    # hv.md §3.7: S = 1 with ADDR[20:12] = 0xFF is 8 KiB << 8 = 2 MiB from TX_IOVA.
    guest.invalidate(Descriptor.device_tlb(guest.source_id, TX_IOVA | 0xFF000, True))
    assert not holds(engine, TX_IOVA) and holds(engine, RX_IOVA)
    assert [(m.iova, m.size) for m in guest.viommu.sent if m.type == IotlbType.INVALIDATE] == [
        (TX_IOVA, PAGE_2M)]


# --- Faults -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("direction", "reason"), [("receive", FaultReason.FR_WRITE),
                                                   ("transmit", FaultReason.FR_READ)])
def test_a_dma_to_an_unmapped_iova_is_a_recorded_fault_and_the_rest_goes_on(backend, guests,
                                                                            direction, reason):
    good = guest_on(backend, guests, queue_pairs=2)
    hostile = guest_on(backend, guests, queue_pairs=2, bus=1, domain_id=2)
    bad, other = hostile.pairs
    if direction == "receive":
        bad.post_receive_buffer_at(UNMAPPED_IOVA)
        flows = {bad: frames_for(0)}
    else:
        # The device takes from a transmitq while its receiveq has room.
        bad.post_receive_buffers(4)
        bad.post_transmit_buffer_at(UNMAPPED_IOVA + 0x80, 200)
        flows = {}
    flows |= {p: frames_for(500 + 100 * p.index) for p in (*good.pairs, other)}
    exchange(flows, until=lambda: hostile.viommu.faults and all(
        len(p.received) == len(flows[p]) for p in (*good.pairs, other)))
    # The unit recorded it as it records a device's DMA fault (hv.md §3.5): the page, the
    # hostile device's source-id, the reason, T = 1 for a read.
    (record,) = [(lo, hi) for lo, hi in hostile.unit.records() if hi >> 63]
    lo, hi = record
    assert lo == UNMAPPED_IOVA
    assert hi & 0xFFFF == hostile.source_id and hi >> 32 & 0xFF == reason
    assert hi >> 62 & 1 == (reason == FaultReason.FR_READ)
    assert hostile.unit.read(Reg.FSTS, 4) & Fsts.PPF
    assert [f.reason for f in hostile.viommu.faults] == [reason]
    assert not any(hi >> 63 for _, hi in good.unit.records())
    # Nothing was handed out for it; the other pair and the other guest moved every frame.
    assert not any(m.iova <= UNMAPPED_IOVA < m.end for m in hostile.viommu.mappings)
    assert bad.received == []
    for p in (*good.pairs, other):
        assert p.received == flows[p]
    # The back-end gives the starved ring up after its deadline; the connection goes on.
    hostile_engine = backend.backends[1]        # connected second
    deadline = time.monotonic() + 5 * MISS_DEADLINE
    ring = 0 if direction == "receive" else 1
    while hostile_engine.vrings[ring].started and time.monotonic() < deadline:
        hostile.poll()
    assert not hostile_engine.vrings[ring].started
    round_trip_pair(other, 900)
    round_trip(good, first=900)


def round_trip_pair(pair, first: int) -> None:
    sent = frames_for(first)
    before = len(pair.received)
    exchange({pair: sent})
    assert pair.received[before:] == sent


def test_a_miss_the_unit_cannot_answer_gets_no_update_and_no_record(backend, guests):
    guest = guest_on(backend, guests)
    viommu = guest.viommu
    # An interrupt address and a miss asking for no access are answered with nothing, and
    # are no DMA fault of the device.
    assert viommu.resolve(0xFEE00010, IotlbAccess.WRITE) is None
    assert viommu.resolve(RX_IOVA, IotlbAccess.NONE) is None
    assert not any(hi >> 63 for _, hi in guest.unit.records()) and not viommu.faults
    # The tables map it, but to a guest address in the hole between the regions.
    guest.map(0x6_0000_0000, 5 << 20)
    assert viommu.resolve(0x6_0000_0123, IotlbAccess.READ) is None
    assert viommu.misses == 3 and viommu.answered == 0 and viommu.mappings == []


# --- The scenario --------------------------------------------------------------------------------

def test_the_scenario_reports_what_moved_and_what_the_hostile_guest_lost():
    report = run_viommu(frames=8)
    figures = report.figures
    good, hostile = figures["guests"]["well-behaved"], figures["guests"]["hostile"]
    assert good["frames_sent"] == good["frames_moved"] == 3 * 2 * 8 and good["frames_lost"] == 0
    assert good["invalidations_sent"] == 1 and good["faults_recorded"] == 0
    assert hostile["frames_sent"] == 2 * 8 and hostile["frames_lost"] == 8
    assert hostile["faults_recorded"] == 1 and hostile["misses"] == hostile["misses_answered"] + 1
    for key in ("misses", "updates_sent", "frames_moved", "frames_lost", "faults_recorded"):
        assert figures[key] == good[key] + hostile[key]
    assert figures["updates_sent"] == figures["misses_answered"]
    assert json.loads(json.dumps(report.as_dict()))["scenario"] == "viommu"


# --- Bad input ------------------------------------------------------------------------------------

def test_a_front_end_without_access_platform_has_no_viommu(backend, guests):
    guest = guest_on(backend, guests)
    plain = Frontend(backend.path)
    try:
        plain.negotiate(1 << VIRTIO_F_VERSION_1)
        with pytest.raises(ValueError, match="ACCESS_PLATFORM"):
            VirtualIommu(guest.unit, guest.source_id, guest.memory, plain)
        with pytest.raises(ValueError, match="source-id"):
            VirtualIommu(guest.unit, 1 << 16, guest.memory, guest.frontend)
    finally:
        plain.close()
    with pytest.raises(ValueError, match="queue pairs"):
        ViommuGuest(backend.path, queue_pairs=5)
    for frames in (0, 257):
        with pytest.raises(ValueError, match="frames a queue pair"):
            run_viommu(frames=frames)


# --- The update a translation gives (hv.md §5.3) -----------------------------------------------

PAGE_SIZES = [PAGE_4K, PAGE_2M, PAGE_1G]


@st.composite
def translated_miss(draw):
    """A VT-d page (any size, any permissions) over guest-physical memory, an IOVA in it, and
    memory regions placed anywhere around its output."""
    page = draw(st.sampled_from(PAGE_SIZES))
    page_iova = draw(st.integers(1, (1 << 47) // page - 1)) * page
    page_gpa = draw(st.integers(0, (1 << 40) // page - 1)) * page
    offset = draw(st.integers(0, page - 1))
    perms = draw(st.sampled_from(["r", "w", "rw"]))
    # Up to four regions, 4 KiB-granular, in order with holes between.
    regions, at = [], max(0, page_gpa - 2 * page)
    for _ in range(draw(st.integers(1, 4))):
        at += draw(st.integers(0, 2 * page // PAGE_4K)) * PAGE_4K
        size = draw(st.integers(1, 3 * page // PAGE_4K)) * PAGE_4K
        user = draw(st.integers(1, 1 << 30)) * PAGE_4K
        regions.append(SharedRegion(-1, at, size, user))
        at += size
    return page, page_iova, page_gpa, offset, perms, regions


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(translated_miss())
def test_an_update_lies_inside_the_vtd_page_and_the_region_and_covers_the_miss(case):
    page, page_iova, page_gpa, offset, perms, regions = case
    mem = HostMemory(64 * PAGE_4K)
    root = RootTable(mem, mem.frames)
    tables = SecondLevelTables(mem, mem.frames, 4)
    tables.map(page_iova, page_gpa, page, perms)
    root.attach(0x18, 7, tables)
    iova = page_iova + offset
    translation = translate(mem, root.root, 0x18, iova, "w" if "w" in perms else "r")
    mapping = iotlb_mapping(translation, iova, regions)
    gpa = page_gpa + offset
    holder = [r for r in regions if r.guest_phys_addr <= gpa < r.guest_phys_addr + r.size]
    if not holder:
        assert mapping is None
        return
    (region,) = holder
    assert mapping.iova <= iova < mapping.end
    assert page_iova <= mapping.iova and mapping.end <= page_iova + page
    start_gpa = page_gpa + (mapping.iova - page_iova)
    assert region.guest_phys_addr <= start_gpa
    assert start_gpa + mapping.size <= region.guest_phys_addr + region.size
    assert mapping.user_addr == region.user_addr + start_gpa - region.guest_phys_addr
    assert mapping.perm == {"r": IotlbAccess.READ, "w": IotlbAccess.WRITE,
                            "rw": IotlbAccess.READ_WRITE}[perms]
    assert mapping.domain_id == 7
    # As big as it can be: the whole page, or up to an edge of the region.
    assert mapping.size == page or start_gpa == region.guest_phys_addr or (
        start_gpa + mapping.size == region.guest_phys_addr + region.size)

