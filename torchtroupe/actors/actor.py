"""The actor base class, the endpoint decorator, and ``fatal``.

``Actor`` subclasses are defined in the caller and instantiated in each rank's
process; ``endpoint`` marks the methods callers may invoke.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import cache
from typing import Any, NoReturn, TypeVar

import torch

_ENDPOINT_MARK = "__troupe_endpoint__"
F = TypeVar("F", bound=Callable[..., Any])


class Actor:
    """Base class of everything that runs in a rank.

    Subclass it, mark methods with :func:`endpoint`, and pass the class to
    :func:`torchtroupe.spawn`. ``__init__`` runs inside the rank's process, after
    these attributes are set:

    Attributes:
        rank: This rank's index in its group, ``0 .. world_size - 1``.
        world_size: Number of ranks in the group.
        local_rank: Same as ``rank`` (one machine); kept for torch.distributed habits.
        device: The rank's device: ``cuda:i`` when the group has GPUs, else ``cpu``.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def endpoint(function: F) -> F:
    """Marks an actor method as callable from outside the rank.

    Example:
        >>> class Worker(Actor):
        ...     @endpoint
        ...     def step(self, x: int) -> int:
        ...         return x + 1
    """
    setattr(function, _ENDPOINT_MARK, True)
    return function


def _positional_range(signature: inspect.Signature) -> tuple[int, int] | None:
    """(min, max) positional arguments that surely bind, or None if not that simple."""
    low = high = 0
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            high = 1 << 30
        elif parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            high += 1
            if parameter.default is parameter.empty:
                low += 1
        elif parameter.kind is parameter.KEYWORD_ONLY and parameter.default is parameter.empty:
            return None  # needs a keyword: let bind() check
    return low, high


@cache
def positional_ranges(actor_class: type) -> dict[str, tuple[int, int] | None]:
    """For each endpoint, the positional-argument counts that bind without keywords."""
    return {name: _positional_range(sig) for name, sig in endpoints_of(actor_class).items()}


@cache
def endpoint_parameters(actor_class: type) -> dict[str, frozenset[str]]:
    """For each endpoint, the names of its parameters (to spot ``timeout`` clashes)."""
    return {
        name: frozenset(signature.parameters)
        for name, signature in endpoints_of(actor_class).items()
    }


@cache
def endpoints_of(actor_class: type) -> dict[str, inspect.Signature]:
    """The endpoints of ``actor_class`` with their signatures (``self`` removed).

    Runs in the caller, to check names and arity before anything is sent.
    """
    found: dict[str, inspect.Signature] = {}
    for name in dir(actor_class):
        member = inspect.getattr_static(actor_class, name, None)
        function = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
        if callable(function) and getattr(function, _ENDPOINT_MARK, False):
            signature = inspect.signature(getattr(actor_class, name))
            if not isinstance(member, (staticmethod, classmethod)):
                parameters = list(signature.parameters.values())[1:]
                signature = signature.replace(parameters=parameters)
            found[name] = signature
    return found


Endpoint = str | Callable[..., Any]
"""An endpoint as callers name it: its name, or the function itself (``Worker.step``)."""


def endpoint_name(actor_class: type, endpoint: Callable[..., Any]) -> str:
    """The name of endpoint function ``endpoint`` of ``actor_class``, checked.

    Runs in the caller, before anything is sent.

    Raises:
        TypeError: ``endpoint`` is not a function, not marked ``@tt.endpoint``, or not
            an endpoint of ``actor_class`` (a function of another class).
    """
    name = getattr(endpoint, "__name__", None)
    if not callable(endpoint) or not isinstance(name, str):
        raise TypeError(
            f"an endpoint is given by its name or as the function (Worker.step), not {endpoint!r}"
        )
    function = getattr(endpoint, "__func__", endpoint)
    label = getattr(function, "__qualname__", name)
    if not getattr(function, _ENDPOINT_MARK, False):
        raise TypeError(f"{label} is not an endpoint: mark it with @tt.endpoint")
    member = inspect.getattr_static(actor_class, name, None)
    if getattr(member, "__func__", member) is not function:
        known = ", ".join(sorted(endpoints_of(actor_class))) or "none"
        raise TypeError(
            f"{label} is not an endpoint of {actor_class.__qualname__}; its endpoints are: {known}"
        )
    return name


def check_call(actor_class: type, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Raises in the caller if ``name(*args, **kwargs)`` cannot be a valid call.

    Raises:
        AttributeError: ``name`` is not an endpoint; the message lists those there are.
        TypeError: The arguments do not fit the endpoint's signature.
    """
    if not kwargs:
        simple = positional_ranges(actor_class).get(name)
        if simple is not None and simple[0] <= len(args) <= simple[1]:
            return  # the common case, without building a BoundArguments
    endpoints = endpoints_of(actor_class)
    signature = endpoints.get(name)
    if signature is None:
        known = ", ".join(sorted(endpoints)) or "none (mark methods with @tt.endpoint)"
        hint = " (it exists but is not marked @tt.endpoint)" if hasattr(actor_class, name) else ""
        raise AttributeError(
            f"{actor_class.__qualname__} has no endpoint {name!r}{hint}; its endpoints are: {known}"
        )
    try:
        signature.bind(*args, **kwargs)
    except TypeError as error:
        raise TypeError(f"{actor_class.__qualname__}.{name}{signature}: {error}") from None


class _FatalHook:
    """Set by the rank's runtime; ``fatal()`` outside a rank has nowhere to go."""

    handler: Callable[[str], NoReturn] | None = None


fatal_hook = _FatalHook()


def fatal(reason: str) -> NoReturn:
    """Ends this rank as an unrecoverable fault.

    The rank records ``reason`` (it reaches callers in :class:`ActorDiedError`),
    signals its supervisor with SIGUSR1 and exits at once; the supervisor treats
    it as a crash. Use it for faults the process cannot recover from, such as a
    sticky CUDA error.

    Raises:
        RuntimeError: When called outside an actor's process.
    """
    handler = fatal_hook.handler
    if handler is None:
        raise RuntimeError("torchtroupe.fatal() must be called inside an actor's rank process")
    handler(reason)
