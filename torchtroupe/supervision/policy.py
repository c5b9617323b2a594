"""Restart policies and child specifications: the configuration a person writes.

These are pydantic models: a bad value fails at construction with a message that
names the field. They run in whichever process builds the tree.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..actors.actor import Actor
from ..actors.options import GroupOptions

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
RestartType = Literal["permanent", "transient", "temporary"]


class RestartPolicy(BaseModel):
    """How a group restarts its ranks, with OTP's meaning of each strategy.

    Attributes:
        strategy: ``one_for_one`` restarts only the rank that died;
            ``one_for_all`` restarts every rank (what an NCCL or gloo group needs:
            its communicator dies with any rank); ``rest_for_one`` restarts the dead
            rank and every rank after it.
        max_restarts: Restarts allowed within ``within_s`` (OTP's intensity). One
            more and the group gives up.
        within_s: The window of seconds for ``max_restarts`` (OTP's period).
        backoff_s: Delay before each restart.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: Strategy = "one_for_one"
    max_restarts: int = Field(default=3, ge=0)
    within_s: float = Field(default=60.0, gt=0)
    backoff_s: float = Field(default=0.0, ge=0)


class ChildSpec(BaseModel):
    """A group supervised by a :class:`~torchtroupe.Supervisor`.

    Attributes:
        name: Unique among the supervisor's children; ``sup[name]`` is the group.
        actor: The :class:`~torchtroupe.Actor` subclass.
        args: Positional arguments of its ``__init__``.
        kwargs: Keyword arguments of its ``__init__``.
        world_size: Number of ranks.
        restart: ``permanent`` (always restarted), ``transient`` (only after an
            abnormal exit), ``temporary`` (never).
        shutdown_s: Grace period when stopping it before SIGTERM.
        spawn: Further options for :func:`~torchtroupe.spawn` (devices,
            distributed, restart, env, preload, start_method).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str = Field(min_length=1)
    actor: type
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = Field(default_factory=dict)
    world_size: int = Field(default=1, ge=1)
    restart: RestartType = "permanent"
    shutdown_s: float = Field(default=5.0, ge=0)
    spawn: dict[str, Any] = Field(default_factory=dict)

    @field_validator("actor")
    @classmethod
    def _must_be_actor(cls, value: type) -> type:
        if not (isinstance(value, type) and issubclass(value, Actor)):
            raise ValueError(f"actor must be a subclass of torchtroupe.Actor, not {value!r}")
        return value


class SupervisorSpec(BaseModel):
    """A nested supervisor among another supervisor's children.

    Attributes:
        name: Unique among its siblings.
        strategy: How a failing child affects its siblings.
        max_restarts: Restarts allowed within ``within_s`` before giving up.
        within_s: The intensity window in seconds.
        children: Its own children, started in order and stopped in reverse.
        restart: Its restart type as a child of its parent.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    strategy: Strategy = "one_for_one"
    max_restarts: int = Field(default=3, ge=0)
    within_s: float = Field(default=60.0, gt=0)
    children: tuple[ChildSpec | SupervisorSpec, ...] = ()
    restart: RestartType = "permanent"
    shutdown_s: float = Field(default=5.0, ge=0)


class SpawnOptions(GroupOptions):
    """The validated options of :func:`~torchtroupe.spawn`: a group's options and its
    restart policy."""

    restart: RestartPolicy | None = None
