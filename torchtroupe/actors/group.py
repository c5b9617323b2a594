"""``ActorGroup`` and ``ActorRef``: the API a caller talks to its ranks through.

Runs in the caller's threads; a group may be used from several threads at once.
This module reads as the API only: writing requests is ``requests.py``, the direct
path ``direct.py``, waiting for replies ``pump.py``, the ranks' lives
``lifecycle.py``, and what a call gets when something goes wrong ``outcomes.py``.

Call options never steal an endpoint's arguments: the endpoint name is
positional-only, and ``timeout=`` is the one call option written inline. For an
endpoint that has a parameter named ``timeout`` itself, ``timeout=`` is refused as
ambiguous; ``ref.options(timeout=5.0).call("fetch", x, timeout=30)`` sends every
keyword to the endpoint.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

from ..errors import GroupClosedError
from ..processes.events import SupervisionEvent
from ..transport.codec import TARGET_ALL
from .actor import Endpoint, check_call, endpoint_name, endpoint_parameters, positional_ranges
from .call_options import DEFAULT, GroupOptionsView, RefOptionsView, Unset, check_timeout
from .lifecycle import GroupLifecycle
from .messages import CALL, RUN
from .outcomes import gather, timeout_error
from .rank_states import DEAD
from .slots import CallSlot


def _callable_name(function: Callable[..., Any]) -> str:
    if not callable(function):
        raise TypeError(f"run() needs a callable, not {type(function).__name__}")
    return str(getattr(function, "__qualname__", repr(function)))


def _emergency_stop(lifecycle: GroupLifecycle) -> None:
    lifecycle.shutdown(timeout=1.0)


class ActorGroup:
    """The ranks of one spawned actor class. Made by :func:`torchtroupe.spawn`.

    Use it as a context manager, or call :meth:`shutdown`. A group that is garbage
    collected, or still open at interpreter exit, is shut down too.
    """

    def __init__(self, lifecycle: GroupLifecycle) -> None:
        self._lifecycle = lifecycle
        actor_class = lifecycle.actor_class
        # The positional-argument counts each endpoint takes: check_call's common case.
        self._arity = positional_ranges(actor_class)
        self._takes_timeout = frozenset(
            name for name, params in endpoint_parameters(actor_class).items() if "timeout" in params
        )
        self._direct = lifecycle.direct
        self._refs = [ActorRef(self, rank) for rank in range(lifecycle.world_size)]
        self._finalizer = weakref.finalize(self, _emergency_stop, lifecycle)

    # -- description ----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The group's name (for logs and errors)."""
        return self._lifecycle.name

    @property
    def world_size(self) -> int:
        """Number of ranks."""
        return self._lifecycle.world_size

    @property
    def pids(self) -> list[int | None]:
        """The current process id of each rank, in rank order (None while a rank has
        no process: dead, or between incarnations)."""
        return self._lifecycle.pids()

    @property
    def events(self) -> list[SupervisionEvent]:
        """Every transition so far (started, exited, restarted, gave_up...)."""
        return self._lifecycle.events.events

    def __len__(self) -> int:
        return self._lifecycle.world_size

    def __getitem__(self, rank: int) -> ActorRef:
        if not -self.world_size <= rank < self.world_size:
            raise IndexError(f"rank {rank} out of range for a group of {self.world_size}")
        return self._refs[rank]

    def __iter__(self) -> Iterator[ActorRef]:
        return iter(self._refs)

    def __repr__(self) -> str:
        actor = self._lifecycle.actor_class.__qualname__
        return f"<ActorGroup {self.name!r} of {self.world_size} {actor}>"

    def options(self, *, timeout: float | None = None) -> GroupOptionsView:
        """A view of this group whose calls use ``timeout`` and pass every keyword
        argument to the endpoint (even one named ``timeout``)."""
        check_timeout(timeout)  # validates it
        return GroupOptionsView(self, timeout)

    # -- the machinery the public calls share ---------------------------------------------

    def _resolve_timeout(self, name: str, timeout: float | Unset | None) -> float | None:
        """The call's timeout; refuses ``timeout=`` that could be the endpoint's own."""
        if timeout is DEFAULT:
            return None
        if name in self._takes_timeout:
            raise TypeError(
                f"{self._lifecycle.actor_class.__qualname__}.{name} has a parameter named "
                f"'timeout', so timeout= is ambiguous here: pass the call's timeout with "
                f".options(timeout=...), e.g. ref.options(timeout=5.0).call({name!r}, ..., "
                f"timeout=...), which sends every keyword to the endpoint"
            )
        return timeout  # type: ignore[return-value]

    def _name_of(self, endpoint: Endpoint) -> str:
        """The endpoint's name: given as a string, or as the function (``Worker.step``)."""
        if type(endpoint) is str:
            return endpoint
        return endpoint_name(self._lifecycle.actor_class, endpoint)  # type: ignore[arg-type]

    def _check(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        arity = self._arity.get(name)
        if kwargs or arity is None or not arity[0] <= len(args) <= arity[1]:
            check_call(self._lifecycle.actor_class, name, args, kwargs)  # raises, or binds

    def _slots(
        self,
        kind: int,
        name: str,
        ranks: Sequence[int],
        args_per_rank: Sequence[tuple[Any, ...]] | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        deadline: float | None,
    ) -> list[CallSlot]:
        """Writes one request (or one per rank) and returns one slot per rank."""
        writer = self._lifecycle.writer
        if args_per_rank is None:
            target = TARGET_ALL if len(ranks) > 1 else ranks[0]
            return writer.submit(ranks, [(target, kind, name, args, kwargs)], deadline)
        outgoing = [
            (rank, kind, name, tuple(a), kwargs)
            for rank, a in zip(ranks, args_per_rank, strict=True)
        ]
        return writer.submit(ranks, outgoing, deadline)

    def _wait(
        self, slots: list[CallSlot], deadline: float | None, timeout: float | None, name: str
    ) -> None:
        self._lifecycle.pump.wait(
            slots, deadline, lambda: str(timeout_error(slots, self.name, name, timeout))
        )

    def _call_one(
        self,
        rank: int,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Any:
        """Calls ``name`` on ``rank`` and returns its result (the path of every call)."""
        arity = self._arity.get(name)
        if kwargs or arity is None or not arity[0] <= len(args) <= arity[1]:
            check_call(self._lifecycle.actor_class, name, args, kwargs)
        deadline = None if timeout is None else check_timeout(timeout)
        direct = self._direct.call(rank, name, args, kwargs, timeout)
        if direct is None:
            slots = self._slots(CALL, name, [rank], None, args, kwargs, deadline)
        else:
            answered, outcome = direct
            if answered:
                return outcome
            slots = [outcome]
        self._wait(slots, deadline, timeout, name)
        return slots[0].outcome()

    def _broadcast(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> list[Any]:
        self._check(name, args, kwargs)
        deadline = None if timeout is None else check_timeout(timeout)
        direct = self._direct.call(TARGET_ALL, name, args, kwargs, timeout)
        if direct is None:
            slots = self._slots(CALL, name, self._all_ranks(), None, args, kwargs, deadline)
        else:
            answered, outcome = direct
            if answered:
                return outcome  # type: ignore[no-any-return]
            slots = outcome
        self._wait(slots, deadline, timeout, name)
        return gather(slots, self.name, name)

    def _scatter(
        self,
        name: str,
        args_per_rank: Sequence[tuple[Any, ...]],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> list[Any]:
        if len(args_per_rank) != self.world_size:
            raise ValueError(
                f"scatter needs {self.world_size} argument tuples (one per rank), "
                f"got {len(args_per_rank)}"
            )
        for each in args_per_rank:
            check_call(self._lifecycle.actor_class, name, tuple(each), kwargs)
        deadline = check_timeout(timeout)
        slots = self._slots(CALL, name, self._all_ranks(), args_per_rank, (), kwargs, deadline)
        self._wait(slots, deadline, timeout, name)
        return gather(slots, self.name, name)

    def _run(
        self,
        ranks: Sequence[int],
        function: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> list[CallSlot]:
        name = _callable_name(function)
        deadline = check_timeout(timeout)
        slots = self._slots(RUN, name, ranks, None, (function, *args), kwargs, deadline)
        self._wait(slots, deadline, timeout, name)
        return slots

    def _run_all(
        self,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> list[Any]:
        slots = self._run(self._all_ranks(), function, args, kwargs, timeout)
        return gather(slots, self.name, _callable_name(function))

    def _future(
        self,
        kind: int,
        name: str,
        ranks: Sequence[int],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        finish: Callable[[list[CallSlot]], Any],
    ) -> Future[Any]:
        """Sends the call and returns a future of ``finish(slots)``, resolved once every
        slot is (on whichever thread resolves the last one); past the timeout it fails
        with CallTimeoutError."""
        deadline = check_timeout(timeout)
        slots = self._slots(kind, name, ranks, None, args, kwargs, deadline)
        return self._lifecycle.pump.futures.future_of(
            slots, finish, deadline, lambda late: str(timeout_error(late, self.name, name, timeout))
        )

    def _call_async(
        self,
        rank: int | None,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Future[Any]:
        """The future of a call of ``name`` on ``rank`` (its result), or on every rank
        if None (the list of results); checked before anything is sent."""
        check_call(self._lifecycle.actor_class, name, args, kwargs)
        if rank is None:
            ranks = self._all_ranks()
            return self._future(
                CALL, name, ranks, args, kwargs, timeout, lambda s: gather(s, self.name, name)
            )
        return self._future(CALL, name, [rank], args, kwargs, timeout, lambda s: s[0].outcome())

    def _all_ranks(self) -> list[int]:
        return list(range(self.world_size))

    # -- public calls ---------------------------------------------------------------

    def broadcast(
        self,
        endpoint: Endpoint,
        /,
        *args: Any,
        timeout: float | Unset | None = DEFAULT,
        **kwargs: Any,
    ) -> list[Any]:
        """Calls ``endpoint`` (its name, or the function: ``Worker.step``) on every rank;
        returns the results in rank order.

        Raises:
            AttributeError, TypeError: Unknown endpoint or bad arguments (nothing sent).
            GroupError: One or more ranks raised or died; holds one exception per
                failed rank (use ``except*``), raised after every rank answered or died.
            CallTimeoutError: No complete answer within ``timeout`` seconds.
            GroupClosedError, SupervisionError: The group was shut down or gave up.
        """
        name = self._name_of(endpoint)
        return self._broadcast(name, args, kwargs, self._resolve_timeout(name, timeout))

    def broadcast_async(
        self,
        endpoint: Endpoint,
        /,
        *args: Any,
        timeout: float | Unset | None = DEFAULT,
        **kwargs: Any,
    ) -> Future[list[Any]]:
        """Like :meth:`broadcast`, returning a future of the list of results.

        Past ``timeout`` seconds the future fails with CallTimeoutError.
        """
        name = self._name_of(endpoint)
        seconds = self._resolve_timeout(name, timeout)
        return self._call_async(None, name, args, kwargs, seconds)

    def scatter(
        self,
        endpoint: Endpoint,
        args_per_rank: Sequence[tuple[Any, ...]],
        /,
        *,
        timeout: float | Unset | None = DEFAULT,
        **kwargs: Any,
    ) -> list[Any]:
        """Calls ``endpoint`` on every rank, rank ``i`` with the ``i``-th args tuple.

        Each rank's arguments are written once, addressed to that rank only.

        Raises:
            ValueError: ``args_per_rank`` does not have one tuple per rank.
            GroupError, CallTimeoutError: As for :meth:`broadcast`.
        """
        name = self._name_of(endpoint)
        return self._scatter(name, args_per_rank, kwargs, self._resolve_timeout(name, timeout))

    def run(
        self,
        function: Callable[..., Any],
        /,
        *args: Any,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        """Runs ``function(actor, *args, **kwargs)`` on every rank (cloudpickled).

        Returns:
            The results in rank order.
        """
        return self._run_all(function, args, kwargs, timeout)

    # -- lifecycle ------------------------------------------------------------------

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stops every rank: graceful stop, then SIGTERM, then SIGKILL; reaps all.

        Outstanding calls fail with GroupClosedError. Idempotent.
        """
        self._finalizer.detach()
        self._lifecycle.shutdown(timeout)

    def __enter__(self) -> ActorGroup:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self._finalizer.detach()
        interrupted = kind is not None and issubclass(kind, KeyboardInterrupt)
        self._lifecycle.shutdown(self._lifecycle.options.shutdown_s, interrupted=interrupted)


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
        """The rank's current process id (None while it has no process)."""
        return self._group.pids[self.rank]

    @property
    def alive(self) -> bool:
        """False once the rank died and will not come back."""
        return self._group._lifecycle.states[self.rank] != DEAD

    def options(self, *, timeout: float | None = None) -> RefOptionsView:
        """A view of this rank whose calls use ``timeout`` and pass every keyword
        argument to the endpoint (even one named ``timeout``)."""
        check_timeout(timeout)  # validates it
        return RefOptionsView(self, timeout)

    def call(
        self,
        endpoint: Endpoint,
        /,
        *args: Any,
        timeout: float | Unset | None = DEFAULT,
        **kwargs: Any,
    ) -> Any:
        """Calls ``endpoint`` (its name, or the function: ``Worker.step``) on this rank
        and returns its result.

        Raises:
            AttributeError, TypeError: Unknown endpoint or bad arguments (nothing sent),
                or ``timeout=`` given to an endpoint that has a ``timeout`` parameter.
            Exception: Whatever the endpoint raised, as its own type, with the
                rank's frames in its traceback and a note naming the rank.
            ActorDiedError: The rank died before answering.
            CallTimeoutError: No answer within ``timeout`` seconds.
        """
        # The hot path of the library: _call_one written out flat, since every Python
        # call costs (Note [The direct path] in direct.py).
        group = self._group_ref()
        if group is None:
            group = self._group  # raises GroupClosedError
        name = endpoint if type(endpoint) is str else group._name_of(endpoint)
        if timeout is DEFAULT:
            timeout = None
        elif name in group._takes_timeout:
            group._resolve_timeout(name, timeout)  # raises: ambiguous
        arity = group._arity.get(name)
        if kwargs or arity is None or not arity[0] <= len(args) <= arity[1]:
            check_call(group._lifecycle.actor_class, name, args, kwargs)
        deadline = None if timeout is None else check_timeout(timeout)  # type: ignore[arg-type]
        direct = group._direct.call(self.rank, name, args, kwargs, timeout)  # type: ignore[arg-type]
        if direct is None:
            slots = group._slots(CALL, name, [self.rank], None, args, kwargs, deadline)
        else:
            answered, outcome = direct
            if answered:
                return outcome
            slots = [outcome]
        group._wait(slots, deadline, timeout, name)  # type: ignore[arg-type]
        return slots[0].outcome()

    def call_async(
        self,
        endpoint: Endpoint,
        /,
        *args: Any,
        timeout: float | Unset | None = DEFAULT,
        **kwargs: Any,
    ) -> Future[Any]:
        """Like :meth:`call`, returning a :class:`concurrent.futures.Future`.

        Past ``timeout`` seconds the future fails with CallTimeoutError.
        """
        group = self._group
        name = group._name_of(endpoint)
        seconds = group._resolve_timeout(name, timeout)
        return group._call_async(self.rank, name, args, kwargs, seconds)

    def run(
        self,
        function: Callable[..., Any],
        /,
        *args: Any,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """Runs ``function(actor, *args, **kwargs)`` on this rank only (cloudpickled).

        Raises:
            CallTimeoutError: No answer within ``timeout`` seconds.
        """
        return self._group._run([self.rank], function, args, kwargs, timeout)[0].outcome()

    def run_async(
        self,
        function: Callable[..., Any],
        /,
        *args: Any,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Future[Any]:
        """Like :meth:`run`, returning a :class:`concurrent.futures.Future`."""
        group = self._group
        name = _callable_name(function)
        return group._future(
            RUN, name, [self.rank], (function, *args), kwargs, timeout, lambda s: s[0].outcome()
        )

    def __repr__(self) -> str:
        return f"<ActorRef rank {self.rank} of {self._group.name!r} pid {self.pid}>"
