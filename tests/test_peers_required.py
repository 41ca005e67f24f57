"""Under `make test` a missing peer fails its tests, naming the package; elsewhere it skips."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("required", [True, False], ids=["make-test", "bare-pytest"])
def test_a_missing_peer_fails_under_make_test_and_skips_elsewhere(tmp_path, required):
    # The suite's own conftest, with DPDK made to look absent.
    (tmp_path / "conftest.py").write_text(
        (TESTS / "conftest.py").read_text()
        + '\nPEERS["dpdk"] = (lambda: None, "dpdk-testpmd", "dpdk-dev")\n')
    (tmp_path / "test_needs_dpdk.py").write_text(
        "import pytest\n\n\n@pytest.mark.peer('dpdk')\ndef test_it():\n    pass\n")
    env = dict(os.environ, FASTPATH_REQUIRE_PEERS="1" if required else "0")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider",
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert "dpdk-testpmd is not installed (Debian package dpdk-dev)" in done.stdout
    if required:
        assert done.returncode == 1 and "1 error" in done.stdout  # failed in its set-up
    else:
        assert done.returncode == 0 and "1 skipped" in done.stdout
