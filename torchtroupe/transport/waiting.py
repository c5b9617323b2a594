"""The wait strategy: spin for a short window, then park on a doorbell.

Runs in whichever thread waits. Every wait is bounded: it ends at its deadline,
and while parked it wakes at least every ``park_slice_s`` to ask whether its peer
is still alive, so a dead peer never leaves anybody blocked for long even if
nobody interrupts the doorbell (monitors normally do, at once).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from .._settings import SETTINGS
from ..errors import ChannelBrokenError
from .doorbell import Doorbell

AUTOMATIC_SPIN_US = 50.0
"""The spin window when ``TORCHTROUPE_SPIN_US`` is unset and every spinner has a core."""


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's size)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def spin_window_s(world_size: int) -> float:
    """How long the waiters of a group of ``world_size`` ranks spin before parking.

    Spinning answers a busy peer in well under a microsecond, but only while every
    spinner has a core of its own: a group's caller and its ranks may all spin at
    once, and where they outnumber the cores a spinning waiter takes the CPU that the
    peer it waits for needs, so each message costs a scheduler time slice instead.
    So the window is ``AUTOMATIC_SPIN_US`` when ``world_size + 1`` processes fit on
    the usable cores, and 0 (park at once, woken by a futex) when they do not.
    ``TORCHTROUPE_SPIN_US``, when set, is used as it is.
    """
    if SETTINGS.spin_us is not None:
        return SETTINGS.spin_us * 1e-6
    if world_size + 1 > usable_cores():
        return 0.0
    return AUTOMATIC_SPIN_US * 1e-6


@dataclass(frozen=True, slots=True)
class WaitStrategy:
    """How a waiter spends its time.

    Attributes:
        spin_s: Seconds to spin re-checking before parking. Spinning answers a
            busy peer in well under a microsecond; parking costs a system call
            and a wake-up of a few microseconds, but no CPU.
        park_slice_s: Longest single sleep before rechecking liveness.
    """

    spin_s: float = spin_window_s(1)
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
