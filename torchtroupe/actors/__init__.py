"""Actors, groups and ranks: re-exports only."""

from .actor import Actor as Actor
from .actor import endpoint as endpoint
from .actor import fatal as fatal
from .group import ActorGroup as ActorGroup
from .group import ActorRef as ActorRef
from .spawn import spawn as spawn

__all__ = ["Actor", "ActorGroup", "ActorRef", "endpoint", "fatal", "spawn"]
