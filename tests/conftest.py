"""Real peers in the suite: a test marked `@pytest.mark.peer("dpdk")` (or "qemu", "fio", "qsd")
needs that program. `make test` sets FASTPATH_REQUIRE_PEERS=1, and there a missing peer fails
the test with the Debian package to install; a bare `pytest` elsewhere skips it.

`@pytest.mark.release_pass`: a test that starts fastpath processes of its own (a back-end, a
benchmark's runs) runs in the release pass only. With FASTPATH_DEBUG=1 Numba caches nothing,
so each such process compiles every kernel it runs first (more than a minute); the debug pass
still runs the same code in-process through the unit and property tests. So does every
integration test (tests/integration) but the one guest smoke test, marked `debug_smoke`: the
debug pass is the unit, property and fuzz tests and one guest boot."""

import os
import shutil

import pytest

from fastpath.testing import QemuGuest, StorageDaemon, Testpmd

# Each peer: how to find it, and the Debian package that brings it.
PEERS = {
    "dpdk": (Testpmd.find, "dpdk-testpmd", "dpdk-dev"),
    "qemu": (QemuGuest.find, "qemu-system-x86_64", "qemu-system-x86"),
    "fio": (lambda: shutil.which("fio"), "fio", "fio"),
    "qsd": (StorageDaemon.find, "qemu-storage-daemon", "qemu-system-common"),
}

DEBUG_PASS = os.environ.get("FASTPATH_DEBUG", "") not in ("", "0")


def peers_required() -> bool:
    """Whether a missing peer fails the test (under `make test`) instead of skipping it."""
    return os.environ.get("FASTPATH_REQUIRE_PEERS", "") not in ("", "0")


def missing_peer(reason: str) -> None:
    """Fail under `make test`, skip elsewhere: for a peer the suite cannot run without."""
    if peers_required():
        pytest.fail(f"{reason}; `make test` installs it (make peers)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def peer_missing():
    """`missing_peer` for a fixture that finds a peer unusable (a guest that cannot be built)."""
    return missing_peer


def pytest_configure(config):
    config.addinivalue_line("markers", "peer(name): the test runs against a real peer program "
                            f"({', '.join(PEERS)})")
    config.addinivalue_line("markers", "release_pass: the test starts fastpath processes of its "
                            "own, which compile every kernel under FASTPATH_DEBUG=1: release "
                            "pass only")
    config.addinivalue_line("markers", "debug_smoke: the integration test the FASTPATH_DEBUG=1 "
                            "pass runs too")


_INTEGRATION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "integration")


def pytest_runtest_setup(item):
    if DEBUG_PASS and item.get_closest_marker("release_pass"):
        pytest.skip("starts fastpath processes, which compile every kernel under "
                    "FASTPATH_DEBUG=1: the release pass runs it")
    if (DEBUG_PASS and str(item.path).startswith(_INTEGRATION + os.sep)
            and not item.get_closest_marker("debug_smoke")):
        pytest.skip("an integration test: the FASTPATH_DEBUG=1 pass runs only the guest smoke "
                    "test of tests/integration")
    for marker in item.iter_markers("peer"):
        for name in marker.args:
            find, program, package = PEERS[name]
            if find() is None:
                missing_peer(f"{program} is not installed (Debian package {package})")
