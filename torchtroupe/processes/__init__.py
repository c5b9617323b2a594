"""Processes: the birth, watch and end of rank processes; re-exports only.

Nothing here knows what a rank runs: that is the actors floor's business.
"""

from .background import BackgroundThreads as BackgroundThreads
from .events import EventCallback as EventCallback
from .events import EventLog as EventLog
from .events import SupervisionEvent as SupervisionEvent
from .launch import RankProcess as RankProcess
from .launch import launch as launch
from .launch import start_context as start_context
from .launch import stop as stop
from .monitor import Monitor as Monitor

__all__ = [
    "BackgroundThreads",
    "EventCallback",
    "EventLog",
    "Monitor",
    "RankProcess",
    "SupervisionEvent",
    "launch",
    "start_context",
    "stop",
]
