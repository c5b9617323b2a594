"""Which calls of a dead rank fail, and which wait for its next incarnation.

Runs in the caller, on the thread that holds the reply pump while it processes a
death (see ``pump.py``).

Note [Calls a dead rank never read]
-----------------------------------
A call is *in flight* once it was sent to its rank, and a rank that dies fails its
calls in flight with ActorDiedError: the endpoint may have run, and a call is never
retried behind the user's back. But the design also says a call made *after* the
death waits for the next incarnation, and a death happens before the monitor sees
it: ``os.kill(pid, SIGKILL)`` followed at once by ``ref.call(...)`` writes the
request to a rank that is already dying.

Such a call is told apart without a clock. It took the direct path (Note [The
direct path]: nothing else of the caller was outstanding), got no answer, and its
slot remembers the request and where it starts in the request ring. When the rank
dies, its read cursor says which requests it read. A rank that died *idle* (no call
it read was unanswered) with such a request unread died before the request could
reach it: the call stays pending and is written again, in order, to the next
incarnation before any new call, or fails with the rank's death if it stays dead
(``GroupClosedError`` / ``SupervisionError`` if the group closes or gives up).
Everything else in flight fails with ActorDiedError, in particular calls queued
behind a running one (the rank was busy) and asynchronous calls (``*_async`` never
take the direct path). At-most-once holds either way: a request written again was
never read.
"""

from __future__ import annotations

from ..transport.mailbox import MailboxLayout
from ..transport.ring import detach_reader
from .slots import BOOT, CARRIED, CallSlot


def requests_read(layout: MailboxLayout, rank: int) -> int:
    """Where dead rank ``rank`` stopped reading the request ring; detaches it there,
    so the caller never waits for it to make room."""
    requests = layout.request_ring()
    read_up_to = int(layout.region.words[requests.word_index(requests.reader_line(rank))])
    detach_reader(requests, rank)
    return read_up_to


def calls_to_keep(pending: list[CallSlot], read_up_to: int) -> list[CallSlot]:
    """The calls of a dead rank that stay pending (Note [Calls a dead rank never read]):
    those already carried over from an earlier death (a restart that failed does not
    lose them), and the direct-path requests it never read if it died idle. A rank's
    start (its READY slot) does not make it busy."""
    carried = [slot for slot in pending if slot.position == CARRIED]
    mine = [slot for slot in pending if slot.position not in (CARRIED, BOOT)]
    unread = [slot for slot in mine if slot.request is not None and slot.position >= read_up_to]
    kept = carried + (unread if len(unread) == len(mine) else [])
    for slot in kept:
        slot.position = CARRIED  # written again to the next incarnation, not read by this one
    return kept
