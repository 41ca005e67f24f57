"""`fastpath hv exits`'s figures against what VMX decides: exits by reason equal the events
that should exit under the scenario's bitmaps and controls (the pure-Python reference decides
the port and MSR accesses), and the modelled time adds up from the CostModel's figures."""

import pytest

from fastpath.hv.vmx import ExitReason
from fastpath.scenarios import exits
from fastpath.testing.reference import vmx as reference

MIX = {"cpuid": 11, "io": 23, "msr": 19, "hlt": 5, "vmcall": 3, "memory": 40,
       "ept_violations": 9, "interrupts": 7, "run_cycles": 1000, "timer_period": 10_000}


def expected_exits(mix):
    ports = set(exits.INTERCEPTED_PORTS)
    io = sum(reference.io_exits(ports, *exits.PORT_ACCESSES[k % len(exits.PORT_ACCESSES)][:2])
             for k in range(mix["io"]))
    reads, writes = set(exits.INTERCEPTED_MSR_READS), set(exits.INTERCEPTED_MSR_WRITES)
    accesses = [exits.MSR_ACCESSES[k % len(exits.MSR_ACCESSES)] for k in range(mix["msr"])]
    expected = {
        "CPUID": mix["cpuid"], "HLT": mix["hlt"], "VMCALL": mix["vmcall"],
        "IO_INSTRUCTION": io,
        "MSR_READ": sum(reference.msr_exits(reads, writes, msr, False)
                        for msr, write in accesses if not write),
        "MSR_WRITE": sum(reference.msr_exits(reads, writes, msr, True)
                         for msr, write in accesses if write),
        "EPT_VIOLATION": mix["ept_violations"], "EXTERNAL_INTERRUPT": mix["interrupts"],
    }
    return {reason: n for reason, n in expected.items() if n}


@pytest.fixture(scope="module")
def report():
    return exits.run(**MIX)


def test_exits_by_reason_are_the_events_that_should_exit(report):
    figures = report.figures
    by_reason = dict(figures["exits_by_reason"])
    events = sum(figures["events"].values()) - figures["events"]["RUN"]
    guest_cycles = MIX["run_cycles"] * figures["events"]["RUN"]
    assert figures["guest_cycles"] == guest_cycles
    # The timer is saved at each exit and re-armed at each expiry: one exit per period of
    # guest time.
    assert by_reason.pop("PREEMPTION_TIMER") == guest_cycles // MIX["timer_period"]
    assert by_reason == expected_exits(MIX)
    assert figures["entries"] == figures["total_exits"] + 1 and figures["entry_failures"] == 0
    assert figures["retired"] == events + figures["events"]["RUN"]
    # Each first touch walks again once the VMM has mapped the page.
    assert figures["ept_walks"] == MIX["memory"] + MIX["ept_violations"]
    assert figures["ept_references"] == 4 * figures["ept_walks"]


def test_qualifications_account_for_every_exit(report):
    figures = report.figures
    for reason, counts in figures["qualifications"].items():
        assert sum(counts.values()) == figures["exits_by_reason"][reason]
    assert set(figures["qualifications"]["MSR_WRITE"]) == {"MSR 0x6e0", "MSR 0xc0000080",
                                                           "MSR 0x4b564d01"}
    assert set(figures["qualifications"]["EPT_VIOLATION"]) == {
        "r access, EPT allows -, final translation of a linear address",
        "w access, EPT allows -, final translation of a linear address"}


def test_modelled_time_adds_up_from_the_cost_model(report):
    cost = report.figures["cost"]
    breakdown, model = cost["breakdown_cycles"], cost["model"]
    per_reason = sum(r["cycles"] for r in cost["by_reason"].values())
    # Each exit is costed with the entry back into the guest; the first entry has no exit.
    assert per_reason + model["entry_cycles"] + breakdown["guest"] + breakdown["ept"] == \
        pytest.approx(cost["total_cycles"])
    io = cost["by_reason"]["IO_INSTRUCTION"]
    assert io["cycles_per_exit"] == 700 + 500 + model["handler_cycles"]["IO_INSTRUCTION"]
    assert set(cost["sources"]) >= {"exit_cycles", "entry_cycles", "handler_cycles"}


def test_cycles_set_on_the_command_line_replace_the_defaults():
    report = exits.run(**MIX, exit_cycles=100, entry_cycles=50,
                       handler_cycles=[(ExitReason.CPUID, 1000)], frequency_ghz=1.0)
    cost = report.figures["cost"]
    assert cost["by_reason"]["CPUID"]["cycles_per_exit"] == 1150
    assert cost["seconds"] == pytest.approx(cost["total_cycles"] / 1e9)
