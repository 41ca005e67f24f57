"""The kick scenario (issue 12): a modelled guest's virtio-net kicks are EPT-misconfiguration
exits at the queue's notify address (spec hv §1.6), which the VMM turns into writes of the
kick eventfd of a real `fastpath vhost-net` back-end process; how many there are is the rings'
notification suppression's decision (virtio 1.2 §2.7.7, §2.7.10) and the back-end's
--backoff.

The back-end counts the kick eventfd counts it reads as it sleeps (its kicks_read): set beside
the VMM's eventfd writes, it shows that every kick reached it, which a back-end woken only by
its 10 ms timeout cannot fake."""

import pytest

from fastpath.scenarios import KICK_MODES, notify_address
from fastpath.scenarios.kick import run as run_kick_scenario

FRAMES, BURST = 500, 32
BURSTS = -(-FRAMES // BURST)  # the last burst is short
TRANSMITQ, RECEIVEQ = 1, 0
# How long the back-end sleeps on its eventfds when no kick wakes it (the Forwarder's
# sleep_ms, which `fastpath vhost-net` keeps at its default).
BACKEND_SLEEP_SECONDS = 0.010


# Every test here reads runs against real `fastpath vhost-net` processes, which the
# FASTPATH_DEBUG=1 pass would compile afresh at each start (it caches no kernels).
pytestmark = pytest.mark.release_pass

@pytest.fixture(scope="module")
def report():
    return run_kick_scenario(frames=FRAMES, size=64, burst=BURST, mode="all")


EVERY_MODE = pytest.mark.parametrize("mode", list(KICK_MODES))


@EVERY_MODE
def test_every_frame_reaches_the_back_end_and_comes_back_byte_for_byte(report, mode):
    figures = report.figures[mode]
    assert figures["bursts"] == BURSTS
    assert (figures["frames_received_by_backend"], figures["frames_returned"],
            figures["frames_intact"]) == (FRAMES, FRAMES, FRAMES)


@EVERY_MODE
def test_every_kick_is_one_ept_misconfiguration_exit_at_its_queue_s_notify_address(report,
                                                                                   mode):
    figures = report.figures[mode]
    kicks = figures["tx_kicks"] + figures["rx_kicks"]
    # Nothing else exits: the ring writes are ordinary guest work that EPT maps.
    assert figures["exits"] == ({"EPT_MISCONFIG": kicks} if kicks else {})
    assert figures["total_exits"] == kicks
    by_address = {f"{notify_address(TRANSMITQ):#x}": figures["tx_kicks"],
                  f"{notify_address(RECEIVEQ):#x}": figures["rx_kicks"]}
    assert figures["exit_addresses"] == {a: n for a, n in by_address.items() if n}
    assert figures["exits_per_frame"] == kicks / FRAMES
    # Each burst's writes went through EPT: a buffer, a descriptor and an avail entry per
    # frame, and an avail index per burst.
    assert figures["ept_walks"] >= 3 * FRAMES + BURSTS


def test_without_event_idx_a_back_end_that_sleeps_between_bursts_gets_a_kick_per_burst(
        report):
    figures = report.figures["notify"]
    assert (figures["event_idx"], figures["backoff"]) == (False, 1)
    # A kick per burst, but for a burst the driver sent while the back-end was awake between
    # two sleeps (woken by its 10 ms timeout or a receive kick, it turns kicks off until it
    # sleeps again), which depends on how the two processes were scheduled.
    assert BURSTS / 2 < figures["tx_kicks"] <= BURSTS
    assert figures["tx_kicks_per_burst"] <= 1.0
    # Each kick woke it: a burst came back long before the end of the sleep it would
    # otherwise have waited out (half of it on average).
    assert figures["median_return_seconds"] < BACKEND_SLEEP_SECONDS / 4


def test_a_sleeping_back_end_reads_every_kick_the_vmm_wrote_to_its_eventfds(report):
    # It sleeps on the transmitq's and the receiveq's kick eventfds and reads them whenever
    # it sleeps, a kick written while it polled at its next sleep; only a kick written just
    # before the guest left, one per queue at most, can go unread. Without the VMM's eventfd
    # write it would read none.
    figures = report.figures["notify"]
    kicks = figures["tx_kicks"] + figures["rx_kicks"]
    assert kicks - 2 <= figures["backend_kicks_read"] <= kicks
    assert 0 < figures["backend_woken_by_eventfd"] <= figures["backend_sleeps"]
    for mode in ("event-idx", "poll"):   # --backoff 0: it never sleeps, so reads none
        assert report.figures[mode]["backend_sleeps"] == 0
        assert report.figures[mode]["backend_kicks_read"] == 0


def test_with_event_idx_a_busy_back_end_gets_fewer_kicks_than_bursts(report):
    figures = report.figures["event-idx"]
    assert (figures["event_idx"], figures["backoff"]) == (True, 0)
    # It turned kicks off before the first burst, leaving its avail event at 0, which that
    # burst crosses: one kick. Polling on, it never moves the event, so no later burst
    # crosses it.
    assert figures["tx_kicks"] == 1 < BURSTS
    assert figures["total_exits"] < report.figures["notify"]["total_exits"]


def test_a_polling_back_end_gets_no_transmit_kicks_while_every_frame_arrives(report):
    figures = report.figures["poll"]
    assert (figures["event_idx"], figures["backoff"]) == (False, 0)
    assert figures["tx_kicks"] == 0
    assert figures["frames_intact"] == FRAMES
    # Nor receive kicks: the back-end said it wants none as it began to serve the rings,
    # before it acknowledged the set-up that lets the driver post its buffers.
    assert figures["rx_kicks"] == 0
    assert figures["exits"] == {}


def test_modelled_time_is_the_cost_model_s_sum_and_falls_with_the_exits(report):
    for figures in report.figures.values():
        cycles = figures["modelled_cycles"]
        assert figures["modelled_cycles_per_frame"] * FRAMES == pytest.approx(
            sum(cycles.values()))
        assert figures["modelled_seconds"] == pytest.approx(sum(cycles.values()) / 3.0e9)
    per_frame = {mode: f["modelled_cycles_per_frame"] for mode, f in report.figures.items()}
    assert per_frame["poll"] < per_frame["notify"]


def test_the_report_tables_hold_a_row_per_mode_and_its_exits_by_reason(report):
    kicks, reasons = report.tables
    assert [row[0] for row in kicks.rows] == list(KICK_MODES)
    assert [row[6] for row in kicks.rows] == [report.figures[m]["tx_kicks"]
                                             for m in KICK_MODES]
    assert [row[8] for row in kicks.rows] == [report.figures[m]["backend_kicks_read"]
                                             for m in KICK_MODES]
    assert {(row[0], row[1]) for row in reasons.rows} == {
        (m, "EPT_MISCONFIG") for m in KICK_MODES if report.figures[m]["total_exits"]}


def test_full_size_frames_come_back_byte_for_byte_with_a_kick_per_burst_at_most():
    figures = run_kick_scenario(frames=40, size=1514, burst=8, mode="notify").figures["notify"]
    assert figures["frames_intact"] == 40
    assert 0 < figures["tx_kicks"] <= 5


@pytest.mark.parametrize("arguments", [{"mode": "sleepy"}, {"burst": 0}, {"burst": 257},
                                       {"frames": 0}, {"size": 59}, {"size": 2037}])
def test_settings_outside_what_the_scenario_can_run_are_refused(arguments):
    with pytest.raises(ValueError):
        run_kick_scenario(**arguments)
