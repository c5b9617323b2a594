"""Rings, threads and waits shared by the transport tests (not a test module).

Runs in the test process; :func:`new_ring` regions also travel to reader processes.
Every ring here gets its own region laid out as::

    +0            writer doorbell (one 64-byte line)
    +64 * (1+i)   doorbell of reader i (one line each)
    +64 * (1+n)   the ring (``ring_footprint(capacity, n)`` bytes)
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT
from torchtroupe.transport.layout import CACHE_LINE, PARKED
from torchtroupe.transport.region import SharedRegion
from torchtroupe.transport.ring import RingLayout, ring_footprint
from torchtroupe.transport.waiting import WaitStrategy

T = TypeVar("T")

WRITER_BELL = 0

# A waiter that parks with this strategy only wakes when someone rings or interrupts
# its doorbell (or at its deadline): a test using it proves that the wake-up happened,
# not that a park slice ran out.
PARK_UNTIL_WOKEN = WaitStrategy(spin_s=0.0, park_slice_s=LONG_TIMEOUT)


def reader_bell(reader: int) -> int:
    """Byte offset of reader ``reader``'s doorbell in a :func:`new_ring` region."""
    return CACHE_LINE * (1 + reader)


@dataclass(frozen=True, slots=True)
class FormattedRing:
    """A freshly formatted ring and the region that holds it."""

    region: SharedRegion
    layout: RingLayout

    @property
    def offset(self) -> int:
        """Byte offset of the ring in its region (to re-open it in a child)."""
        return self.layout.offset


def new_ring(capacity: int, n_readers: int = 1) -> FormattedRing:
    """Allocates a region and formats an empty ring with ``n_readers`` readers in it."""
    offset = CACHE_LINE * (1 + n_readers)
    region = SharedRegion.allocate(offset + ring_footprint(capacity, n_readers))
    layout = RingLayout.format(
        region,
        offset,
        capacity=capacity,
        reader_bell_offsets=[reader_bell(r) for r in range(n_readers)],
        writer_bell_offset=WRITER_BELL,
    )
    return FormattedRing(region, layout)


def wait_for(condition: Callable[[], bool], timeout: float = SHORT_TIMEOUT) -> None:
    """Yields the CPU until ``condition()`` holds; fails after ``timeout`` seconds.

    Only for state that offers nothing to block on (a doorbell word in shared memory).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition did not hold within {timeout} s")
        os.sched_yield()


def wait_until_parked(region: SharedRegion, bell_offset: int) -> None:
    """Returns once the waiter of the doorbell at ``bell_offset`` has parked on it."""
    wait_for(lambda: region.words[bell_offset // 8] == PARKED)


@contextmanager
def in_thread(
    function: Callable[[], T], *, unblock: Callable[[], None] | None = None
) -> Iterator[Future[T]]:
    """Runs ``function`` in a thread; the future holds its result or exception.

    The thread is joined on exit. If the body fails, ``unblock`` runs first (for
    example breaking the ring) so a thread stuck on the ring ends instead of waiting
    out its deadline.
    """
    future: Future[T] = Future()

    def run() -> None:
        future.set_running_or_notify_cancel()
        try:
            result = function()
        except BaseException as error:
            future.set_exception(error)
        else:
            future.set_result(result)

    thread = threading.Thread(target=run, name=f"test-{getattr(function, '__name__', 'thread')}")
    thread.start()
    try:
        yield future
    except BaseException:
        if unblock is not None:
            unblock()
        raise
    finally:
        thread.join(LONG_TIMEOUT)
        if thread.is_alive():
            raise AssertionError(f"{thread.name} did not finish within {LONG_TIMEOUT} s")
