"""The cost model as scenarios offer it: its options (every figure settable, as `fastpath hv
exits` first offered them), the `CostModel` they make, and the rows of a table that prints each
figure beside its default and the default's source."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

from fastpath.hv.vmx import COST_SOURCES, DEFAULT_HANDLER_CYCLES, CostModel, ExitReason
from fastpath.scenarios._options import whole_number

__all__ = ["add_cost_arguments", "cost_model", "model_figures", "model_rows"]


def add_cost_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The CostModel's options, in a group of their own (returned, for a scenario to add
    figures of its own model to)."""
    cost = parser.add_argument_group("the cost model (defaults and sources in the output)")
    cost.add_argument("--exit-cycles", type=whole_number, help="cycles of a hardware VM exit")
    cost.add_argument("--entry-cycles", type=whole_number, help="cycles of a VM entry")
    cost.add_argument("--handler-cycles", type=_reason_cycles, action="append",
                      metavar="REASON=CYCLES",
                      help="the VMM's cycles for one exit reason (e.g. CPUID=1500, "
                      "IO_INSTRUCTION=8000); repeat for more (default: the model's)")
    cost.add_argument("--default-handler-cycles", type=whole_number,
                      help="handler cycles of reasons without a figure of their own")
    cost.add_argument("--ept-reference-cycles", type=whole_number,
                      help="cycles of one EPT paging-structure read")
    cost.add_argument("--frequency-ghz", type=float, help="the clock that turns cycles into time")
    return cost


def _reason_cycles(text: str) -> tuple[ExitReason, int]:
    name, _, cycles = text.partition("=")
    try:
        return ExitReason[name.strip().upper()], int(cycles, 0)
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected REASON=CYCLES with a reason of {', '.join(r.name for r in ExitReason)}"
            f", not {text!r}") from None


def cost_model(exit_cycles: int, entry_cycles: int,
               handler_cycles: Sequence[tuple[ExitReason, int]] | None,
               default_handler_cycles: int, ept_reference_cycles: int,
               frequency_ghz: float) -> CostModel:
    """The CostModel of those options: the handlers' figures given replace the defaults' for
    their reasons only."""
    if frequency_ghz <= 0:
        raise ValueError(f"the clock must be faster than {frequency_ghz} GHz")
    return CostModel(exit_cycles, entry_cycles,
                     dict(DEFAULT_HANDLER_CYCLES) | dict(handler_cycles or ()),
                     default_handler_cycles, ept_reference_cycles, frequency_ghz * 1e9)


def model_figures(model: CostModel) -> dict:
    """The CostModel's figures as JSON-able data (handler cycles by reason name)."""
    return {"exit_cycles": model.exit_cycles, "entry_cycles": model.entry_cycles,
            "handler_cycles": {r.name: c for r, c in model.handler_cycles.items()},
            "default_handler_cycles": model.default_handler_cycles,
            "ept_reference_cycles": model.ept_reference_cycles,
            "frequency_hz": model.frequency_hz}


def model_rows(model, sources: Mapping[str, str] | None = None) -> list[list]:
    """[parameter, value, default, source of the default] for each figure of `model` (a
    CostModel by default, or any dataclass of figures with its `sources`), with a row per
    reason for the handlers' cycles."""
    default = type(model)()
    rows = []
    for name, source in (COST_SOURCES if sources is None else sources).items():
        if name != "handler_cycles":
            rows.append([name, f"{getattr(model, name):g}", f"{getattr(default, name):g}",
                         source])
            continue
        reasons = sorted(model.handler_cycles.keys() | default.handler_cycles.keys())
        for k, reason in enumerate(reasons):
            rows.append([f"handler_cycles {reason.name}",
                         model.handler_cycles.get(reason, model.default_handler_cycles),
                         default.handler_cycles.get(reason, default.default_handler_cycles),
                         "" if k else source])
    return rows
