"""Real peers in the suite: a test marked `@pytest.mark.peer("dpdk")` (or "qemu") needs that
program. `make test` sets FASTPATH_REQUIRE_PEERS=1, and there a missing peer fails the test with
the Debian package to install; a bare `pytest` elsewhere skips it."""

import os

import pytest

from fastpath.testing import QemuGuest, Testpmd

# Each peer: how to find it, and the Debian package that brings it.
PEERS = {
    "dpdk": (Testpmd.find, "dpdk-testpmd", "dpdk-dev"),
    "qemu": (QemuGuest.find, "qemu-system-x86_64", "qemu-system-x86"),
}


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


def pytest_runtest_setup(item):
    for marker in item.iter_markers("peer"):
        for name in marker.args:
            find, program, package = PEERS[name]
            if find() is None:
                missing_peer(f"{program} is not installed (Debian package {package})")
