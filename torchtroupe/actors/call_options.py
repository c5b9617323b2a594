"""Call options, set apart from an endpoint's arguments: ``options(timeout=...)``.

Runs in the caller's threads. ``ref.options(timeout=5.0).call("fetch", x, timeout=30)``
sends every keyword, ``timeout`` included, to the endpoint; the view's own options
apply to the call. Views are light: a reference to the ref or group and the options.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Final

from .actor import Endpoint

if TYPE_CHECKING:
    from .group import ActorGroup, ActorRef  # the views are made by them: siblings


class Unset:
    """The type of :data:`DEFAULT`: no ``timeout=`` was written."""

    def __repr__(self) -> str:
        return "<no timeout given>"


DEFAULT: Final = Unset()
"""The default of ``timeout=``: none was written (so it cannot clash with an endpoint's)."""


def check_timeout(timeout: float | None) -> float | None:
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be a number of seconds >= 0 or None, not {timeout}")
    return None if timeout is None else time.monotonic() + timeout


class RefOptionsView:
    """``ref.options(timeout=...)``: the same rank, with call options set apart from
    the endpoint's arguments (every keyword goes to the endpoint)."""

    def __init__(self, ref: ActorRef, timeout: float | None) -> None:
        self._ref = ref
        self._timeout = timeout

    def call(self, endpoint: Endpoint, /, *args: Any, **kwargs: Any) -> Any:
        """:meth:`ActorRef.call` with this view's options."""
        ref = self._ref
        group = ref._group
        return group._call_one(ref.rank, group._name_of(endpoint), args, kwargs, self._timeout)

    def call_async(self, endpoint: Endpoint, /, *args: Any, **kwargs: Any) -> Future[Any]:
        """:meth:`ActorRef.call_async` with this view's options."""
        group = self._ref._group
        return group._call_async(
            self._ref.rank, group._name_of(endpoint), args, kwargs, self._timeout
        )

    def run(self, function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """:meth:`ActorRef.run` with this view's options."""
        group = self._ref._group
        return group._run([self._ref.rank], function, args, kwargs, self._timeout)[0].outcome()


class GroupOptionsView:
    """``group.options(timeout=...)``: the same group, with call options set apart from
    the endpoint's arguments (every keyword goes to the endpoint)."""

    def __init__(self, group: ActorGroup, timeout: float | None) -> None:
        self._group = group
        self._timeout = timeout

    def broadcast(self, endpoint: Endpoint, /, *args: Any, **kwargs: Any) -> list[Any]:
        """:meth:`ActorGroup.broadcast` with this view's options."""
        group = self._group
        return group._broadcast(group._name_of(endpoint), args, kwargs, self._timeout)

    def broadcast_async(
        self, endpoint: Endpoint, /, *args: Any, **kwargs: Any
    ) -> Future[list[Any]]:
        """:meth:`ActorGroup.broadcast_async` with this view's options."""
        group = self._group
        return group._call_async(None, group._name_of(endpoint), args, kwargs, self._timeout)

    def scatter(
        self, endpoint: Endpoint, args_per_rank: Sequence[tuple[Any, ...]], /, **kwargs: Any
    ) -> list[Any]:
        """:meth:`ActorGroup.scatter` with this view's options."""
        group = self._group
        return group._scatter(group._name_of(endpoint), args_per_rank, kwargs, self._timeout)

    def run(self, function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> list[Any]:
        """:meth:`ActorGroup.run` with this view's options."""
        return self._group._run_all(function, args, kwargs, self._timeout)

    def __getitem__(self, rank: int) -> RefOptionsView:
        return RefOptionsView(self._group[rank], self._timeout)
