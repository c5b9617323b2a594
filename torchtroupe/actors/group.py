"""``ActorGroup`` and ``ActorRef``: how a caller talks to its ranks.

Runs in the caller's threads; a group may be used from several threads at once.
Calls from one caller reach each rank in the order they were made: the sequence
number is taken and the request written under one lock, and each rank serves its
requests one at a time, in ring order.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

from ..errors import (
    CallTimeoutError,
    ChannelBrokenError,
    ChannelClosedError,
    GroupClosedError,
    GroupError,
)
from ..transport.codec import TARGET_ALL, EncodedMessage, send_encoded
from .actor import check_call, positional_ranges
from .messages import CALL, RUN
from .router import CallSlot
from .runtime import DEAD, READY, GroupRuntime

_TRANSITION_WAIT_S = 0.01

_Outgoing = tuple[int, int, str, tuple[Any, ...], dict[str, Any]]
"""A request to write: (target, kind, name, args, kwargs); see ``messages.Request``."""


def _deadline(timeout: float | None) -> float | None:
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be a number of seconds >= 0 or None, not {timeout}")
    return None if timeout is None else time.monotonic() + timeout


def _callable_name(function: Callable[..., Any]) -> str:
    if not callable(function):
        raise TypeError(f"run() needs a callable, not {type(function).__name__}")
    return str(getattr(function, "__qualname__", repr(function)))


def _emergency_stop(runtime: GroupRuntime) -> None:
    runtime.shutdown(timeout=1.0)


class ActorGroup:
    """The ranks of one spawned actor class. Made by :func:`torchtroupe.spawn`.

    Use it as a context manager, or call :meth:`shutdown`. A group that is garbage
    collected, or still open at interpreter exit, is shut down too.
    """

    def __init__(self, runtime: GroupRuntime) -> None:
        self._runtime = runtime
        # The positional-argument counts each endpoint takes: check_call's common case.
        self._arity = positional_ranges(runtime.actor_class)
        self._refs = [ActorRef(self, rank) for rank in range(runtime.world_size)]
        self._finalizer = weakref.finalize(self, _emergency_stop, runtime)

    # -- description ----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The group's name (for logs and errors)."""
        return self._runtime.name

    @property
    def world_size(self) -> int:
        """Number of ranks."""
        return self._runtime.world_size

    @property
    def pids(self) -> list[int | None]:
        """The current process id of each rank, in rank order."""
        return self._runtime.pids()

    @property
    def events(self) -> list[Any]:
        """Every transition so far (started, exited, restarted, gave_up...)."""
        return self._runtime.events.events

    def __len__(self) -> int:
        return self._runtime.world_size

    def __getitem__(self, rank: int) -> ActorRef:
        if not -self.world_size <= rank < self.world_size:
            raise IndexError(f"rank {rank} out of range for a group of {self.world_size}")
        return self._refs[rank]

    def __iter__(self) -> Iterator[ActorRef]:
        return iter(self._refs)

    def __repr__(self) -> str:
        actor = self._runtime.actor_class.__qualname__
        return f"<ActorGroup {self.name!r} of {self.world_size} {actor}>"

    # -- sending --------------------------------------------------------------------

    def _submit(
        self, ranks: Sequence[int], requests: Sequence[_Outgoing], deadline: float | None
    ) -> list[CallSlot]:
        """Writes ``requests`` and returns one slot per rank in ``ranks``."""
        runtime = self._runtime
        while True:
            runtime.wait_ready(ranks, deadline)
            wait_s = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            if not runtime.send_lock.acquire(timeout=wait_s):
                raise CallTimeoutError(
                    f"other callers of group {self.name!r} held the request ring past the deadline"
                )
            try:
                runtime.raise_if_closed()
                seq = next(runtime.sequence)
                name = requests[0][2]
                slots = [CallSlot(seq, rank, name) for rank in ranks]
                if self._register(slots):
                    self._write(runtime, seq, requests, ranks, slots, deadline)
                    return slots
            finally:
                runtime.send_lock.release()
            # A rank is between incarnations (its death is being recorded): wait for it.
            runtime.wait_changed(_TRANSITION_WAIT_S)

    def _call_direct(
        self,
        target: int,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> tuple[bool, Any] | None:
        """Calls ``name`` on rank ``target`` (every rank if ``TARGET_ALL``) on the direct
        path (Note [The direct path] in ``router.py``): taken only if no other call is
        outstanding, the rank(s) are ready, the request holds builtin values only and
        fits one record with room for it now, so that writing it never waits.

        Returns:
            None if the path was not taken (nothing was sent: the general path makes the
            call); else what ``ReplyRouter.answer_direct`` (or ``gather_direct``) returned.
        """
        runtime = self._runtime
        router = runtime.router
        if timeout is not None and timeout <= 0:
            return None  # the general path times it out
        if not router.try_exclusive(target):
            return None
        try:
            lock = runtime.send_lock
            if not lock.acquire(blocking=False):
                return None
            try:
                states = runtime.states
                if runtime.closed or runtime.gave_up is not None:
                    return None  # the general path raises the right error
                if target == TARGET_ALL:
                    if states.count(READY) != len(states):
                        return None
                elif states[target] != READY:
                    return None
                seq = next(runtime.sequence)
                writer = runtime.end.requests
                if writer.abort_pending:
                    return None
                request = (seq, CALL, name, args, kwargs)
                try:
                    if not writer.ring.send_plain(target, seq, request, target):
                        return None
                except (ChannelBrokenError, ChannelClosedError):
                    return None  # the general path says why
            finally:
                lock.release()
            if target == TARGET_ALL:
                return router.gather_direct(seq, name, timeout)
            return router.answer_direct(target, seq, name, timeout)
        finally:
            router.release_pump()

    def _register(self, slots: list[CallSlot]) -> bool:
        """Registers every slot; a dead rank's slot fails at once with its death.

        Returns:
            False (and nothing registered) if a rank is between incarnations.
        """
        runtime = self._runtime
        failed = []
        for slot in runtime.router.register_all(slots):
            death = runtime.deaths[slot.rank]
            if death is None:
                runtime.router.forget(slots)
                return False
            failed.append((slot, death))
        for slot, death in failed:
            slot.resolve(None, death)
        return True

    def _write(
        self,
        runtime: GroupRuntime,
        seq: int,
        requests: Sequence[_Outgoing],
        ranks: Sequence[int],
        slots: list[CallSlot],
        deadline: float | None,
    ) -> None:
        """Encodes and writes ``requests``; call with the send lock held."""
        router = runtime.router
        encoder = runtime.encoder
        try:
            # Encode everything first: a value that cannot be sent fails the whole call
            # before any rank receives anything. On the wire a request is a plain
            # tuple in the field order of messages.Request.
            encoded = [
                (target, encoder.encode_compact((seq, kind, name, args, kwargs), target, seq))
                for target, kind, name, args, kwargs in requests
            ]
            for target, message in encoded:
                if target != TARGET_ALL and slots[ranks.index(target)].done:
                    continue  # that rank is dead: its slot already failed
                if isinstance(message, EncodedMessage) and message.fds:
                    runtime.send_fds(target, seq, message.fds, deadline)
                send_encoded(
                    runtime.end.requests, message, target, seq, deadline=deadline, wake=target
                )
        except BaseException as error:
            router.forget(slots)
            if isinstance(error, (ChannelBrokenError, ChannelClosedError)) and runtime.closed:
                raise GroupClosedError(f"group {self.name!r} was shut down") from error
            if not isinstance(error, TimeoutError):
                raise
            raise CallTimeoutError(
                f"the request ring of group {self.name!r} stayed full until the deadline"
            ) from error

    def _call_slots(
        self,
        kind: int,
        name: str,
        ranks: Sequence[int],
        args_per_rank: Sequence[tuple[Any, ...]] | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        deadline: float | None,
    ) -> list[CallSlot]:
        if args_per_rank is None:
            target = TARGET_ALL if len(ranks) > 1 else ranks[0]
            return self._submit(ranks, [(target, kind, name, args, kwargs)], deadline)
        requests = [
            (rank, kind, name, tuple(a), kwargs)
            for rank, a in zip(ranks, args_per_rank, strict=True)
        ]
        return self._submit(ranks, requests, deadline)

    def _wait(
        self, slots: list[CallSlot], deadline: float | None, timeout: float | None, name: str
    ) -> None:
        def what() -> str:
            late = [slot.rank for slot in slots if not slot.done]
            return (
                f"{name!r} on rank(s) {late} of group {self.name!r} got no answer within {timeout}s"
            )

        self._runtime.router.wait(slots, deadline, what)

    def _gather(self, slots: list[CallSlot], name: str) -> list[Any]:
        errors = [slot.error for slot in slots if slot.error is not None]
        for error in errors:
            if isinstance(error, CallTimeoutError):
                raise error  # as a synchronous broadcast would
        if errors:
            raise GroupError(
                f"{len(errors)} of {len(slots)} ranks of group {self.name!r} failed in {name!r}",
                [e if isinstance(e, Exception) else RuntimeError(repr(e)) for e in errors],
            )
        return [slot.value for slot in slots]

    def _future(
        self,
        slots: list[CallSlot],
        finish: Callable[[list[CallSlot]], Any],
        deadline: float | None,
        timeout: float | None,
        name: str,
    ) -> Future[Any]:
        """A future of ``finish(slots)``, resolved once every slot is (on whichever
        thread resolves the last one); past ``deadline`` it fails with CallTimeoutError."""
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        router = self._runtime.router
        lock = threading.Lock()
        finished = [False]

        def try_complete() -> None:
            with lock:
                if finished[0] or not all(slot.done for slot in slots):
                    return
                finished[0] = True
            try:
                future.set_result(finish(slots))
            except BaseException as error:
                future.set_exception(error)

        def on_done(_: CallSlot) -> None:
            router.async_resolved()
            router.after_pump(try_complete)  # user callbacks never run under the pump

        pending = [slot for slot in slots if not slot.done]
        for slot in pending:
            slot.callback = on_done
        if pending:

            def what() -> str:
                late = [slot.rank for slot in pending if not slot.done]
                return (
                    f"{name!r} on rank(s) {late} of group {self.name!r} "
                    f"got no answer within {timeout}s"
                )

            router.track_async(pending, deadline, what)
        try_complete()  # also covers slots that resolved before their callback was set
        return future

    def _all_ranks(self) -> list[int]:
        return list(range(self.world_size))

    # -- public calls ---------------------------------------------------------------

    def broadcast(
        self, name: str, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> list[Any]:
        """Calls endpoint ``name`` on every rank; returns the results in rank order.

        Raises:
            AttributeError, TypeError: Unknown endpoint or bad arguments (nothing sent).
            GroupError: One or more ranks raised or died; holds one exception per
                failed rank (use ``except*``), raised after every rank answered or died.
            CallTimeoutError: No complete answer within ``timeout`` seconds.
        """
        runtime = self._runtime
        arity = self._arity.get(name)
        if kwargs or arity is None or not arity[0] <= len(args) <= arity[1]:
            check_call(runtime.actor_class, name, args, kwargs)  # raises, or binds kwargs
        deadline = None if timeout is None else _deadline(timeout)
        direct = self._call_direct(TARGET_ALL, name, args, kwargs, timeout)
        if direct is None:
            slots = self._call_slots(CALL, name, self._all_ranks(), None, args, kwargs, deadline)
        else:
            answered, outcome = direct
            if answered:
                return outcome  # type: ignore[no-any-return]
            slots = outcome
        self._wait(slots, deadline, timeout, name)
        return self._gather(slots, name)

    def broadcast_async(
        self, name: str, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Future[list[Any]]:
        """Like :meth:`broadcast`, returning a future of the list of results.

        Past ``timeout`` seconds the future fails with CallTimeoutError.
        """
        check_call(self._runtime.actor_class, name, args, kwargs)
        deadline = _deadline(timeout)
        slots = self._call_slots(CALL, name, self._all_ranks(), None, args, kwargs, deadline)
        return self._future(slots, lambda s: self._gather(s, name), deadline, timeout, name)

    def scatter(
        self,
        name: str,
        args_per_rank: Sequence[tuple[Any, ...]],
        *,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        """Calls ``name`` on every rank, rank ``i`` with the ``i``-th args tuple.

        Each rank's arguments are written once, addressed to that rank only.

        Raises:
            ValueError: ``args_per_rank`` does not have one tuple per rank.
            GroupError, CallTimeoutError: As for :meth:`broadcast`.
        """
        if len(args_per_rank) != self.world_size:
            raise ValueError(
                f"scatter needs {self.world_size} argument tuples (one per rank), "
                f"got {len(args_per_rank)}"
            )
        for each in args_per_rank:
            check_call(self._runtime.actor_class, name, tuple(each), kwargs)
        deadline = _deadline(timeout)
        slots = self._call_slots(CALL, name, self._all_ranks(), args_per_rank, (), kwargs, deadline)
        self._wait(slots, deadline, timeout, name)
        return self._gather(slots, name)

    def run(
        self, function: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> list[Any]:
        """Runs ``function(actor, *args, **kwargs)`` on every rank (cloudpickled).

        Returns:
            The results in rank order.
        """
        name = _callable_name(function)
        deadline = _deadline(timeout)
        slots = self._call_slots(
            RUN, name, self._all_ranks(), None, (function, *args), kwargs, deadline
        )
        self._wait(slots, deadline, timeout, name)
        return self._gather(slots, name)

    # -- lifecycle ------------------------------------------------------------------

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stops every rank: graceful stop, then SIGTERM, then SIGKILL; reaps all.

        Outstanding calls fail with GroupClosedError. Idempotent.
        """
        self._finalizer.detach()
        self._runtime.shutdown(timeout)

    def __enter__(self) -> ActorGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(self._runtime.options.shutdown_s)


class ActorRef:
    """One rank of a group: ``group[i]``."""

    def __init__(self, group: ActorGroup, rank: int) -> None:
        self._group_ref = weakref.ref(group)  # the group holds its refs: no cycle
        self.rank = rank

    @property
    def _group(self) -> ActorGroup:
        group = self._group_ref()
        if group is None:
            raise GroupClosedError("the group of this ActorRef was garbage collected")
        return group

    @property
    def pid(self) -> int | None:
        """The rank's current process id."""
        return self._group.pids[self.rank]

    @property
    def alive(self) -> bool:
        """False once the rank died and was not (yet) restarted."""
        return self._group._runtime.states[self.rank] != DEAD

    def call(self, name: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Calls endpoint ``name`` on this rank and returns its result.

        Raises:
            AttributeError, TypeError: Unknown endpoint or bad arguments (nothing sent).
            Exception: Whatever the endpoint raised, as its own type, with the
                rank's frames in its traceback and a note naming the rank.
            ActorDiedError: The rank died before answering.
            CallTimeoutError: No answer within ``timeout`` seconds.
        """
        # The hot path of the library: written out flat, since every Python call costs.
        group = self._group_ref()
        if group is None:
            group = self._group  # raises GroupClosedError
        runtime = group._runtime
        arity = group._arity.get(name)
        if kwargs or arity is None or not arity[0] <= len(args) <= arity[1]:
            check_call(runtime.actor_class, name, args, kwargs)  # raises, or binds kwargs
        deadline = None if timeout is None else _deadline(timeout)
        direct = group._call_direct(self.rank, name, args, kwargs, timeout)
        if direct is None:
            slots = group._call_slots(CALL, name, [self.rank], None, args, kwargs, deadline)
        else:
            answered, outcome = direct
            if answered:
                return outcome
            slots = [outcome]
        group._wait(slots, deadline, timeout, name)
        return slots[0].outcome()

    def call_async(
        self, name: str, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Future[Any]:
        """Like :meth:`call`, returning a :class:`concurrent.futures.Future`.

        Past ``timeout`` seconds the future fails with CallTimeoutError.
        """
        group = self._group
        check_call(group._runtime.actor_class, name, args, kwargs)
        deadline = _deadline(timeout)
        slots = group._call_slots(CALL, name, [self.rank], None, args, kwargs, deadline)
        return group._future(slots, lambda s: s[0].outcome(), deadline, timeout, name)

    def run(
        self, function: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Runs ``function(actor, *args, **kwargs)`` on this rank only (cloudpickled).

        Raises:
            CallTimeoutError: No answer within ``timeout`` seconds.
        """
        group = self._group
        name = _callable_name(function)
        deadline = _deadline(timeout)
        slots = group._call_slots(RUN, name, [self.rank], None, (function, *args), kwargs, deadline)
        group._wait(slots, deadline, timeout, name)
        return slots[0].outcome()

    def run_async(
        self, function: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Future[Any]:
        """Like :meth:`run`, returning a :class:`concurrent.futures.Future`."""
        group = self._group
        name = _callable_name(function)
        deadline = _deadline(timeout)
        slots = group._call_slots(RUN, name, [self.rank], None, (function, *args), kwargs, deadline)
        return group._future(slots, lambda s: s[0].outcome(), deadline, timeout, name)

    def __repr__(self) -> str:
        return f"<ActorRef rank {self.rank} of {self._group.name!r} pid {self.pid}>"
