"""OTP's restart intensity, written once: at most N restarts within T seconds.

Runs wherever a restart is decided (the monitor thread of a tree). Used by a
group's own restart policy and by every ``Supervisor`` alike.
"""

from __future__ import annotations

import time
from collections import deque

from ..errors import SupervisionError


def flatten(failures: list[BaseException]) -> list[BaseException]:
    """Every failure, root cause first, with nested SupervisionErrors opened up."""
    flat: list[BaseException] = []
    for failure in failures:
        if isinstance(failure, SupervisionError) and failure.failures:
            flat.extend(flatten(list(failure.failures)))
        else:
            flat.append(failure)
    return flat


class RestartIntensity:
    """Counts failures in a sliding window.

    Args:
        max_restarts: Restarts allowed within ``within_s`` (OTP's intensity).
        within_s: The window in seconds (OTP's period).
    """

    def __init__(self, max_restarts: int, within_s: float) -> None:
        self.max_restarts = max_restarts
        self.within_s = within_s
        self._times: deque[float] = deque()
        self.failures: list[BaseException] = []

    def exceeded_by(self, failure: BaseException) -> bool:
        """Counts ``failure``; True if restarting once more would exceed the limit."""
        now = time.monotonic()
        self.failures.append(failure)
        self._times.append(now)
        while self._times and now - self._times[0] > self.within_s:
            self._times.popleft()
        return len(self._times) > self.max_restarts

    def reset(self) -> None:
        """Forgets every failure (the whole child was restarted from above)."""
        self._times.clear()
        self.failures.clear()

    def gave_up(self, who: str) -> SupervisionError:
        """The error of giving up: every failure counted, root cause first."""
        failures = flatten(self.failures)
        root = failures[0] if failures else "?"
        return SupervisionError(
            f"{who} gave up: more than {self.max_restarts} restarts within {self.within_s}s; "
            f"root cause: {root}",
            failures,
        )
