"""Keeps data-plane threads and the control plane out of each other's way.

A data-plane thread holds the gate for one bounded stretch of work (a kernel call of a few
milliseconds at most) and lets go between stretches; the control plane takes it to change
rings, fds or memory, and a data-plane thread that sees it waiting steps aside instead of
taking the gate straight back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Gate:
    """A lock with priority for the control plane."""

    def __init__(self):
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._waiting = 0

    @contextmanager
    def control(self) -> Iterator[None]:
        """Hold the gate: no data-plane thread is in its rings until this exits."""
        with self._count_lock:
            self._waiting += 1
        try:
            with self._lock:
                yield
        finally:
            with self._count_lock:
                self._waiting -= 1

    @contextmanager
    def data(self) -> Iterator[None]:
        """Hold the gate for one stretch of data-plane work, after any waiting control step."""
        while self._waiting:
            time.sleep(0.0001)
        with self._lock:
            yield
