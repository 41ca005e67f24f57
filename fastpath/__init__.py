"""fastpath: a user-space virtualization dataplane with a compiled core.

Subpackages: `hv` (the modelled platform and guest memory), `vring` (virtqueues), `testing`
(mocks for tests, benchmarks and fuzzers), `bench` (benchmarks behind `fastpath bench`).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fastpath")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
