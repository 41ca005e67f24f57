"""Reactors after SPDK's thread model: one poll host per core, and messages between them.

`Reactors(cpus)` makes one `Reactor` per CPU, each a `PollHost` on its own thread pinned to
its CPU running whatever compiled pollers are added to it (an `IoJob`, a vhost-user-blk queue,
an NVMe controller). Reactors talk through the host's lock-free mailboxes: one mailbox per
ordered pair, so each has a single producer and a single consumer and nothing on the fast path
takes a lock. A message is MESSAGE_WORDS uint64 words; word 0 is its kind's code, and the
reactor that takes it runs that kind's compiled handler (`register_message`), as SPDK's
`spdk_thread_send_msg` runs a function on another thread. Python's control thread has a
mailbox of its own into each reactor (`Reactors.send`).

Built-in message kinds: MESSAGE_STORE (word 1: an address of this process, word 2: a value to
store there) and MESSAGE_ADD (word 1: an address, word 2: what to add): a reactor writes state
its pollers own, after everything sent to it before, with no lock.
"""

from __future__ import annotations

import os
import threading

import numpy as np
from numba import njit

from fastpath._numba import NJIT, KindDispatch, carray, u32_pointer, u64_pointer
from fastpath.pmd import (
    MESSAGE_WORDS,
    POLLER_ARGS,
    Mailbox,
    Poller,
    PollHost,
    mailbox_take,
    message_buffer,
    register_poller,
)

KIND = 17

MESSAGE_STORE = 1
MESSAGE_ADD = 2

ARG_INBOXES = POLLER_ARGS       # address of the uint64 mailbox handles this reactor takes from
ARG_INBOX_COUNT = POLLER_ARGS + 1
ARG_MESSAGES = POLLER_ARGS + 2  # address of a (burst, MESSAGE_WORDS) uint64 buffer
ARG_LENGTHS = POLLER_ARGS + 3   # address of its uint32 lengths
ARG_BURST = POLLER_ARGS + 4
ARG_HANDLED = POLLER_ARGS + 5   # messages handled, in all
ARG_UNKNOWN = POLLER_ARGS + 6   # messages of no registered kind (dropped)
ARG_BROKEN = POLLER_ARGS + 7    # mailboxes found inconsistent (no longer read)

MESSAGE_BURST = 32


@njit(**NJIT)
def _no_such_message(message, reactor):
    # A message of no registered kind: counted by the caller, otherwise ignored.
    return -1


@njit(**NJIT)
def _store(message, reactor):
    # SAFETY: MESSAGE_STORE carries an address this process's own code put in it (a poller's
    # row or state), never one from a peer.
    carray(u64_pointer(message[1]), (1,))[0] = message[2]
    return 1


@njit(**NJIT)
def _add(message, reactor):
    # SAFETY: as _store.
    carray(u64_pointer(message[1]), (1,))[0] += message[2]
    return 1


_handle = KindDispatch("message_by_kind", 2, _no_such_message)
handle_by_kind = _handle.function


def register_message(code: int, name: str, handler) -> None:
    """Register message kind `code` (named `name`): `handler(message, reactor_row) -> int`,
    compiled, run by the reactor that takes the message (returns 1, or -1 to count it as
    unknown). Register before the first reactor starts."""
    _handle.register(code, name, handler)


register_message(MESSAGE_STORE, "store", _store)
register_message(MESSAGE_ADD, "add", _add)


@njit(**NJIT)
def poll(row, host):
    """Take a burst from each inbox and run each message's handler."""
    burst = np.int64(row[ARG_BURST])
    count = np.int64(row[ARG_INBOX_COUNT])
    # SAFETY: the MessagePoller's own arrays of these shapes, alive while it is on a host.
    inboxes = carray(u64_pointer(row[ARG_INBOXES]), (count,))
    messages = carray(u64_pointer(row[ARG_MESSAGES]), (burst, MESSAGE_WORDS))
    lengths = carray(u32_pointer(row[ARG_LENGTHS]), (burst,))
    done = 0
    for i in range(count):
        if inboxes[i] == 0:
            continue
        got = mailbox_take(inboxes[i], messages, lengths, burst)
        if got < 0:
            inboxes[i] = 0
            row[ARG_BROKEN] += np.uint64(1)
            continue
        for k in range(got):
            if handle_by_kind(messages[k], row) < 0:
                row[ARG_UNKNOWN] += np.uint64(1)
            else:
                row[ARG_HANDLED] += np.uint64(1)
        done += got
    return done


register_poller(KIND, "reactor-messages", poll)


class MessagePoller(Poller):
    """Takes the messages sent to one reactor (from `inboxes`) and runs their handlers."""

    kind = KIND

    def __init__(self, inboxes: list[Mailbox], burst: int = MESSAGE_BURST):
        super().__init__()
        self.inboxes = inboxes
        self.handles = np.array([m.handle for m in inboxes], dtype=np.uint64)
        self.messages, self.lengths = message_buffer(burst)
        self.row[ARG_INBOXES] = self.handles.ctypes.data
        self.row[ARG_INBOX_COUNT] = len(inboxes)
        self.row[ARG_MESSAGES] = self.messages.ctypes.data
        self.row[ARG_LENGTHS] = self.lengths.ctypes.data
        self.row[ARG_BURST] = burst

    @property
    def handled(self) -> int:
        """Messages whose handler ran."""
        return int(self.row[ARG_HANDLED])

    @property
    def unknown(self) -> int:
        """Messages of no registered kind (dropped)."""
        return int(self.row[ARG_UNKNOWN])


class Reactor(PollHost):
    """One core's poll host, numbered `index` among its `Reactors`."""

    def __init__(self, index: int, cpu: int | None, **host_options):
        super().__init__(f"reactor-{index}", cpu=cpu, **host_options)
        self.index = index


class Reactors:
    """A reactor on each of `cpus` (None: one reactor, unpinned), with a mailbox from each
    to each other and from Python's control thread to each, and a MessagePoller on each.

    `start()` runs every reactor on its own thread; `stop()` waits for them.
    """

    def __init__(self, cpus: list[int | None] | None = None, *, mailbox_slots: int = 1024,
                 **host_options):
        cpus = [None] if cpus is None else list(cpus)
        if not cpus:
            raise ValueError("reactors need at least one CPU")
        allowed = os.sched_getaffinity(0)
        for cpu in cpus:
            if cpu is not None and cpu not in allowed:
                raise ValueError(f"CPU {cpu} is not one this process may run on "
                                 f"({sorted(allowed)})")
        self.reactors = [Reactor(k, cpu, **host_options) for k, cpu in enumerate(cpus)]
        n = len(cpus)
        # mailboxes[i][j]: from reactor i to reactor j (i != j); index n is Python's.
        self.mailboxes = [[Mailbox(mailbox_slots) if i != j else None for j in range(n)]
                          for i in range(n + 1)]
        self.message_pollers = []
        for j, reactor in enumerate(self.reactors):
            inboxes = [self.mailboxes[i][j] for i in range(n + 1) if i != j]
            poller = MessagePoller(inboxes)
            reactor.add(poller)
            self.message_pollers.append(poller)
        self._control = threading.Lock()

    def __len__(self) -> int:
        return len(self.reactors)

    def __getitem__(self, index: int) -> Reactor:
        return self.reactors[index]

    def mailbox(self, source: int, destination: int) -> Mailbox:
        """The mailbox reactor `source` sends to reactor `destination` through (a poller of
        `source` is its only producer)."""
        if source == destination:
            raise ValueError("a reactor does not send messages to itself")
        return self.mailboxes[source][destination]

    def send(self, destination: int, messages: np.ndarray) -> int:
        """From Python's control thread: send rows of MESSAGE_WORDS words to reactor
        `destination`; returns how many its mailbox took."""
        with self._control:
            return self.mailboxes[len(self.reactors)][destination].send(messages)

    def start(self) -> None:
        """Run every reactor on its own thread (on its CPU)."""
        for reactor in self.reactors:
            reactor.start()

    def stop(self) -> None:
        """Stop every reactor and wait for its thread."""
        for reactor in self.reactors:
            reactor.stop()

    def __enter__(self) -> Reactors:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
