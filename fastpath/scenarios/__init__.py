"""Scenarios that run the modelled platform (`fastpath.hv`) together with the dataplane above it:
a vIOMMU answering a real back-end's IOTLB misses, a guest whose kicks are VM exits that reach a
running back-end. `hv` imports nothing above it, so the joins live here, one module each; each
returns a `Report` (figures under stable names, and tables), which `fastpath hv` prints and
saves."""

from fastpath.scenarios._kick import KICK_MODES, KickMode, notify_address, run_kick_scenario
from fastpath.scenarios._report import Report, Table

__all__ = ["Report", "Table", "run_kick_scenario", "KICK_MODES", "KickMode", "notify_address"]
