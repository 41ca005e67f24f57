"""Numba's on-disk cache keys a kernel on its own file alone; fastpath's kernels (and those of
the checkout's tests and benchmarks) are keyed on the whole package too, so a kernel never
keeps running the old code of a kernel it calls from another module; those that may call a
dispatch by kind, on the kinds registered too (in their key within the cache file, so that
processes registering different kinds keep entries side by side)."""

from numba import njit
from numba.core import caching

from fastpath import _numba
from fastpath._numba import NJIT
from fastpath.devices.net import kernels as net_kernels
from fastpath.pmd import _dispatch


# Cached even in the FASTPATH_DEBUG=1 pass (which compiles the package's kernels uncached):
# the key is what is under test.
@njit(**dict(NJIT, cache=True))
def _probe(x):
    return x + 1


def _key(kernel):
    return kernel._cache._index_key(kernel.signatures[0], kernel.targetctx.codegen())


def test_kernels_that_may_dispatch_by_kind_are_keyed_on_the_kinds_registered_when_loaded():
    py_func = _dispatch.port_rx.py_func
    locator = _numba._PackageStampedLocator.from_function(py_func, _dispatch.__file__)
    assert locator is not None and locator.may_dispatch()
    assert locator.get_source_stamp() == _numba._package_stamp()
    assert "'null'" in _numba.registered_kinds()
    _probe(1)
    before = _key(_probe)
    assert before[-1] == _numba.registered_kinds()
    # A process that registers another kind looks for (or adds) an entry of its own.
    _numba._REGISTRIES["probe"] = [(1, "probe")]
    try:
        assert _key(_probe)[-1] == _numba.registered_kinds() != before[-1]
    finally:
        del _numba._REGISTRIES["probe"]


def test_kernels_below_pmd_are_keyed_as_numba_keys_them():
    # By the layer order they call no dispatch: whichever kinds a process registered, they
    # share one cache entry.
    py_func = net_kernels.take_held.py_func
    locator = _numba._PackageStampedLocator.from_function(py_func, net_kernels.__file__)
    assert locator.get_source_stamp() == _numba._package_stamp()
    assert not locator.may_dispatch()


def test_the_stamp_changes_when_any_module_changes(tmp_path):
    before = _numba._package_stamp()
    probe = _numba._PACKAGE / "pmd" / "_stamp_probe.py"
    try:
        probe.write_text("# a module that comes and goes\n")
        _numba._package_stamp.cache_clear()
        assert _numba._package_stamp() != before
    finally:
        probe.unlink()
        _numba._package_stamp.cache_clear()
    assert _numba._package_stamp() == before


def test_code_outside_the_package_keeps_numba_s_own_stamp(tmp_path):
    outside = tmp_path / "kernel.py"
    outside.write_text("def f():\n    return 1\n")
    namespace: dict = {}
    exec(compile(outside.read_text(), str(outside), "exec"), namespace)
    assert _numba._PackageStampedLocator.from_function(namespace["f"], str(outside)) is None


def test_kernels_of_the_checkout_s_tests_are_stamped_with_their_file_and_the_package():
    # A test kernel that inlined a package kernel once ran its old row layout from the cache
    # after the layout moved, and crashed (the pcap port's capture test).
    this = test_kernels_of_the_checkout_s_tests_are_stamped_with_their_file_and_the_package
    locator = _numba._PackageStampedLocator.from_function(this, __file__)
    assert locator is not None
    own, package = locator.get_source_stamp()
    assert package == _numba._package_stamp() and locator.may_dispatch()
    assert own == caching._SourceFileBackedLocatorMixin.get_source_stamp(locator)
