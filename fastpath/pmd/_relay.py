"""`Relay`: a poller that passes messages on from one mailbox to another, counting them.

The smallest poller that is not a network one, and a probe of what the host's messaging costs:
two relays on two hosts, each taking from the other's outbox, keep a set of messages going
round between two cores; each message counts its hops in one of its words.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastpath._numba import NJIT, carray, u32_pointer, u64_pointer
from fastpath.pmd._mailbox import (
    MESSAGE_WORDS,
    Mailbox,
    mailbox_send,
    mailbox_take,
    message_buffer,
)
from fastpath.pmd._pollers import POLLER_ARGS, Poller, register_poller

KIND = 3

ARG_INBOX = POLLER_ARGS          # core handle of the mailbox taken from; 0 once it broke
ARG_OUTBOX = POLLER_ARGS + 1     # core handle of the mailbox sent to; 0 once it broke
ARG_MESSAGES = POLLER_ARGS + 2   # address of the uint64 (burst, MESSAGE_WORDS) buffer
ARG_LENGTHS = POLLER_ARGS + 3    # address of its uint32 (burst,) lengths
ARG_BURST = POLLER_ARGS + 4
ARG_HOP_WORD = POLLER_ARGS + 5   # the word each message counts its hops in
ARG_FIRST = POLLER_ARGS + 6      # the first message of the buffer not yet sent on
ARG_HELD = POLLER_ARGS + 7       # messages in the buffer (sent on or not)
ARG_RELAYED = POLLER_ARGS + 8    # messages sent on, in all
ARG_BROKEN = POLLER_ARGS + 9     # 1 once a mailbox's indices were found inconsistent


@njit(**NJIT)
def poll(row, host):
    """Send on what the buffer still holds; once it is empty, take a burst and send that."""
    burst = int(row[ARG_BURST])
    # SAFETY: ARG_MESSAGES and ARG_LENGTHS are the addresses of the relay's own buffers of
    # `burst` rows, kept alive by the Relay for as long as it is on a host.
    messages = carray(u64_pointer(row[ARG_MESSAGES]), (burst, MESSAGE_WORDS))
    lengths = carray(u32_pointer(row[ARG_LENGTHS]), (burst,))
    if row[ARG_INBOX] == 0 or row[ARG_OUTBOX] == 0:
        return 0
    if row[ARG_HELD] == 0:
        got = mailbox_take(row[ARG_INBOX], messages, lengths, burst)
        if got <= 0:
            if got < 0:
                row[ARG_INBOX] = 0
                row[ARG_BROKEN] = 1
            return 0
        hop = int(row[ARG_HOP_WORD])
        for k in range(got):
            messages[k, hop] += 1
        row[ARG_FIRST] = 0
        row[ARG_HELD] = got
    first = int(row[ARG_FIRST])
    sent = mailbox_send(row[ARG_OUTBOX], messages, lengths, first, int(row[ARG_HELD]) - first)
    if sent < 0:
        row[ARG_OUTBOX] = 0
        row[ARG_BROKEN] = 1
        return 0
    row[ARG_RELAYED] += sent
    if first + sent == row[ARG_HELD]:
        row[ARG_HELD] = 0
    else:
        row[ARG_FIRST] = first + sent
    return sent


register_poller(KIND, "relay", poll)


class Relay(Poller):
    """Takes messages from `inbox` and sends them on to `outbox`, up to `burst` at a time,
    adding one to word `hop_word` of each. This relay's host must be the only one taking
    from `inbox` and sending to `outbox`."""

    kind = KIND

    def __init__(self, inbox: Mailbox, outbox: Mailbox, *, burst: int = 32,
                 hop_word: int = MESSAGE_WORDS - 1):
        if not 1 <= burst <= 1024:
            raise ValueError(f"burst must be 1 to 1024, not {burst}")
        if not 0 <= hop_word < MESSAGE_WORDS:
            raise ValueError(f"a message has words 0 to {MESSAGE_WORDS - 1}, not {hop_word}")
        super().__init__()
        self.inbox, self.outbox = inbox, outbox
        self.messages, self.lengths = message_buffer(burst)
        self.row[ARG_INBOX] = inbox.handle
        self.row[ARG_OUTBOX] = outbox.handle
        self.row[ARG_MESSAGES] = self.messages.ctypes.data
        self.row[ARG_LENGTHS] = self.lengths.ctypes.data
        self.row[ARG_BURST] = burst
        self.row[ARG_HOP_WORD] = hop_word

    @property
    def relayed(self) -> int:
        """Messages sent on so far."""
        return int(self.row[ARG_RELAYED])

    @property
    def broken(self) -> bool:
        """Whether a mailbox's ring was found inconsistent (the relay then stops)."""
        return bool(self.row[ARG_BROKEN])

    def held(self) -> np.ndarray:
        """The messages taken and not yet sent on (read while the relay's host is stopped)."""
        return self.messages[int(self.row[ARG_FIRST]):int(self.row[ARG_HELD])].copy()
