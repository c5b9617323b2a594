"""An ``on_event`` callback that tests wait on, instead of sleeping."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tests.timeouts import LONG_TIMEOUT
from torchtroupe import SupervisionEvent


class EventRecorder:
    """Keeps every supervision event and lets a test wait for the ones it expects.

    Pass the recorder itself as ``on_event=``; it runs on the monitor (or restart)
    thread and only appends under a condition.
    """

    def __init__(self, also: Callable[[SupervisionEvent], None] | None = None) -> None:
        self.events: list[SupervisionEvent] = []
        self._changed = threading.Condition()
        self._also = also

    def __call__(self, event: SupervisionEvent) -> None:
        if self._also is not None:
            self._also(event)
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def mark(self) -> int:
        """The position after the last event so far, to wait only for newer ones."""
        with self._changed:
            return len(self.events)

    def matching(
        self,
        kind: str,
        *,
        group: str | None = None,
        rank: int | None = None,
        since: int = 0,
    ) -> list[SupervisionEvent]:
        """The events of ``kind`` (and ``group``/``rank`` if given) from ``since`` on."""
        with self._changed:
            return [
                event
                for event in self.events[since:]
                if event.kind == kind
                and (group is None or event.group == group)
                and (rank is None or event.rank == rank)
            ]

    def wait_for(
        self,
        kind: str,
        *,
        group: str | None = None,
        rank: int | None = None,
        since: int = 0,
        count: int = 1,
        timeout: float = LONG_TIMEOUT,
    ) -> list[SupervisionEvent]:
        """Waits until ``count`` matching events happened; returns them.

        Raises:
            AssertionError: They did not happen within ``timeout`` (lists every event).
        """

        def enough() -> bool:
            return len(self.matching(kind, group=group, rank=rank, since=since)) >= count

        with self._changed:
            if not self._changed.wait_for(enough, timeout):
                seen = "\n".join(f"  {e}" for e in self.events)
                raise AssertionError(
                    f"no {count} {kind!r} event(s) for group={group} rank={rank} "
                    f"within {timeout}s; events so far:\n{seen}"
                )
        return self.matching(kind, group=group, rank=rank, since=since)
