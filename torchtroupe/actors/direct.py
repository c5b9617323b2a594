"""The direct path: a call with nothing else outstanding, written and read by the
caller's own thread, with no slot, no pending table and no condition.

Runs in the caller's threads.

Note [The direct path]
----------------------
A call to one rank (or a broadcast to all), when no other call of the group is
outstanding, needs none of the pump's bookkeeping. The caller takes the pump first
(``ReplyPump.try_exclusive``), writes its request without blocking (the write
half), and reads the reply ring(s) itself for at most the spin window (the read
half). Holding the pump is what makes this safe: nobody else can take the reply, and
a death of the rank is processed only once the pump is let go.

Anything unusual ends the direct path *after* registering the call's slot(s), so the
general path takes over with nothing lost: no reply within the spin window, a reply
that is not this call's (another thread's, one carrying tensors), a rank that
raised (broadcast), a broken ring. A reply that belongs to someone else is
dispatched as the pump would.

The request is written without ever blocking (ring full, a non-plain argument, a
rank not READY, a closed group: general path), because the pump's holder must not
wait on a rank that may itself wait for the pump to drain its reply ring.

Note [The hot path's deliberate twins]
--------------------------------------
A few things are written twice on purpose, because one Python call more per call
shows in the no-op call's 2-5 µs. Each twin must say the same thing as its original;
change them together:

* ``ActorRef.call`` writes ``ActorGroup._call_one`` out flat (the timeout check,
  the arity check, the direct path, then the general path).
* ``RankRuntime.serve`` runs a one-record call inline, as ``RankRuntime.handle``
  runs any request, and answers it with ``reply``.
* This module's two halves against the general path (``RequestWriter.submit``,
  ``ReplyPump.wait``): the direct path only ever hands over to the general one, so a
  call never sees two different answers to the same event.
* The C ring core (``_ringcore.c``, ``_plainpickle.c``) against its Python twin
  (``_ringcore_py.py``): one suite runs over both, and
  ``tests/transport/test_ringcore_parity.py`` checks they expose the same names and
  numbers (Note [One home for the ring's numbers] in ``transport/layout.py``).
"""

from __future__ import annotations

from typing import Any, Protocol

from ..errors import ChannelBrokenError, ChannelClosedError, SupervisionError
from ..transport.codec import TARGET_ALL, loads
from ..transport.ring import spin_any, take_each
from .messages import CALL, ERROR, RESULT
from .outcomes import shut_down
from .pump import ReplyPump
from .requests import RequestWriter
from .slots import CallSlot, Request

READY = "ready"


class RankStates(Protocol):
    """The lifecycle's state the direct path reads without a lock."""

    name: str
    states: list[str]
    closed: bool
    gave_up: SupervisionError | None


class DirectPath:
    """Both halves of the direct path for one group (Note [The direct path]).

    Args:
        pump: The group's reply pump.
        writer: The group's request writer.
        lifecycle: The group's rank states.
    """

    def __init__(self, pump: ReplyPump, writer: RequestWriter, lifecycle: RankStates) -> None:
        self._pump = pump
        self._writer = writer
        self._lifecycle = lifecycle
        self._spin_window_s = pump.spin_s  # fixed per group
        self._replies = pump.reply_readers  # updated in place as ranks restart

    def call(
        self,
        target: int,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> tuple[bool, Any] | None:
        """Calls ``name`` on rank ``target`` (every rank if ``TARGET_ALL``).

        Returns:
            None if the path was not taken (nothing was sent: the general path makes
            the call). ``(True, value)``: the result (a list in rank order for a
            broadcast). ``(False, slots)``: the call goes on on the general path with
            ``slots`` registered (a list for a broadcast, one slot otherwise).

        Raises:
            Exception: What the endpoint raised (a call to one rank), rebuilt.
            GroupClosedError: The group was shut down meanwhile.
        """
        pump = self._pump
        if timeout is not None and timeout <= 0:
            return None  # the general path times it out
        if not pump.try_exclusive(target):
            return None
        try:
            writer = self._writer
            lock = writer.send_lock
            if not lock.acquire(blocking=False):
                return None
            try:
                lifecycle = self._lifecycle
                if lifecycle.closed or lifecycle.gave_up is not None:
                    return None  # the general path raises the right error
                states = lifecycle.states
                if target == TARGET_ALL:
                    if states.count(READY) != len(states):
                        return None
                elif states[target] != READY:
                    return None
                ring_writer = writer.requests
                if ring_writer.abort_pending:
                    return None
                seq = next(writer.sequence)
                request = (seq, CALL, name, args, kwargs)
                ring = ring_writer.ring
                position = ring.cursor
                try:
                    if not ring.send_plain(target, seq, request, target):
                        return None
                except (ChannelBrokenError, ChannelClosedError):
                    return None  # the general path says why
            finally:
                lock.release()
            if target == TARGET_ALL:
                return self.read_replies(seq, name, timeout, request, position)
            return self.read_reply(target, seq, name, timeout, request, position)
        finally:
            pump.release_pump()

    def _spin_s(self, timeout: float | None) -> float:
        """The spin window, no longer than the call's timeout (no clock read: past
        the window, the general path keeps the deadline)."""
        spin_s = self._spin_window_s
        return spin_s if timeout is None or timeout >= spin_s else max(0.0, timeout)

    def read_reply(
        self,
        rank: int,
        seq: int,
        name: str,
        timeout: float | None,
        sent: Request | None = None,
        position: int = -1,
    ) -> tuple[bool, Any]:
        """The read half for one rank; call holding the pump, right after writing.

        Returns:
            ``(True, value)``, or ``(False, slot)`` with ``slot`` registered (see
            :meth:`call`); ``sent`` and ``position`` go into that slot.
        """
        pump = self._pump
        reader = self._replies[rank]
        ring = reader.ring
        try:
            taken = ring.take(loads, TARGET_ALL)
            if taken is None and ring.spin(self._spin_s(timeout)):
                taken = ring.take(loads, TARGET_ALL)
        except (ChannelBrokenError, ChannelClosedError):
            taken = None  # the pump will see why, and process the death
        if type(taken) is tuple and len(taken) == 3 and taken[0] == seq:
            kind = taken[1]
            if kind == RESULT:
                return True, taken[2]
            if kind == ERROR:
                raise pump.remote_error(rank, name, taken[2])
        slot = CallSlot(seq, rank, name, sent, position)
        if pump.register_all([slot]):
            raise shut_down(self._lifecycle.name)
        if isinstance(taken, tuple):
            pump.dispatch_batch([(rank, taken)])
        elif taken is not None:
            pump.dispatch_record(rank, reader, taken)
        return False, slot

    def read_replies(
        self,
        seq: int,
        name: str,
        timeout: float | None,
        sent: Request | None = None,
        position: int = -1,
    ) -> tuple[bool, Any]:
        """The read half of a broadcast; call holding the pump (every rank readable),
        right after writing.

        Returns:
            ``(True, results)`` in rank order, or ``(False, slots)``, one per rank,
            resolved or registered (see :meth:`call`).
        """
        pump = self._pump
        readers = pump.readers  # every rank's, in rank order: all are readable
        results: list[Any] = [None] * len(readers)
        answered = [False] * len(readers)
        missing = len(readers)
        taken: list[tuple[int, tuple[Any, ...] | memoryview]] = []
        while missing:
            taken = take_each(readers, loads, TARGET_ALL)
            if not taken and spin_any(readers, self._spin_s(timeout)):
                taken = take_each(readers, loads, TARGET_ALL)
            if not taken:
                break  # late, or a ring broke: the general path waits
            for index, (rank, item) in enumerate(taken):
                if (
                    type(item) is not tuple
                    or len(item) != 3
                    or item[0] != seq
                    or item[1] != RESULT
                    or answered[rank]
                ):
                    taken = taken[index:]  # the general path dispatches the rest
                    break
                results[rank] = item[2]
                answered[rank] = True
                missing -= 1
            else:
                taken = []
                continue
            break
        if not missing:
            return True, results
        slots = [CallSlot(seq, rank, name, sent, position) for rank in range(len(readers))]
        for slot in slots:
            if answered[slot.rank]:
                slot.resolve(results[slot.rank], None)
        if pump.register_all([slot for slot in slots if not slot.done]):
            raise shut_down(self._lifecycle.name)
        pump.dispatch_taken(taken)
        return False, slots
