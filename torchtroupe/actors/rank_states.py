"""The state of each rank of a group, and what a caller waits for before it writes.

Runs in the caller: read by callers' threads without a lock on the hot path, changed
under ``_changed`` by the monitor, restart and shutdown threads. ``GroupLifecycle``
(``lifecycle.py``) makes the transitions; this class is what waiting looks at::

    STARTING --READY reply--> READY --process ended--> WAITING --restart--> STARTING
                                                          +--stay dead--> DEAD
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from ..errors import ActorDiedError, CallTimeoutError, SupervisionError
from .outcomes import closed_after_give_up, shut_down

STARTING, READY, WAITING, DEAD = "starting", "ready", "waiting", "dead"


class RankStates:
    """Each rank's state, its last death, and whether the group closed or gave up.

    Args:
        name: The group's name, for errors.
        world_size: Number of ranks.
    """

    def __init__(self, name: str, world_size: int) -> None:
        self.name = name
        self.world_size = world_size
        self.states = [STARTING] * world_size
        self.deaths: list[ActorDiedError | None] = [None] * world_size
        self.closed = False
        self.gave_up: SupervisionError | None = None
        self._changed = threading.Condition()

    def wait_ready(self, ranks: Sequence[int], deadline: float | None) -> None:
        """Returns once every rank in ``ranks`` is READY or DEAD for good.

        Raises:
            GroupClosedError: The group was shut down, or had given up before the call.
            SupervisionError: The group gave up while this call waited.
            CallTimeoutError: A restart did not finish before the deadline.
        """
        states = self.states
        if not self.closed and self.gave_up is None:
            for rank in ranks:
                if states[rank] != READY:
                    break
            else:
                return
        self.raise_if_closed()
        with self._changed:
            while True:
                if self.gave_up is not None:
                    raise self.gave_up
                if self.closed:
                    raise shut_down(self.name)
                if all(states[r] in (READY, DEAD) for r in ranks):
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    waiting = [r for r in ranks if states[r] not in (READY, DEAD)]
                    raise CallTimeoutError(
                        f"rank(s) {waiting} of group {self.name!r} were restarting "
                        f"past the deadline"
                    )
                self._changed.wait(remaining)

    def wait_changed(self, timeout: float) -> None:
        """Waits up to ``timeout`` for any rank to change state."""
        with self._changed:
            self._changed.wait(timeout)

    def death_of(self, rank: int) -> ActorDiedError | None:
        """The death of ``rank`` if it stays dead, else None."""
        return self.deaths[rank] if self.states[rank] == DEAD else None

    def raise_if_closed(self) -> None:
        """Raises the error a new call to a closed group gets."""
        if self.gave_up is not None:
            raise closed_after_give_up(self.name, self.gave_up)
        if self.closed:
            raise shut_down(self.name)

    def hold(self, ranks: Sequence[int]) -> None:
        """Makes calls to ``ranks`` wait: a restart or a verdict is coming."""
        with self._changed:
            for rank in ranks:
                if self.states[rank] in (READY, DEAD):
                    self.states[rank] = WAITING
            self._changed.notify_all()
