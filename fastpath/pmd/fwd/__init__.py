"""Forwarding engines: what a forwarding loop does to each burst between receiving it and
sending it on, as testpmd's forwarding modes do.

    setup = setup_engine("macswap")
    loop = ForwardingLoop(streams, setup, pool)    # calls engine_burst on every burst
    setup.counters()                               # {"name": count, ...}

The compiled entry point is `fastpath.pmd.fwd._dispatch.engine_burst(*setup.arrays,
pool.arrays, mbufs, n, burst)`. Each engine is a module of this package with a compiled
burst kernel, registered in ENGINES by name. Forwarding engines (io, mac, macswap, rxonly,
csum) work on the frames received, in place; generating engines (txonly, flowgen) free them
and send frames of their own, made from templates of a traffic profile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastpath.pmd._traffic import DEFAULT_FLOWS
from fastpath.pmd.fwd import csum, flowgen, io, mac, macswap, rxonly, txonly
from fastpath.pmd.fwd._options import (
    DEFAULT_ETH_DST,
    DEFAULT_ETH_SRC,
    SLOTS,
    check_options,
)

__all__ = ["Engine", "ENGINES", "EngineSetup", "setup_engine"]


@dataclass(frozen=True)
class Engine:
    """A forwarding mode: its name, the code the compiled dispatcher knows it by, whether it
    sends frames of its own (`generates`), a line of help, and the names of its counters."""

    name: str
    code: int
    generates: bool
    help: str
    counters: tuple[str, ...]


_MODULES = {"io": io, "mac": mac, "macswap": macswap, "rxonly": rxonly, "txonly": txonly,
            "flowgen": flowgen, "csum": csum}

ENGINES: dict[str, Engine] = {
    name: Engine(name, module.CODE, module.GENERATES, module.HELP, tuple(module.COUNTERS))
    for name, module in _MODULES.items()
}


@dataclass
class EngineSetup:
    """An engine ready to run: its code, settings, templates and running state as the arrays
    `engine_burst` takes (a generating engine's templates are one row per frame, as long as
    the longest; other engines have 1-byte dummies).

    The state holds the engine's counters first, then where it is (the next template or flow).
    """

    engine: Engine
    config: np.ndarray              # uint64[16]
    templates: np.ndarray           # uint8 (T, longest template)
    template_lengths: np.ndarray    # uint32 (T,)
    state: np.ndarray               # uint64[16]

    @property
    def name(self) -> str:
        """The engine's name."""
        return self.engine.name

    @property
    def code(self) -> int:
        """The engine's code."""
        return self.engine.code

    @property
    def arrays(self) -> tuple:
        """(code, config, templates, template_lengths, state), as `engine_burst` takes them
        before the pool."""
        return self.code, self.config, self.templates, self.template_lengths, self.state

    def counters(self) -> dict[str, int]:
        """The engine's counters by name (empty for engines that count nothing)."""
        return {name: int(self.state[k]) for k, name in enumerate(self.engine.counters)}

    def reset(self) -> None:
        """Zero the counters and start again from the first template and flow."""
        self.state[:] = 0


def _pack(frames: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    if not frames:
        return np.zeros((1, 1), dtype=np.uint8), np.zeros(1, dtype=np.uint32)
    templates = np.zeros((len(frames), max(len(f) for f in frames)), dtype=np.uint8)
    for row, frame in zip(templates, frames, strict=True):
        row[:len(frame)] = np.frombuffer(frame, dtype=np.uint8)
    return templates, np.array([len(f) for f in frames], dtype=np.uint32)


def setup_engine(name: str, *, room: int = 2048, profile: str = "udp64", size: int | None = None,
                 flows: int = DEFAULT_FLOWS, eth_src: str = DEFAULT_ETH_SRC,
                 eth_dst: str = DEFAULT_ETH_DST, csum: str = "verify") -> EngineSetup:
    """Engine `name` of ENGINES set up for a pool of `room`-byte mbufs.

    txonly sends frames of traffic profile `profile` (see fastpath.pmd._traffic.PROFILES),
    `size` bytes long without the FCS when given; flowgen sends the profile's first frame over
    `flows` flows; mac writes `eth_dst` and `eth_src`; csum's `csum` is "verify" (count bad
    checksums) or "fill" (write them). Options an engine does not use are still checked.
    Raises ValueError, listing the choices, for anything not allowed.
    """
    if name not in ENGINES:
        raise ValueError(f"unknown forwarding mode {name!r}; choose one of "
                         f"{', '.join(ENGINES)}")
    options = check_options(room=room, profile=profile, size=size, flows=flows,
                            eth_src=eth_src, eth_dst=eth_dst, csum=csum)
    config = np.zeros(SLOTS, dtype=np.uint64)
    templates, template_lengths = _pack(_MODULES[name].configure(options, config))
    return EngineSetup(ENGINES[name], config, templates, template_lengths,
                       np.zeros(SLOTS, dtype=np.uint64))
