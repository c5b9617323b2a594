"""Supervision: every restart decision: policies, the intensity window, a group's own
``restart=`` policy, supervisors, and ``spawn``; re-exports only."""

from ..processes.events import SupervisionEvent as SupervisionEvent
from .policy import ChildSpec as ChildSpec
from .policy import RestartPolicy as RestartPolicy
from .policy import SpawnOptions as SpawnOptions
from .policy import SupervisorSpec as SupervisorSpec
from .spawn import spawn as spawn
from .supervisor import Supervisor as Supervisor

__all__ = [
    "ChildSpec",
    "RestartPolicy",
    "SpawnOptions",
    "SupervisionEvent",
    "Supervisor",
    "SupervisorSpec",
    "spawn",
]
