"""A single-writer, multi-reader byte ring in shared memory.

Runs in the writer's and the readers' processes; each end is used by one thread
at a time (the mailbox serialises its callers).

Layout, from the ring's offset inside a :class:`SharedRegion` (u64 words; every
line is one 64-byte cache line, so each cursor is written by one process only)::

    +0     | magic | capacity | n_readers | writer_bell | (padding)    line 0: constant
    +64    | write_cursor                                              line 1: writer
    +128   | state (0 open, 1 closed, 2 broken)                        line 2: either
    +192   | reader 0: cursor | detached | bell |                      line 3: reader 0
    +256   | reader 1: ...                                             line 4: reader 1
    ...
    +D     | data: capacity bytes (a power of two)

Cursors count bytes ever written/consumed; a position is ``cursor & (capacity-1)``.
The writer may write while ``write_cursor - min(live reader cursors) < capacity``
(back-pressure: a lagging reader stops the writer, a detached one does not).

Records are 8-byte aligned and never wrap; a record that would cross the end is
preceded by a PAD record filling the tail::

    | length: u32 | kind: u8 | flags: u8 | 0: u16 | payload (length) | pad to 8 |

``kind`` is DATA, PAD or ABORT (a writer gave up in the middle of a multi-fragment
message); flag bit 0 says more fragments of the same message follow. Publication
order is in Note [Publication order and fences] (``fence.py``). The numbers of this
layout (lines, words, kinds, flags, limits) are named in ``layout.py``, their one
home (Note [One home for the ring's numbers]).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import ChannelBrokenError, ChannelClosedError
from .doorbell import Doorbell
from .fence import full_fence
from .layout import (
    BELL_WORD,
    CACHE_LINE,
    CAPACITY_WORD,
    DETACHED_WORD,
    FIRST_READER_LINE,
    HEADER_BYTES,
    LINE_WORDS,
    MAGIC,
    MAX_CAPACITY,
    MIN_CAPACITY,
    N_READERS_WORD,
    RECORD_DIVISOR,
    STATE_LINE,
    WRITER_BELL_WORD,
)

# RingLayout.state()'s values, also importable from here.
from .layout import BROKEN as BROKEN
from .layout import CLOSED as CLOSED
from .layout import OPEN as OPEN
from .region import SharedRegion
from .waiting import DEFAULT_STRATEGY, WaitStrategy, wait_until

if TYPE_CHECKING:
    from ._ringcore_py import ReaderCore, WriterCore
    from ._ringcore_py import spin_any as spin_any
    from ._ringcore_py import take_each as take_each
else:
    from .core import core

    ReaderCore, WriterCore = core.ReaderCore, core.WriterCore
    spin_any, take_each = core.spin_any, core.take_each


def ring_footprint(capacity: int, n_readers: int) -> int:
    """Bytes a ring of ``capacity`` data bytes and ``n_readers`` readers occupies."""
    return (FIRST_READER_LINE + n_readers) * CACHE_LINE + capacity


def _check_capacity(capacity: int) -> None:
    if capacity < MIN_CAPACITY or capacity > MAX_CAPACITY or capacity & (capacity - 1):
        raise ValueError(
            "ring capacity must be a power of two from 4096 bytes to 16 GiB, "
            f"not {capacity}"
        )


class RingLayout:
    """Where one ring lives in a region; shared by its writer and readers.

    Args:
        region: The shared memory holding the ring.
        offset: Byte offset of the ring (64-byte aligned).
    """

    __slots__ = ("capacity", "data", "mask", "n_readers", "offset", "region", "writer_bell_offset")

    def __init__(self, region: SharedRegion, offset: int) -> None:
        words = region.words
        base = offset // 8
        if offset % CACHE_LINE or words[base] != MAGIC:
            raise ValueError(f"no ring at offset {offset} of this region")
        self.region = region
        self.offset = offset
        self.capacity = int(words[base + CAPACITY_WORD])
        self.n_readers = int(words[base + N_READERS_WORD])
        self.writer_bell_offset = int(words[base + WRITER_BELL_WORD])
        self.mask = self.capacity - 1
        self.data = offset + (FIRST_READER_LINE + self.n_readers) * CACHE_LINE

    @staticmethod
    def format(
        region: SharedRegion,
        offset: int,
        *,
        capacity: int,
        reader_bell_offsets: list[int],
        writer_bell_offset: int,
    ) -> RingLayout:
        """Writes an empty ring's header into zeroed memory and returns its layout."""
        _check_capacity(capacity)
        n_readers = len(reader_bell_offsets)
        if n_readers < 1:
            raise ValueError("a ring needs at least one reader")
        if offset % CACHE_LINE or offset + ring_footprint(capacity, n_readers) > region.nbytes:
            raise ValueError("the ring does not fit in the region at that offset")
        words = region.words
        base = offset // 8
        words[base + CAPACITY_WORD] = capacity
        words[base + N_READERS_WORD] = n_readers
        words[base + WRITER_BELL_WORD] = writer_bell_offset
        for reader, bell in enumerate(reader_bell_offsets):
            words[base + (FIRST_READER_LINE + reader) * LINE_WORDS + BELL_WORD] = bell
        full_fence()
        words[base] = MAGIC
        return RingLayout(region, offset)

    def word_index(self, line: int, slot: int = 0) -> int:
        """Index into ``region.words`` of word ``slot`` of control line ``line``."""
        return self.offset // 8 + line * LINE_WORDS + slot

    def reader_line(self, reader: int) -> int:
        """Control line of reader ``reader``."""
        return FIRST_READER_LINE + reader

    @property
    def max_record_payload(self) -> int:
        """Largest payload one record may carry (a quarter of the ring)."""
        return self.capacity // RECORD_DIVISOR - HEADER_BYTES

    def state(self) -> int:
        """OPEN, CLOSED or BROKEN."""
        return int(self.region.words[self.word_index(STATE_LINE)])

    def set_state(self, state: int) -> None:
        """Marks the ring closed or broken and wakes every parked end."""
        words = self.region.words
        index = self.word_index(STATE_LINE)
        if words[index] == OPEN or state == BROKEN:
            words[index] = state
        full_fence()
        Doorbell(self.region, self.writer_bell_offset).interrupt()
        for reader in range(self.n_readers):
            bell = int(words[self.word_index(self.reader_line(reader), BELL_WORD)])
            Doorbell(self.region, bell).interrupt()


def _raise_for_state(state: int, who: str) -> None:
    if state == BROKEN:
        raise ChannelBrokenError(f"the ring was broken while the {who} waited (its peer died)")
    raise ChannelClosedError(f"the ring was closed while the {who} waited")


class RingWriter(WriterCore):
    """The one writing end of a ring.

    The hot path (:meth:`try_reserve`, :meth:`commit`, :meth:`send`) is the ring
    core's (``core.py``); this class adds waiting for room.

    Args:
        layout: The ring.
        strategy: How to wait when the ring is full.
    """

    def __init__(self, layout: RingLayout, strategy: WaitStrategy = DEFAULT_STRATEGY) -> None:
        super().__init__(layout.region, layout.offset)
        self._layout = layout
        self._strategy = strategy
        self._bell = Doorbell(layout.region, layout.writer_bell_offset)

    @property
    def layout(self) -> RingLayout:
        """Where the ring lives."""
        return self._layout

    def reserve(
        self, nbytes: int, *, deadline: float | None, alive: Callable[[], bool] | None = None
    ) -> memoryview:
        """Waits for room and returns a writable view for one record's payload.

        Publish it with :meth:`commit`.

        Args:
            nbytes: Payload size, at most :attr:`max_payload`.
            deadline: ``time.monotonic()`` value to give up at, or None.
            alive: Liveness check of the readers' side.

        Raises:
            TimeoutError: No room before the deadline (nothing was written).
            ChannelClosedError, ChannelBrokenError: The ring is closed or broken.
        """
        view = self.try_reserve(nbytes)
        while view is None:
            state = self.state()
            if state != OPEN:
                _raise_for_state(state, "writer")
            limit = self.needed_floor(nbytes)
            if self.floor() < limit:
                # Readers a record was not addressed to may be parked with their cursor
                # behind: wake them all so they skip ahead and free the room.
                self.notify_all()

                def has_room(limit: int = limit) -> bool:
                    return self.floor() >= limit or self.state() != OPEN

                if not wait_until(
                    has_room, self._bell, deadline=deadline, alive=alive, strategy=self._strategy
                ):
                    raise TimeoutError(
                        "the ring stayed full until the deadline (a reader is not reading)"
                    )
            view = self.try_reserve(nbytes)
        return view

    def close(self) -> None:
        """Closes the ring: readers drain what was written, then get ChannelClosedError."""
        self._layout.set_state(CLOSED)


class RingReader(ReaderCore):
    """One reading end of a ring, with a private cursor.

    The hot path (:meth:`poll`, :meth:`consume`, :meth:`has_data`, :meth:`spin`) is
    the ring core's (``core.py``); this class adds waiting for data. Records published
    before the ring was closed or broken are still returned by :meth:`poll`: a dead
    writer's last complete messages are not lost.

    Args:
        layout: The ring.
        reader: This reader's index.
        strategy: How to wait for data.
    """

    def __init__(
        self, layout: RingLayout, reader: int, strategy: WaitStrategy = DEFAULT_STRATEGY
    ) -> None:
        super().__init__(layout.region, layout.offset, reader)
        self._layout = layout
        self._strategy = strategy
        bell_offset = layout.region.words[layout.word_index(layout.reader_line(reader), BELL_WORD)]
        self._bell = Doorbell(layout.region, int(bell_offset))

    @property
    def bell(self) -> Doorbell:
        """The doorbell this reader parks on (shared with other rings of the same reader)."""
        return self._bell

    def receive(
        self, *, deadline: float | None, alive: Callable[[], bool] | None = None
    ) -> memoryview:
        """Waits for the next record and returns its payload (see :meth:`poll`).

        Raises:
            TimeoutError: Nothing arrived before the deadline.
            ChannelClosedError, ChannelBrokenError: As for :meth:`poll`.
        """
        view = self.poll()
        while view is None:
            self.wait(deadline=deadline, alive=alive)
            view = self.poll()
        return view

    def wait(self, *, deadline: float | None, alive: Callable[[], bool] | None = None) -> None:
        """Waits until :meth:`has_data` (spinning first, then parked on :attr:`bell`).

        Raises:
            TimeoutError: Nothing arrived before the deadline.
            ChannelBrokenError: ``alive()`` reported the writer gone.
        """
        if not wait_until(
            self.has_data,
            self._bell,
            deadline=deadline,
            alive=alive,
            strategy=self._strategy,
            spin=self.spin,
        ):
            raise TimeoutError("no message arrived before the deadline")


def detach_reader(layout: RingLayout, reader: int) -> None:
    """Detaches ``reader`` on its behalf (its process died), waking the writer."""
    layout.region.words[layout.word_index(layout.reader_line(reader), DETACHED_WORD)] = 1
    full_fence()
    Doorbell(layout.region, layout.writer_bell_offset).interrupt()


def monotonic_deadline(timeout: float | None) -> float | None:
    """Turns a timeout in seconds (or None) into a ``time.monotonic()`` deadline."""
    return None if timeout is None else time.monotonic() + timeout
