"""Numba kernels reach the core through exported fp_* functions, once per burst."""

import os
import subprocess
import sys
import textwrap

import pytest

from fastpath._numba import DEBUG
from fastpath.bench.vring import Rig

KERNEL_RUN = textwrap.dedent(
    """
    from fastpath.bench._vring_kernels import one_process_loop
    from fastpath.bench.vring import Rig
    rig = Rig({packed}, 64, 8, 64)
    rate = rig.one_process(1000)
    assert rate > 0 and rig.device.errors == {{}}
    print(sum(one_process_loop.stats.cache_hits.values()))
    """
)


def test_kernel_moves_chains_through_the_core():
    for packed in (False, True):
        rig = Rig(packed, 64, 8, 64)
        rig.one_process(10_000)
        assert rig.device.popped >= 10_000
        assert rig.device.pushed == rig.device.popped
        assert rig.device.errors == {} and rig.driver.errors == {}


@pytest.mark.skipif(DEBUG, reason="debug runs compile kernels afresh, never from the cache")
def test_kernels_load_from_numba_cache_in_a_new_process(tmp_path):
    # A kernel that embedded a function address could not be cached; one that calls the core by
    # symbol name is compiled once and loaded by every later process.
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))

    def cache_hits(packed):
        r = subprocess.run([sys.executable, "-c", KERNEL_RUN.format(packed=packed)], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return int(r.stdout.split()[-1])

    assert cache_hits(False) == 0
    assert cache_hits(False) > 0
    assert cache_hits(True) > 0
