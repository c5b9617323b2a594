"""The reply pump: routing replies to the calls that wait for them, in the caller.

Runs in caller threads, the group's async-reply thread and the monitor thread.

Note [Who reads the reply rings]
--------------------------------
A thread hop costs tens of microseconds in CPython, more than a whole call should.
So there is no dedicated reader: a thread that waits for a reply takes the *pump*
lock and reads the reply rings itself, dispatching every reply it finds to its
call slot by sequence number. Threads that find the pump taken wait on a condition
that the pumping thread notifies after each dispatch and when it lets go, so one
of them takes over. Futures of asynchronous calls that nobody waits on are served
by a background thread that pumps only while such calls are outstanding
(``async_replies.py``).

A call with nothing else outstanding takes a shorter way, the *direct path*: see
Note [The direct path] in ``direct.py``.

A rank's death is queued by the monitor thread, which also marks the rank's reply
ring broken (waking the pump). The pump drains every complete reply the rank wrote
before it died, then fails the rank's calls in flight with ActorDiedError (calls
a rank that died idle never read may stay pending: Note [Calls a dead rank never
read] in ``deaths.py``). So a reply that made it into the ring is never lost, and no call
waits past the death.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from ..errors import (
    ActorDiedError,
    CallTimeoutError,
    ChannelBrokenError,
    ChannelClosedError,
)
from ..transport.codec import TARGET_ALL, loads
from ..transport.mailbox import CallerEnd
from ..transport.ring import RingReader, spin_any, take_each
from ..transport.stream import IncomingMessage, MessageReader
from ..transport.waiting import wait_until
from .async_replies import AsyncReplies
from .messages import ERROR, FATAL, NO_SEQ, RESULT, Reply
from .outcomes import died_in_flight, shut_down
from .replies import ABORTED_REPLY, BROKEN_REPLY, decode_reply, rebuild_remote_error
from .slots import CallSlot, all_done, slot_key

_SLICE_S = 0.05
DeathOutcome = Callable[[list[CallSlot]], tuple[ActorDiedError, list[CallSlot]]]
"""Called with a dead rank's pending calls once its replies are drained: returns its
error and the calls that stay pending (the rest fail with the error)."""
logger = logging.getLogger(__name__)


class ReplyPump:
    """Dispatches replies from every rank's reply ring to waiting calls.

    Args:
        end: The caller's end of the mailbox.
        group: The group's name, for errors.
        describe: Names a rank for error notes, e.g. ``"Worker rank 2 (pid 41)"``.
        on_control: Receives replies that answer no call (FATAL reports).
        claim_fds: ``(rank, tag, count) -> fds`` passed beside a reply (shared tensors).
    """

    def __init__(
        self,
        end: CallerEnd,
        group: str,
        describe: Callable[[int], str],
        on_control: Callable[[int, Reply], None],
        claim_fds: Callable[[int, int, int], list[int]],
    ) -> None:
        self._end = end
        self._group = group
        self._claim_fds = claim_fds
        self._describe = describe
        self._on_control = on_control
        self._lock = threading.Lock()
        self._pump = threading.Lock()
        self._pump_owner: int | None = None  # thread ident of the pump's holder
        self._deferred: deque[Callable[[], None]] = deque()
        self._changed = threading.Condition(threading.Lock())
        self._pending: dict[int, CallSlot] = {}
        self._readable = [False] * end.layout.world_size
        self._drain_set: tuple[tuple[int, MessageReader], ...] = ()  # readable ranks
        self._spin_readers: tuple[RingReader, ...] = ()  # their reply rings
        self._deaths: list[tuple[int, DeathOutcome, threading.Event]] = []
        self._sleepers = 0  # threads waiting on _changed; nobody to notify when 0
        self._closed = False
        self.futures = AsyncReplies(self)

    # -- registration ---------------------------------------------------------------

    def open_rank(self, rank: int) -> None:
        """Starts reading ``rank``'s reply ring (a new incarnation is starting)."""
        with self._lock:
            self._end.reopen_reply(rank)
            self._readable[rank] = True
            self._update_drain_set()

    def register(self, slot: CallSlot) -> bool:
        """Expects a reply for ``slot``. Returns False if its rank is not readable."""
        return not self.register_all([slot])

    def register_all(self, slots: list[CallSlot]) -> list[CallSlot]:
        """Expects a reply for each of ``slots`` whose rank is readable (one lock for a
        whole broadcast). Returns the others, which are not registered."""
        refused = []
        with self._lock:
            pending, readable, closed = self._pending, self._readable, self._closed
            for slot in slots:
                if closed or not readable[slot.rank]:
                    refused.append(slot)
                else:
                    pending[slot.key] = slot
        return refused

    def forget(self, slots: Iterable[CallSlot]) -> None:
        """Stops expecting replies for ``slots``; late replies will be dropped."""
        with self._lock:
            for slot in slots:
                self._pending.pop(slot.key, None)

    # -- waiting --------------------------------------------------------------------

    def wait(self, slots: list[CallSlot], deadline: float | None, what: Callable[[], str]) -> None:
        """Waits until every slot is resolved.

        Raises:
            CallTimeoutError: The deadline passed first; the unresolved slots are
                forgotten, so their late replies are dropped.
        """
        while True:
            if all_done(slots):
                return
            if self._closed:
                for slot in slots:
                    slot.resolve(None, shut_down(self._group))
                return
            if deadline is not None and time.monotonic() >= deadline:
                self.forget(slot for slot in slots if not slot.done)
                if all_done(slots):
                    return
                raise CallTimeoutError(what())
            if self.take_pump():
                try:
                    while not self._closed and not all_done(slots):
                        if not self._pump_once(deadline):
                            break
                finally:
                    self.release_pump()
            else:
                with self._changed:
                    if self._pump.locked() and not all_done(slots):
                        timeout = (
                            _SLICE_S
                            if deadline is None
                            else max(0.0, min(_SLICE_S, deadline - time.monotonic()))
                        )
                        self._sleepers += 1
                        try:
                            self._changed.wait(timeout)
                        finally:
                            self._sleepers -= 1

    def _notify(self) -> None:
        if self._sleepers:
            with self._changed:
                self._changed.notify_all()

    def take_pump(self) -> bool:
        """Takes the pump if it is free (then call :meth:`release_pump`)."""
        if not self._pump.acquire(blocking=False):
            return False
        try:
            self._pump_owner = threading.get_ident()
        except BaseException:  # an interrupt right after the acquire must not keep it
            self._pump.release()
            raise
        return True

    def release_pump(self) -> None:
        """Lets go of the pump (taken by :meth:`try_exclusive`, or by a pumping thread),
        then runs what was deferred while holding it and processes a death queued
        meanwhile."""
        while True:
            self._pump_owner = None
            self._pump.release()
            if self._sleepers:
                self._notify()
            while self._deferred:
                self._deferred.popleft()()
            # A death queued while we were letting go must not wait for the next caller.
            if not self._deaths or not self.take_pump():
                return
            try:
                if not self._closed:
                    self._drain()
            except BaseException:
                self._pump_owner = None
                self._pump.release()
                raise

    def after_pump(self, function: Callable[[], None]) -> None:
        """Runs ``function`` now, or, if this thread holds the pump, right after it lets
        go: code run on completion (user callbacks of futures) may call into the group,
        and must never run while this thread blocks every other reader."""
        if self._pump_owner == threading.get_ident():
            self._deferred.append(function)
        else:
            function()

    def _pump_once(self, deadline: float | None) -> bool:
        """Drains once, or waits for something to drain. False once the deadline passed."""
        if self._drain():
            return True
        # The common case first: a reply within the spin window, seen by the ring core.
        if self._spin(self._end.strategy.spin_s) and self._drain():
            return True
        slice_end = time.monotonic() + _SLICE_S
        until = slice_end if deadline is None else min(deadline, slice_end)
        wait_until(
            self._has_work,
            self._end.reply_bell,
            deadline=until,
            strategy=self._end.strategy,
            spin=self._spin,
        )
        self._drain()
        return deadline is None or time.monotonic() < deadline

    def _spin(self, seconds: float) -> bool:
        """Busy-waits (in the ring core) until a readable reply ring has data."""
        return spin_any(self._spin_readers, seconds)

    def _update_drain_set(self) -> None:
        """Rebuilds the readable ranks' readers and their rings (what ``_drain`` reads
        and ``_spin`` watches); call with ``_lock`` held whenever ``_readable`` or a reply
        reader changes."""
        replies = self._end.replies
        self._drain_set = tuple(
            (rank, replies[rank]) for rank, readable in enumerate(self._readable) if readable
        )
        self._spin_readers = tuple(reader.ring for _, reader in self._drain_set)

    def _has_work(self) -> bool:
        return bool(self._deaths) or self._closed or spin_any(self._spin_readers, 0.0)

    # -- the direct path's ownership (Note [The direct path] in direct.py) --------------

    def try_exclusive(self, rank: int) -> bool:
        """Takes the pump for a direct call to ``rank`` (every rank if ``TARGET_ALL``):
        only if no call is outstanding, no death is queued, the rank(s) are readable
        and no other thread pumps. If True, call :meth:`release_pump` when done."""
        if self._pending or self._deaths or self._closed or not self.take_pump():
            return False
        # Read under the pump: only its holder processes deaths, which change these.
        readable = all(self._readable) if rank == TARGET_ALL else self._readable[rank]
        if readable and not self._deaths and not self._closed:
            return True
        self.release_pump()
        return False

    @property
    def readers(self) -> tuple[RingReader, ...]:
        """The reply rings of the readable ranks, in rank order."""
        return self._spin_readers

    @property
    def reply_readers(self) -> list[MessageReader]:
        """Each rank's reply reader (the list is updated in place as ranks restart)."""
        return self._end.replies

    @property
    def spin_s(self) -> float:
        """How long a waiter spins before it parks."""
        return self._end.strategy.spin_s

    # -- draining -------------------------------------------------------------------

    def _drain(self) -> bool:
        """Reads and dispatches every reply that has arrived. True if there were any
        (or deaths to process)."""
        taken = take_each(self._spin_readers, loads, TARGET_ALL)
        if taken:
            self.dispatch_taken(taken)
        if self._deaths:
            self._process_deaths()
            return True
        return bool(taken)

    def dispatch_taken(self, taken: list[tuple[int, tuple[Any, ...] | memoryview]]) -> None:
        """Dispatches what ``take_each`` read, in ring order per rank: the one-record
        replies in one batch, and a record left to the general path by decoding it
        and then reading the rest of its ring the slow way."""
        batch: list[tuple[int, Any]] = []
        for index, item in taken:
            rank, reader = self._drain_set[index]
            if isinstance(item, tuple):
                batch.append((rank, item))
                continue
            self.dispatch_batch(batch)  # what came before it, first
            batch = []
            self.dispatch_record(rank, reader, item)
        self.dispatch_batch(batch)

    def dispatch_record(self, rank: int, reader: MessageReader, record: memoryview) -> None:
        """Decodes a record ``take`` left to the general path and dispatches it, then
        reads the rest of that rank's ring the slow way."""
        message = reader.message_from(record)
        if message is not None:
            self._decode_and_dispatch(rank, message)
        self._drain_rank(rank, reader)

    def _drain_rank(self, rank: int, reader: MessageReader) -> None:
        """Reads and dispatches the replies waiting on one rank's ring, one by one."""
        while True:
            try:
                taken = reader.take(loads, TARGET_ALL)
            except (ChannelBrokenError, ChannelClosedError):
                return
            if taken is None:
                return
            if isinstance(taken, tuple):
                self.dispatch_batch([(rank, taken)])
            elif not self._decode_and_dispatch(rank, taken):
                return

    def _decode_and_dispatch(self, rank: int, message: IncomingMessage) -> bool:
        """Decodes a reply the general way (tensors, fds, fragments) and dispatches it.
        False if the ring broke in the middle of it."""
        reply = decode_reply(message, partial(self._claim_fds, rank), lambda: self._describe(rank))
        if reply is BROKEN_REPLY:
            return False
        if reply is not ABORTED_REPLY:
            self.dispatch_batch([(rank, reply)])
        return True

    def dispatch_batch(self, replies: list[tuple[int, Any]]) -> None:
        """Hands each ``(rank, (seq, kind, value))`` reply to its call (one lock for
        the batch); replies that answer no call go to ``on_control``."""
        if not replies:
            return
        answered: list[tuple[int, CallSlot, int, Any]] = []
        control: list[tuple[int, Reply]] = []
        with self._lock:
            pending = self._pending
            for rank, reply in replies:
                try:
                    seq, kind, value = reply
                except (TypeError, ValueError):
                    logger.warning("dropped a malformed reply from %s", self._describe(rank))
                    continue
                if seq == NO_SEQ or kind == FATAL:
                    control.append((rank, Reply(seq, kind, value)))
                    continue
                slot = pending.pop(slot_key(seq, rank), None)
                if slot is not None:  # else the answer to a call that timed out: dropped
                    answered.append((rank, slot, kind, value))
        for rank, slot, kind, value in answered:
            if kind == RESULT:
                slot.resolve(value, None)
            elif kind == ERROR:
                slot.resolve(None, self.remote_error(rank, slot.name, value))
            else:
                slot.resolve(Reply(slot.seq, kind, value), None)
        for rank, reply in control:
            self._on_control(rank, reply)
        if self._sleepers:
            self._notify()

    def remote_error(self, rank: int, endpoint: str, error: Any) -> BaseException:
        """The exception an ERROR reply carries, rebuilt as its own type with a note."""
        return rebuild_remote_error(
            error, f"raised in {self._describe(rank)}, endpoint {endpoint!r}"
        )

    # -- deaths ---------------------------------------------------------------------

    def drain_now(self) -> None:
        """Reads whatever replies are waiting, if no other thread is reading them."""
        if self.take_pump():
            try:
                if not self._closed:
                    self._drain()
            finally:
                self.release_pump()

    note_poke = drain_now

    def note_death(self, rank: int, outcome: DeathOutcome) -> threading.Event:
        """Queues ``rank``'s death; the returned event is set once it was processed.

        Runs in the monitor thread, after the rank's reply ring was marked broken.
        ``outcome`` is called once the rank's last replies are drained, with the rank's
        pending calls; it returns the rank's error and the calls that stay pending
        (for its next incarnation or a later verdict); the others fail.
        """
        processed = threading.Event()
        with self._lock:
            self._deaths.append((rank, outcome, processed))
        self._end.reply_bell.interrupt()
        self.drain_now()
        return processed

    def _process_deaths(self) -> None:
        with self._lock:
            deaths, self._deaths = self._deaths, []
        for rank, outcome, processed in deaths:
            self._drain_rank(rank, self._end.replies[rank])
            with self._lock:
                mine = [slot for slot in self._pending.values() if slot.rank == rank]
            error, kept = outcome(mine)
            keep = {slot.key for slot in kept}
            with self._lock:
                self._readable[rank] = False
                self._update_drain_set()
                failed = [slot for slot in mine if slot.key not in keep]
                for slot in failed:
                    self._pending.pop(slot.key, None)
            for slot in failed:
                slot.resolve(None, died_in_flight(error, slot.name))
            processed.set()
        with self._changed:
            self._changed.notify_all()

    def pending_of(self, ranks: Iterable[int]) -> list[CallSlot]:
        """The unanswered calls to ``ranks`` (to write again, or to fail)."""
        wanted = set(ranks)
        with self._lock:
            return [slot for slot in self._pending.values() if slot.rank in wanted]

    def fail(self, slots: Iterable[CallSlot], error: BaseException) -> None:
        """Fails ``slots`` with ``error`` (those still pending)."""
        with self._lock:
            failed = [slot for slot in slots if self._pending.pop(slot.key, None) is not None]
        for slot in failed:
            slot.resolve(None, error)
        self._notify()

    # -- what the async-reply thread uses (async_replies.py) ------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` began."""
        return self._closed

    def idle_wait(self, timeout: float) -> None:
        """Waits up to ``timeout`` for a notification (a dispatch, a let-go, a close)."""
        with self._changed:
            if self._closed:
                return
            self._sleepers += 1
            try:
                self._changed.wait(timeout)
            finally:
                self._sleepers -= 1

    def wake_idle(self) -> None:
        """Wakes the threads in :meth:`idle_wait`."""
        with self._changed:
            self._changed.notify_all()

    @property
    def busy(self) -> bool:
        """True while some thread holds the pump."""
        return self._pump.locked()

    def pump_while(self, keep_going: Callable[[], bool], seconds: float) -> None:
        """Pumps for up to ``seconds`` while ``keep_going()``, if the pump is free."""
        if not self.take_pump():
            return
        try:
            slice_end = time.monotonic() + seconds
            while keep_going() and not self._closed and time.monotonic() < slice_end:
                self._pump_once(slice_end)
        finally:
            self.release_pump()

    def close(self, timeout: float) -> bool:
        """Stops the async-reply thread and all reading of the rings, for good.

        Unanswered calls must have been failed first.

        Returns:
            True once no thread of the pump is inside the rings, so their memory
            may be released; False if one still was after ``timeout`` seconds (a
            signal handler interrupted it, say).
        """
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._end.reply_bell.interrupt()
        with self._lock:
            deaths, self._deaths = self._deaths, []
        for _, _, processed in deaths:
            processed.set()  # nobody will drain them now
        self.futures.join(timeout)
        if not self._pump.acquire(timeout=timeout):  # a drain in progress (a poke, a waiter)
            return False
        self._pump.release()
        return True

    def fail_all(self, make_error: Callable[[CallSlot], BaseException]) -> None:
        """Fails every outstanding call (the group is closing)."""
        with self._lock:
            slots = list(self._pending.values())
            self._pending.clear()
        for slot in slots:
            slot.resolve(None, make_error(slot))
        with self._changed:
            self._changed.notify_all()
