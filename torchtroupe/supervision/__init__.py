"""Supervision: restart policies, child specs, events, the monitor: re-exports only."""

from ..processes.events import SupervisionEvent as SupervisionEvent
from .policy import ChildSpec as ChildSpec
from .policy import RestartPolicy as RestartPolicy
from .policy import SpawnOptions as SpawnOptions
from .policy import SupervisorSpec as SupervisorSpec
from .supervisor import Supervisor as Supervisor

__all__ = [
    "ChildSpec",
    "RestartPolicy",
    "SpawnOptions",
    "SupervisionEvent",
    "Supervisor",
    "SupervisorSpec",
]
