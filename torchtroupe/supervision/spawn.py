"""``spawn``: start a group of ranks under its restart policy; return when all are ready.

Runs in the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import ValidationError

from ..actors.actor import Actor
from ..actors.group import ActorGroup
from ..actors.lifecycle import GroupLifecycle
from ..processes.events import EventCallback, EventLog
from ..processes.monitor import Monitor
from ..processes.signals import register as register_with_signals
from .group_policy import GroupPolicy
from .policy import RestartPolicy, SpawnOptions


def resolve_devices(devices: str | tuple[int, ...] | None, world_size: int) -> list[int | None]:
    """Maps the ``devices`` option to one CUDA index (or None for CPU) per rank.

    ``"cuda"`` puts rank ``i`` on ``cuda:i``; with more ranks than GPUs, ranks wrap
    around (rank ``i`` on ``cuda:i % n``).

    Raises:
        ValueError: No GPU for ``"cuda"``, or a list of the wrong length or with an
            index the machine does not have.
    """
    if devices is None:
        return [None] * world_size
    count = torch.cuda.device_count()
    if devices == "cuda":
        if count == 0:
            raise ValueError(
                "devices='cuda' but torch sees no CUDA device; use devices=None for CPU ranks"
            )
        return [rank % count for rank in range(world_size)]
    indices: list[int] = [int(index) for index in devices]
    if len(indices) != world_size:
        raise ValueError(
            f"devices lists {len(indices)} GPUs for a world_size of {world_size}; give one per rank"
        )
    missing = [index for index in indices if not 0 <= index < count]
    if missing:
        raise ValueError(f"devices {missing} do not exist: torch sees {count} CUDA device(s)")
    return list(indices)


def spawn(
    actor_class: type[Actor],
    *,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    world_size: int = 1,
    devices: str | Sequence[int] | None = None,
    restart: RestartPolicy | None = None,
    name: str | None = None,
    start_method: str = "forkserver",
    distributed: str | None = None,
    env: Mapping[str, str] | None = None,
    preload: Sequence[str] = (),
    timeout: float | None = 120.0,
    shutdown_s: float = 5.0,
    on_event: EventCallback | None = None,
) -> ActorGroup:
    """Starts ``world_size`` ranks of ``actor_class``; returns once all are ready.

    Runs in the caller. All ranks start, or none does.

    Args:
        actor_class: A subclass of :class:`Actor`; may be defined in ``__main__``.
        args: Positional arguments of the actor's ``__init__`` (same for every rank).
        kwargs: Keyword arguments of the actor's ``__init__``.
        world_size: Number of ranks.
        devices: None (CPU), ``"cuda"`` (rank ``i`` on ``cuda:i``) or a list of
            CUDA indices, one per rank.
        restart: How dead ranks are restarted; None leaves a dead rank dead.
        name: The group's name in logs and errors.
        start_method: ``"forkserver"`` (default: torch preloaded, fast starts),
            ``"spawn"``, or ``"fork"`` (refused once CUDA is initialised).
        distributed: ``"nccl"`` or ``"gloo"``: every rank joins one
            torch.distributed process group (store on 127.0.0.1) before ``__init__``.
        env: Extra environment variables for the ranks.
        preload: Modules the forkserver imports once, for faster rank starts.
        timeout: Seconds to wait for every rank to be ready (None: for ever).
        shutdown_s: Grace period of the context manager's shutdown.
        on_event: Called with every supervision event (on the monitor thread).

    Raises:
        TypeError: ``actor_class`` is not an Actor subclass.
        ValueError: An option is invalid (the message names the field).
        ActorInitError: A rank failed to start; its exception is the ``__cause__``.
    """
    if not (isinstance(actor_class, type) and issubclass(actor_class, Actor)):
        raise TypeError(f"spawn() needs a subclass of torchtroupe.Actor, not {actor_class!r}")
    try:
        options = SpawnOptions.model_validate(
            {
                "world_size": world_size,
                "devices": devices
                if devices is None or isinstance(devices, str)
                else tuple(devices),
                "restart": restart,
                "name": name,
                "start_method": start_method,
                "distributed": distributed,
                "env": dict(env or {}),
                "preload": tuple(preload),
                "timeout": timeout,
                "shutdown_s": shutdown_s,
            }
        )
    except ValidationError as error:
        raise ValueError(f"invalid spawn() options:\n{error}") from None
    lifecycle = build_group(
        actor_class, tuple(args), dict(kwargs or {}), options, events=EventLog(on_event)
    )
    if options.restart is not None:
        lifecycle.authority = GroupPolicy(options.restart)
    register_with_signals(lifecycle)  # a group without a supervisor is its own tree
    return start_group(lifecycle)


def build_group(
    actor_class: type[Actor],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: SpawnOptions,
    *,
    events: EventLog,
    monitor: Monitor | None = None,
) -> GroupLifecycle:
    """Makes a group's lifecycle (mailbox, rank states), starting no process yet."""
    device_indices = resolve_devices(options.devices, options.world_size)
    return GroupLifecycle(
        actor_class, args, kwargs, options, device_indices, events=events, monitor=monitor
    )


def start_group(lifecycle: GroupLifecycle) -> ActorGroup:
    """Starts every rank of ``lifecycle``; on failure nothing of it is left running.

    Raises:
        ActorInitError: A rank failed to start; its exception is the ``__cause__``.
    """
    try:
        lifecycle.start(range(lifecycle.world_size), lifecycle.options.timeout)
    except BaseException:
        lifecycle.shutdown(timeout=0.0)
        raise
    return ActorGroup(lifecycle)
