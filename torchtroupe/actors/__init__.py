"""Actors: the actor class, endpoints, groups and the ranks' serve loop; re-exports only."""

from .actor import Actor as Actor
from .actor import endpoint as endpoint
from .actor import fatal as fatal
from .authority import RestartAuthority as RestartAuthority
from .group import ActorGroup as ActorGroup
from .group import ActorRef as ActorRef
from .lifecycle import GroupLifecycle as GroupLifecycle
from .options import GroupOptions as GroupOptions

__all__ = [
    "Actor",
    "ActorGroup",
    "ActorRef",
    "GroupLifecycle",
    "GroupOptions",
    "RestartAuthority",
    "endpoint",
    "fatal",
]
