"""Port kinds: each registers once, from its own module, and the compiled dispatch, the
command line and `Port`'s burst methods all reach it through that one record."""

import ast
import dataclasses
import importlib
import uuid
from pathlib import Path

import pytest
from port_helpers import send_once

from fastpath.pmd import (
    PORT_KINDS,
    MbufPool,
    NullPort,
    Port,
    PortCounters,
    RingPort,
    _kinds,
    open_port,
)

BUILT_IN = {"vhost", "virtio-user", "ring", "tap", "pcap", "null"}


def _kind_modules() -> set[str]:
    return {kind.rx.py_func.__module__ for kind in PORT_KINDS.values()}


def test_every_built_in_kind_is_registered_under_its_spec_name():
    assert set(PORT_KINDS) >= BUILT_IN
    for name, kind in PORT_KINDS.items():
        assert kind.name == name


def test_every_kind_has_a_code_of_its_own_owned_by_its_module():
    codes = [kind.code for kind in PORT_KINDS.values()]
    assert len(set(codes)) == len(codes) and all(code > 0 for code in codes)
    for kind in PORT_KINDS.values():
        module = importlib.import_module(kind.rx.py_func.__module__)
        assert module.KIND == kind.code and kind.tx is module.tx


def test_the_compiled_dispatch_has_every_kind_s_kernels_under_its_code():
    for kind in PORT_KINDS.values():
        assert _kinds._rx.kinds[kind.code] == (kind.name, kind.rx)
        assert _kinds._tx.kinds[kind.code] == (kind.name, kind.tx)
        if kind.wants_service is not None:
            assert _kinds._wants_service.kinds[kind.code] == (kind.name, kind.wants_service)


def test_kinds_are_listed_in_the_order_of_their_codes():
    codes = [kind.code for kind in PORT_KINDS.values()]
    assert codes == sorted(codes)


@pytest.mark.parametrize("change", [{"name": "another-null"}, {"code": 1000}],
                         ids=["same code", "same name"])
def test_a_second_kind_with_a_code_or_name_taken_is_refused(change):
    before = dict(PORT_KINDS)
    with pytest.raises(ValueError, match="registered already"):
        _kinds.register_port_kind(dataclasses.replace(PORT_KINDS["null"], **change))
    assert PORT_KINDS == before
    assert 1000 not in _kinds._rx.kinds


@pytest.mark.parametrize("spec, port_type", [("null", NullPort), ("ring:{ring}", RingPort)])
def test_a_spec_name_makes_a_port_whose_rows_carry_the_kind_s_code(spec, port_type):
    ring = f"test-{uuid.uuid4().hex[:12]}"
    pool = MbufPool(64)
    try:
        with open_port(spec.format(ring=ring), pool) as port:
            assert isinstance(port, port_type)
            assert (port.rows[:, 0] == PORT_KINDS[spec.split(":")[0]].code).all()
    finally:
        RingPort.remove(ring)


def test_a_null_port_bursts_through_the_dispatch():
    pool = MbufPool(64)
    port = NullPort(pool)
    mbufs = pool.burst(8)
    assert port.rx_burst(0, mbufs, 8) == 0
    assert send_once(port, pool, [b"x" * 60] * 5) == 5
    counters = port.counters()
    assert (counters.rx_frames, counters.tx_frames, counters.tx_bytes) == (0, 5, 300)
    assert pool.in_use == 0


def test_a_ring_port_bursts_through_the_dispatch():
    ring = f"test-{uuid.uuid4().hex[:12]}"
    pool = MbufPool(64)
    frames = [bytes([k]) * (60 + k) for k in range(5)]
    try:
        with RingPort(ring, pool, slots=16) as port:
            assert send_once(port, pool, frames) == 5
            mbufs = pool.burst(8)
            n = port.rx_burst(0, mbufs, 8)
            assert [pool.frame(m) for m in mbufs[:n]] == frames
            pool.release(mbufs, n)
            counters = port.counters()
            assert counters.tx_frames == counters.rx_frames == 5
            assert counters.rx_bytes == counters.tx_bytes == sum(map(len, frames))
    finally:
        RingPort.remove(ring)
    assert pool.in_use == 0


def test_a_row_of_no_registered_kind_receives_and_takes_nothing():
    pool = MbufPool(64)
    port = Port("bare", pool)
    mbufs = pool.burst(4)
    assert port.rx_burst(0, mbufs, 4) == 0
    assert pool.alloc(mbufs, 4) == 4
    assert port.tx_burst(0, mbufs, 4) == 0
    assert pool.in_use == 4 and port.counters() == PortCounters()
    pool.release(mbufs, 4)


def test_the_port_module_imports_neither_the_dispatch_nor_any_kind():
    # Kinds import the port module: the reverse would be a cycle (a lazy import included).
    source = Path(importlib.import_module("fastpath.pmd._port").__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    kinds = _kind_modules()
    assert len(kinds) >= len(BUILT_IN)
    forbidden = {"fastpath.pmd._dispatch", *kinds}
    assert not imported & forbidden, imported & forbidden
