"""`Mailbox`: messages from one poll host to another, through a lock-free ring.

A mailbox is fastpath's single-producer, single-consumer ring (the core's `ring`, as the ring
port uses between processes) in memory of this process, carrying fixed-size messages of
MESSAGE_WORDS uint64 words: what they mean is for the pollers that send and take them. One
host sends, one host takes; two hosts that talk both ways use two mailboxes. Kernels call
`mailbox_send` and `mailbox_take` once per burst; Python can do the same between calls (to
seed a mailbox or empty it).
"""

from __future__ import annotations

import mmap

import numpy as np
from numba import njit

from fastpath._core.ring import Ring, format_ring, ring_bytes
from fastpath._numba import NJIT
from fastpath.pmd._ring import ring_dequeue, ring_enqueue

MESSAGE_WORDS = 4
MESSAGE_BYTES = MESSAGE_WORDS * 8
# The core ring's smallest slot, which holds a message.
_SLOT_SIZE = 64


@njit(**NJIT)
def mailbox_send(handle, messages, lengths, start, n):
    """Send messages[start:start + n] (lengths[k] == MESSAGE_BYTES for each); returns how many
    the mailbox took (fewer when it is full), or a negative core code for a broken ring."""
    return ring_enqueue(handle, messages.ctypes.data + start * MESSAGE_BYTES, MESSAGE_BYTES, 0,
                        lengths.ctypes.data + start * 4, n)


@njit(**NJIT)
def mailbox_take(handle, messages, lengths, max_n):
    """Take up to max_n messages into messages[:n] (their lengths into lengths[:n]); returns
    n, or a negative core code for a broken ring."""
    return ring_dequeue(handle, messages.ctypes.data, MESSAGE_BYTES, MESSAGE_BYTES, 0,
                        lengths.ctypes.data, max_n)


def message_buffer(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A burst of n messages and their lengths, as the mailbox kernels take them."""
    return (np.zeros((n, MESSAGE_WORDS), dtype=np.uint64),
            np.full(n, MESSAGE_BYTES, dtype=np.uint32))


class Mailbox:
    """A mailbox of `slots` messages (a power of two)."""

    def __init__(self, slots: int = 1024):
        if slots < 2 or slots & (slots - 1):
            raise ValueError(f"a mailbox holds a power of two of messages, 2 or more, "
                             f"not {slots}")
        self._memory = mmap.mmap(-1, ring_bytes(slots, _SLOT_SIZE))
        format_ring(self._memory, slots, _SLOT_SIZE)
        self._ring = Ring(self._memory)

    @property
    def handle(self) -> int:
        """The ring's core handle, for a poller's row."""
        return self._ring.handle

    @property
    def slots(self) -> int:
        """How many messages it holds."""
        return self._ring.slots

    @property
    def pending(self) -> int:
        """Messages sent and not yet taken."""
        return self._ring.pending

    def send(self, messages: np.ndarray) -> int:
        """Send the rows of `messages` (n x MESSAGE_WORDS uint64), by the producing side
        only; returns how many it took."""
        messages = np.ascontiguousarray(messages, dtype=np.uint64).reshape(-1, MESSAGE_WORDS)
        lengths = np.full(len(messages), MESSAGE_BYTES, dtype=np.uint32)
        return int(mailbox_send(self.handle, messages, lengths, 0, len(messages)))

    def take(self, max_n: int | None = None) -> np.ndarray:
        """Up to max_n messages (all there are by default), by the consuming side only."""
        messages, lengths = message_buffer(self.slots if max_n is None else max_n)
        n = mailbox_take(self.handle, messages, lengths, len(messages))
        if n < 0:
            raise ValueError("the mailbox's indices are inconsistent")
        return messages[:n].copy()
