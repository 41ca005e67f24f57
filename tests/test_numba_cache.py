"""Numba's on-disk cache keys a kernel on its own file alone; fastpath's kernels (and those of
the checkout's tests and benchmarks) are keyed on the whole package too, so a kernel never
keeps running the old code of a kernel it calls from another module; those that may call a
dispatch by kind, on the kinds registered too."""

from numba.core import caching

from fastpath import _numba
from fastpath.devices.net import kernels as net_kernels
from fastpath.pmd import _dispatch


def _registries() -> str:
    return repr(sorted(_numba._REGISTRIES.items()))


def test_kernels_that_may_dispatch_by_kind_are_stamped_with_the_package_and_the_kinds():
    py_func = _dispatch.port_rx.py_func
    locator = _numba._PackageStampedLocator.from_function(py_func, _dispatch.__file__)
    assert locator is not None
    assert locator.get_source_stamp() == (_numba._package_stamp(), _registries())
    assert "'null'" in _registries()


def test_kernels_below_pmd_are_stamped_with_the_package_alone():
    # By the layer order they call no dispatch: whichever kinds a process registered, they
    # share one cache.
    py_func = net_kernels.take_held.py_func
    locator = _numba._PackageStampedLocator.from_function(py_func, net_kernels.__file__)
    assert locator.get_source_stamp() == _numba._package_stamp()


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
    own, package, kinds = locator.get_source_stamp()
    assert package == _numba._package_stamp() and kinds == _registries()
    assert own == caching._SourceFileBackedLocatorMixin.get_source_stamp(locator)
