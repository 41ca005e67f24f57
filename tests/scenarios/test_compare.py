"""`fastpath hv compare` (issue 14): one workload through every I/O path, priced per frame.

The virtio path's counts follow from the rings' notification suppression (virtio 1.2 §2.7.7,
§2.7.10), from the real `fastpath vhost-net` back-end's --backoff in each variant, and from
how completions reach the guest: a kick is an EPT-misconfiguration exit (spec hv §1.6), an
interrupt an external-interrupt exit, its injection and the EOI's MSR-write exit. The
report's figures are checked against the paths' own counters, recorded as the scenario ran
them."""

import json

import pytest

from fastpath.cli import main
from fastpath.hv.vmx import CostModel, ExitReason
from fastpath.hv.vtd import IommuCost
from fastpath.scenarios import compare
from fastpath.scenarios._io_path import COST_COMPONENTS, IoWorkload
from fastpath.scenarios._virtio_guest import KICK_MODES, RECEIVEQ, TRANSMITQ, run_virtio_mode

FRAMES, BURST = 256, 32
BURSTS = FRAMES // BURST
GUESTS = 2


# Every test here reads runs against real `fastpath vhost-net` processes, which the
# FASTPATH_DEBUG=1 pass would compile afresh at each start (it caches no kernels).
pytestmark = pytest.mark.release_pass

@pytest.fixture(scope="module")
def polled():
    """The virtio path's runs with completion by polling, by kick mode, as `run_virtio` makes
    them, with their kicks by virtqueue."""
    return {mode: run_virtio_mode(mode, IoWorkload(FRAMES, 64, BURST, "poll"))
            for mode in KICK_MODES}


@pytest.fixture(scope="module")
def recorded():
    """The default report, run with exit and walk costs of its own, and the PathResults each
    path handed it."""
    handed = []

    def recording(path):
        def run(workload, **options):
            results = path.run(workload, **options)
            handed.extend(results)
            return results
        return compare.IoPath(path.name, run, path.options)

    saved = compare.PATHS
    compare.PATHS = tuple(recording(path) for path in saved)
    try:
        report = compare.run(frames=FRAMES, burst=BURST, guests=GUESTS, exit_cycles=900,
                             iommu_walk_cycles=2000)
    finally:
        compare.PATHS = saved
    return report, handed


def _kick_exits(result):
    return result.counters.by_reason().get(ExitReason.EPT_MISCONFIG, 0)


def test_every_path_and_variant_brings_every_frame_back_intact(polled, recorded):
    _, handed = recorded
    for result in [*polled.values(), *handed]:
        assert result.frames_intact == result.workload.frames


def test_without_event_idx_a_sleeping_back_end_costs_a_kick_per_burst_at_most(polled):
    # Asleep between bursts, the back-end asked for kicks on both rings: each burst's
    # transmit kick, and the receive kick for the buffers the driver refilled after it (and
    # for those it posted at start), but for what the driver did while the back-end was awake
    # between two sleeps, which depends on how the two processes were scheduled.
    run = polled["notify"]
    assert BURSTS / 2 < run.kicks[TRANSMITQ] <= BURSTS
    assert run.kicks[RECEIVEQ] <= BURSTS + 1
    assert _kick_exits(run) == run.kicks[TRANSMITQ] + run.kicks[RECEIVEQ]


def test_a_sleeping_back_end_reads_every_kick_the_vmm_wrote_but_the_last_one_per_queue(
        polled, recorded):
    # It reads its transmitq's and receiveq's kick eventfds whenever it sleeps; only a kick
    # written just before the guest left can go unread. Without the VMM's eventfd writes it
    # would read none.
    _, handed = recorded
    notify = [r for r in _virtio(handed) if r.variant == "notify"]
    reads = [(polled["notify"].backend_wakes["kicks_read"], _kick_exits(polled["notify"])),
             *((r.backend_kicks_read, _kick_exits(r)) for r in notify)]
    for kicks_read, kicks in reads:
        assert kicks - 2 <= kicks_read <= kicks
    for mode in ("event-idx", "poll"):   # --backoff 0: it never sleeps
        assert polled[mode].backend_wakes == {"kicks_read": 0, "sleeps": 0,
                                              "woken_by_eventfd": 0}


def test_event_idx_with_a_busy_back_end_costs_fewer_kicks_than_bursts(polled):
    # Polling on, the back-end never moves the avail events it left at 0: the buffers posted
    # at start cross the receiveq's, the first burst the transmitq's, and nothing after.
    assert _kick_exits(polled["event-idx"]) == 2 < BURSTS


def test_a_polling_back_end_costs_no_kick_exits(polled):
    assert polled["poll"].counters.by_reason() == {}


def test_polled_completions_cost_no_interrupt_and_no_exit(polled):
    for result in polled.values():
        assert result.counters.progress.injected == 0
        assert set(result.counters.by_reason()) <= {ExitReason.EPT_MISCONFIG}


def _virtio(handed):
    return [result for result in handed if result.path == "virtio"]


def test_completion_by_interrupt_costs_an_ipi_exit_an_injection_and_an_eoi_exit_per_burst(
        recorded):
    _, handed = recorded
    for result in _virtio(handed):
        exits = result.counters.by_reason()
        assert result.interrupts == result.counters.progress.injected == BURSTS
        assert exits[ExitReason.EXTERNAL_INTERRUPT] == exits[ExitReason.MSR_WRITE] == BURSTS


def test_the_back_end_s_measured_rate_is_reported_where_one_ran(recorded):
    _, handed = recorded
    assert all(result.host_rate_pps > 0 for result in _virtio(handed))
    rows = recorded[0].tables[0].rows
    assert all(row[-1] == "-" for row in rows if row[0] == "emulated")


def test_the_report_s_per_frame_figures_are_the_paths_counters_over_the_frames(recorded):
    report, handed = recorded
    costs, iommu = CostModel(exit_cycles=900), IommuCost(walk_cycles=2000)
    rows = report.figures["results"]
    assert [(r["path"], r["variant"]) for r in rows] == [(h.path, h.variant) for h in handed]
    assert [r.workload.frames for r in handed if r.path == "sriov"] == [FRAMES * GUESTS,
                                                                         FRAMES, FRAMES]
    assert [(r.path, r.variant) for r in handed] == [
        ("emulated", "mmio"), ("emulated", "port-io"),
        ("virtio", "notify"), ("virtio", "event-idx"), ("virtio", "poll"),
        ("assigned", "remapped"), ("assigned", "posted"),
        ("sriov", f"{GUESTS} guests"), *(("sriov", f"guest {k}") for k in range(GUESTS))]
    for row, result in zip(rows, handed, strict=True):
        counters, per_frame = result.counters, row["per_frame"]
        # The SR-IOV whole's workload is every guest's frames together.
        frames = result.workload.frames
        assert row["frames"] == frames
        assert per_frame["exits_by_reason"] == {reason.name: n / frames for reason, n
                                                in counters.by_reason().items()}
        assert per_frame["exits"] == counters.total_exits / frames
        assert per_frame["entries"] == counters.entries / frames
        assert per_frame["interrupts"] == result.interrupts / frames
        assert per_frame["iommu_walks"] == result.iommu_walks / frames
        assert per_frame["iotlb_hit_rate"] == (result.iotlb_hits / result.iotlb_lookups
                                               if result.iotlb_lookups else None)
        assert per_frame["modelled_cycles"] == pytest.approx(
            result.modelled_cycles(costs, iommu) / frames)
        parts = per_frame["cycles_by_component"]
        assert list(parts) == list(COST_COMPONENTS)
        assert parts["exits+entries"] == pytest.approx(
            (counters.total_exits * 900 + counters.entries * 500) / frames)
        assert parts["iommu"] == result.iommu_walks * 2000 / frames
        assert per_frame["modelled_ns"] == pytest.approx(per_frame["modelled_cycles"] / 3.0)
        assert row["frames_intact"] == result.frames_intact
        assert row["host_rate_pps"] == result.host_rate_pps
        assert row.get("backend_kicks_read") == result.backend_kicks_read
        assert ("backend_kicks_read" in row) == (result.path == "virtio")


def test_the_tables_hold_a_row_per_path_and_variant_and_every_cost_figure(recorded):
    report, handed = recorded
    per_frame, components, model = report.tables
    assert [row[:2] for row in per_frame.rows] == [[h.path, h.variant] for h in handed]
    assert [row[:2] for row in components.rows] == [[h.path, h.variant] for h in handed]
    parameters = {row[0]: row[1] for row in model.rows}
    assert parameters["exit_cycles"] == "900" and parameters["walk_cycles"] == "2000"


def test_the_command_writes_its_json_and_its_plot(capsys, tmp_path):
    data, picture = tmp_path / "compare.json", tmp_path / "compare.png"
    status = main(["hv", "compare", "--frames", "32", "--burst", "16", "--completion", "poll",
                   "--guests", "1", "--json", str(data), "--plot", str(picture)])
    out = capsys.readouterr().out
    assert status == 0 and "Per frame" in out
    figures = json.loads(data.read_text())["figures"]
    assert figures["workload"] == {"frames": 32, "size": 64, "burst": 16,
                                   "completion": "poll", "bursts": 2, "guests": 1}
    assert {r["path"] for r in figures["results"]} == {path.name for path in compare.PATHS}
    assert all(r["frames_intact"] == r["frames"] for r in figures["results"])
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, says", [
    (["--completion", "sometimes"], "--completion"),
    (["--burst", "0"], "--burst"),
    (["--guests", "9"], "--guests"),
    (["--iommu-walk-cycles", "-5"], "--iommu-walk-cycles"),
    (["--handler-cycles", "NOPE=1"], "--handler-cycles"),
    (["--size", "20"], "size"),   # refused by the workload itself
])
def test_a_bad_option_exits_2_naming_it(capsys, args, says):
    try:
        status = main(["hv", "compare", *args])
    except SystemExit as exit_:
        status = exit_.code
    assert status == 2 and says in capsys.readouterr().err
