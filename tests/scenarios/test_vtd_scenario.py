"""`fastpath hv vtd`'s figures against what the remapping unit models: every fault recorded
when the host services each fault event, compression and Primary Fault Overflow when it does
not, the unattached function's context faults, the queued invalidation's drops and its wait
descriptor, and one interrupt-entry-cache miss per IRTE."""

import pytest

from fastpath.scenarios import vtd

SMALL = {"devices": 3, "bursts": 4, "burst_size": 32, "pages": 32, "bad": 0.1}


@pytest.fixture(scope="module")
def report():
    return vtd.run(**SMALL)


def test_serviced_at_each_fault_event_every_fault_is_recorded(report):
    faults = report.figures["faults"]
    walked = {}
    for p in report.figures["passes"].values():
        assert p["translated"] + sum(v for k, v in p["faults_by_reason"].items()
                                     if not k.endswith("interrupt remapping")) == p["requests"]
        for reason, n in p["faults_by_reason"].items():
            walked[reason] = walked.get(reason, 0) + n
    assert faults["recorded"] == faults["by_walker"] == sum(walked.values())
    assert faults["recorded_by_reason"] == walked
    assert faults["fault_events"] == faults["recorded"] and faults["overflows"] == 0
    # Function 7 has no context entry: each of its requests is fault 2, in both passes; its
    # compatibility-format MSI is blocked (0x25) once a pass.
    assert walked["0x2 FR_CONTEXT_NOT_PRESENT"] == 2 * SMALL["burst_size"]
    assert walked["0x25 interrupt remapping"] == 2
    assert {"0x4 FR_ADDRESS_BEYOND_MGAW", "0x5 FR_WRITE", "0x6 FR_READ"} <= walked.keys()


def test_deferred_service_loses_faults_to_compression_and_overflow():
    report = vtd.run(**SMALL, fault_handling="deferred", fault_records=2)
    faults = report.figures["faults"]
    # Serviced twice (after each pass), two records each time.
    assert faults["recorded"] == 4 and faults["overflows"] == 2
    assert faults["by_walker"] > faults["recorded"] and faults["fault_events"] == 0


def test_the_caches_hit_and_the_queued_invalidation_drops_and_completes(report):
    first = report.figures["passes"]["before_invalidation"]
    assert first["iotlb_hits"] > 0 and first["context_hits"] > 0
    inv = report.figures["invalidation"]
    assert inv["wait_status"] == 1 and inv["completion_interrupts"] == 1
    assert not inv["queue_error"]
    assert 0 < inv["after"]["iotlb_entries"] < inv["before"]["iotlb_entries"]
    assert inv["before"]["context_entries"] == SMALL["devices"]
    assert inv["after"]["context_entries"] == 0


def test_a_global_invalidation_empties_the_iotlb():
    inv = vtd.run(**SMALL, invalidate="global").figures["invalidation"]
    assert inv["before"]["iotlb_entries"] > 0 and inv["after"]["iotlb_entries"] == 0


def test_msis_are_remapped_through_their_irtes(report):
    irq = report.figures["interrupts"]
    assert irq["remapped"] == 2 * SMALL["devices"] * SMALL["bursts"]
    assert irq["blocked"] == 2
    assert irq["entry_cache_misses"] == SMALL["devices"]
    assert irq["entry_cache_hits"] == irq["remapped"] - SMALL["devices"]
