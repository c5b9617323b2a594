"""Doorbells: futex words that let a waiter park and a peer wake it.

Runs in any process; each doorbell has one waiting thread at a time.

Note [The eventcount]
---------------------
A waiter that found nothing to do parks like this::

    waiter                               notifier
    ------                               --------
    bell := PARKED                       publish (store the cursor)
    full fence                           full fence
    recheck the condition  --ready-->    if bell == PARKED:
    futex_wait(bell, PARKED)                 bell := AWAKE; futex_wake(bell)

The two fences make it impossible for both sides to miss each other (Dekker): either
the waiter's recheck sees the publication, or the notifier sees PARKED and wakes it.
A notifier that finds AWAKE makes no system call at all, so a busy peer that is
spinning costs the writer one load. A futex wait returns at once if the word is no
longer PARKED, so a wake that lands between the recheck and the sleep is not lost.
"""

from __future__ import annotations

from .fence import full_fence
from .futex import futex_wait, futex_wake
from .layout import AWAKE, PARKED
from .region import SharedRegion


class Doorbell:
    """One futex word inside a :class:`SharedRegion`."""

    __slots__ = ("_address", "_index", "_words")

    def __init__(self, region: SharedRegion, offset: int) -> None:
        if offset % 8:
            raise ValueError("a doorbell must be 8-byte aligned")
        self._words = region.words
        self._index = offset // 8
        self._address = region.address + offset

    def prepare_park(self) -> None:
        """Announces that the waiter is about to sleep; recheck the condition after."""
        self._words[self._index] = PARKED
        full_fence()

    def cancel_park(self) -> None:
        """Withdraws the announcement: the recheck found work."""
        self._words[self._index] = AWAKE

    def park(self, timeout_s: float) -> None:
        """Sleeps until woken or ``timeout_s`` passes; the bell is AWAKE afterwards."""
        futex_wait(self._address, PARKED, timeout_s)
        self._words[self._index] = AWAKE

    def notify(self) -> None:
        """Wakes the waiter if it parked. Call after publishing and a full fence."""
        if self._words[self._index] != AWAKE:
            self._words[self._index] = AWAKE
            futex_wake(self._address)

    def interrupt(self) -> None:
        """Wakes the waiter unconditionally (used by monitors after marking state)."""
        full_fence()
        self._words[self._index] = AWAKE
        futex_wake(self._address)
