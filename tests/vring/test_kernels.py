"""Numba kernels reach the core through exported fp_* functions, once per burst."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numba import njit

from fastpath._numba import DEBUG, NJIT
from fastpath.bench.vring import Rig
from fastpath.vring import kernels

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


@njit(**NJIT)
def _notification_round(packed, driver, device, driver_chains, driver_segments, chains, segments,
                        max_segments, used):
    # Kicks off on the device side: the driver's next add must not want one; back on: it must.
    kernels.device_set_kicks(packed, device, 0)
    kernels.add_burst(packed, driver, driver_chains, 1, driver_segments)
    quiet = kernels.driver_should_kick(packed, driver)
    kernels.device_set_kicks(packed, device, 1)
    kernels.add_burst(packed, driver, driver_chains, 1, driver_segments)
    loud = kernels.driver_should_kick(packed, driver)
    n = kernels.pop_burst(packed, device, chains, 8, segments, max_segments)
    kernels.push_burst(packed, device, chains, n)
    notify = kernels.device_should_notify(packed, device)
    collected = kernels.collect_burst(packed, driver, used, 8)
    return quiet, loud, n, notify, collected


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_kernels_decide_kicks_and_notifications_without_python(packed):
    rig = Rig(packed, 64, 8, 64)
    b = rig.popped
    result = _notification_round(packed, rig.driver.handle, rig.device.handle,
                                 rig.driver_chains.ctypes.data, rig.driver_segments.ctypes.data,
                                 b.chains.ctypes.data, b.segments.ctypes.data, len(b.segments),
                                 rig.used.ctypes.data)
    assert tuple(int(x) for x in result) == (0, 1, 2, 1, 2)


@njit(**NJIT)
def _wait_for_eventfds(fds, timeout_ms, counts_read):
    return kernels.eventfd_wait(fds.ctypes.data, fds.shape[0], timeout_ms,
                                counts_read.ctypes.data)


def test_an_eventfd_wait_clears_what_fired_and_adds_the_counts_it_read():
    fds = np.array([os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2)], dtype=np.int32)
    counts_read = np.array([10], dtype=np.uint64)
    try:
        for _ in range(3):
            os.eventfd_write(int(fds[0]), 1)
        os.eventfd_write(int(fds[1]), 1)
        assert _wait_for_eventfds(fds, 1000, counts_read) == 2
        assert counts_read[0] == 14
        assert _wait_for_eventfds(fds, 0, counts_read) == 0
        assert counts_read[0] == 14
    finally:
        for fd in fds:
            os.close(int(fd))
