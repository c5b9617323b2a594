"""Transitions of ranks and groups, as records for code and lines for the log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

logger = logging.getLogger("torchtroupe.supervision")

EventKind = Literal["started", "exited", "restarting", "restarted", "gave_up", "stopped"]


@dataclass(frozen=True, slots=True)
class SupervisionEvent:
    """One transition.

    Attributes:
        kind: What happened.
        group: The group's name.
        rank: The rank, or None for the whole group.
        pid: The process id, where there is one.
        exitcode: The exit code (negative: killed by that signal), for ``exited``.
        detail: Human-readable detail (the exit description, a reason).
        time: ``time.monotonic()`` when it happened.
    """

    kind: EventKind
    group: str
    rank: int | None = None
    pid: int | None = None
    exitcode: int | None = None
    detail: str = ""
    time: float = field(default_factory=time.monotonic)


EventCallback = Callable[[SupervisionEvent], None]


class EventLog:
    """Keeps every event, logs it, and forwards it to an optional callback."""

    def __init__(self, callback: EventCallback | None = None) -> None:
        self.events: list[SupervisionEvent] = []
        self._callback = callback

    def record(self, event: SupervisionEvent) -> None:
        """Appends, logs and forwards ``event``."""
        self.events.append(event)
        level = logging.WARNING if event.kind in ("exited", "gave_up") else logging.INFO
        logger.log(
            level,
            "group %s rank %s pid %s %s%s",
            event.group,
            "-" if event.rank is None else event.rank,
            "-" if event.pid is None else event.pid,
            event.kind,
            f": {event.detail}" if event.detail else "",
        )
        if self._callback is not None:
            try:
                self._callback(event)
            except Exception:
                logger.exception("on_event callback failed for %s", event)
