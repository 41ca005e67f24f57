"""`fastpath hv SCENARIO`: run one scenario of the modelled platform and print what its
counters say, as tables, and with --json as one JSON document.

Each scenario is a module of `fastpath.scenarios` with `add_arguments(parser)`, its options,
and `run(**options) -> Report`, whose keyword parameters are the options' destinations and
whose defaults are the options' defaults; its docstring is its --help page. Adding one is an
entry in SCENARIOS.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from typing import NamedTuple

from fastpath.bench import environment, print_table, write_json
from fastpath.commands._help import ProseDefaultsHelpFormatter


class Scenario(NamedTuple):
    """A scenario as `fastpath hv` lists it: its name, its module, one line of help."""

    name: str
    module: str
    help: str


SCENARIOS = (
    Scenario("walk", "fastpath.scenarios.walk",
             "random GPAs and GVAs through EPT and the 2-D walk: references per walk, page "
             "sizes, EPT violations by qualification, TLB hits and misses, INVEPT/INVVPID"),
    Scenario("exits", "fastpath.scenarios.exits",
             "a guest's mix of CPUID, port I/O, MSRs, HLT, VMCALL, memory, interrupts and the "
             "preemption timer run by the VMX model: VM exits by reason, with their "
             "qualifications and modelled time"),
    Scenario("vtd", "fastpath.scenarios.vtd",
             "devices' DMA bursts through a VT-d remapping unit: translations, faults by "
             "reason and in the fault recording registers, context cache and IOTLB, a queued "
             "invalidation with a wait descriptor, interrupt remapping"),
    Scenario("sriov", "fastpath.scenarios.sriov",
             "a PF enabling VFs (RIDs across buses, BARs), a frame burst steered VMDq-style "
             "to pools and queues, and the VFs' DMA through VT-d with faults"),
    Scenario("viommu", "fastpath.scenarios.viommu",
             "two VMs' virtio-net through a VT-d vIOMMU on a real back-end: IOTLB misses "
             "answered from the model, invalidations ordered before the guest's wait, DMA "
             "faults recorded, frames moved and lost"),
    Scenario("kick", "fastpath.scenarios.kick",
             "a guest's virtio-net kicks as EPT-misconfiguration exits that write a real "
             "back-end's kick eventfds: exits per frame without and with EVENT_IDX and polled"),
    Scenario("compare", "fastpath.scenarios.compare",
             "one guest workload through every way of doing network I/O and its variants: VM "
             "exits by reason, IOMMU walks, IOTLB hits and interrupts per frame, modelled "
             "cycles per frame by component, and a real back-end's measured rate"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """A sub-command per scenario, each with its own options and --json."""
    scenarios = parser.add_subparsers(dest="scenario", metavar="SCENARIO", required=True)
    for scenario in SCENARIOS:
        module = importlib.import_module(scenario.module)
        command = scenarios.add_parser(scenario.name, help=scenario.help,
                                       description=module.__doc__,
                                       formatter_class=ProseDefaultsHelpFormatter)
        module.add_arguments(command)
        command.add_argument("--json", metavar="PATH",
                             help="also write the figures as JSON to PATH; '-' writes them "
                             "to standard output and the tables to standard error")
        parameters = inspect.signature(module.run).parameters
        command.set_defaults(scenario_run=module.run,
                             **{name: p.default for name, p in parameters.items()})


def run(args: argparse.Namespace) -> int:
    """Run the scenario, print its tables, write its JSON if asked; 2 for options the model
    refuses."""
    scenario_run = args.scenario_run
    options = {name: getattr(args, name) for name in inspect.signature(scenario_run).parameters}
    try:
        report = scenario_run(**options)
    except ValueError as error:
        print(f"fastpath hv {args.scenario}: error: {error}", file=sys.stderr)
        return 2
    # With the JSON on standard output the tables go to standard error, so that the output
    # parses as it is.
    out = sys.stderr if args.json == "-" else sys.stdout
    for table in report.tables:
        print(f"\n{table.title}", file=out)
        if table.rows:
            print_table(table.headers, table.rows, file=out)
        else:
            print("(none)", file=out)
    if args.json:
        write_json(args.json, report.as_dict() | {"options": options,
                                                  "environment": environment()})
    return 0
