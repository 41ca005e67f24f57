"""Mocks that tests, benchmarks and fuzzers import: a guest driver for rings."""

from fastpath.testing._guest_driver import GuestDriver

__all__ = ["GuestDriver"]
