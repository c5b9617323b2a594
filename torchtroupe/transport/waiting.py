"""The wait strategy: spin for a short window, then park on a doorbell.

Runs in whichever thread waits. Every wait is bounded: it ends at its deadline,
and while parked it wakes at least every ``park_slice_s`` to ask whether its peer
is still alive, so a dead peer never leaves anybody blocked for long even if
nobody interrupts the doorbell (monitors normally do, at once).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .._settings import SETTINGS
from ..errors import ChannelBrokenError
from .doorbell import Doorbell


@dataclass(frozen=True, slots=True)
class WaitStrategy:
    """How a waiter spends its time.

    Attributes:
        spin_s: Seconds to spin re-checking before parking. Spinning answers a
            busy peer in well under a microsecond; parking costs a system call
            and a wake-up of a few microseconds, but no CPU.
        park_slice_s: Longest single sleep before rechecking liveness.
    """

    spin_s: float = SETTINGS.spin_us * 1e-6
    park_slice_s: float = SETTINGS.park_slice_s


DEFAULT_STRATEGY = WaitStrategy()


def wait_until(
    ready: Callable[[], bool],
    bell: Doorbell,
    *,
    deadline: float | None,
    alive: Callable[[], bool] | None = None,
    strategy: WaitStrategy = DEFAULT_STRATEGY,
    spin: Callable[[float], bool] | None = None,
) -> bool:
    """Waits until ``ready()`` is true.

    Args:
        ready: The condition; must be cheap and side-effect free.
        bell: The doorbell the notifier rings after making ``ready()`` true.
        deadline: ``time.monotonic()`` value to give up at, or None to wait for ever.
        alive: Returns False once the peer is gone; checked between park slices.
        strategy: Spin window and park slice.
        spin: Busy-waits until the condition may have become true, at most the
            given seconds (the ring core's ``spin``, a loop in C); by default the
            spin window calls ``ready()`` in a Python loop.

    Returns:
        True if the condition became true, False if the deadline passed.

    Raises:
        ChannelBrokenError: If ``alive()`` reported the peer gone.
    """
    if ready():
        return True
    if spin is not None:
        if spin(strategy.spin_s) and ready():
            return True
    else:
        spin_end = time.perf_counter() + strategy.spin_s
        while time.perf_counter() < spin_end:
            if ready():
                return True
    while True:
        bell.prepare_park()
        if ready():
            bell.cancel_park()
            return True
        sleep_s = strategy.park_slice_s
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                bell.cancel_park()
                return ready()
            sleep_s = min(sleep_s, remaining)
        bell.park(sleep_s)
        if ready():
            return True
        if alive is not None and not alive():
            if ready():
                return True
            raise ChannelBrokenError("the peer at the other end of the ring is gone")
