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
order is in Note [Publication order and fences] (``fence.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..errors import ChannelBrokenError, ChannelClosedError
from .doorbell import Doorbell
from .fence import STORES_ARE_ORDERED, full_fence
from .region import CACHE_LINE, SharedRegion
from .waiting import DEFAULT_STRATEGY, WaitStrategy, wait_until

_MAGIC = 0x74726F7570650001  # "troupe" v1
_LINE_WORDS = CACHE_LINE // 8
_CONST, _WRITE, _STATE = 0, 1, 2
_FIRST_READER_LINE = 3

OPEN, CLOSED, BROKEN = 0, 1, 2
DATA, PAD, ABORT = 1, 2, 3
MORE = 1
HEADER_BYTES = 8
_LENGTH_MASK = 0xFFFFFFFF


def ring_footprint(capacity: int, n_readers: int) -> int:
    """Bytes a ring of ``capacity`` data bytes and ``n_readers`` readers occupies."""
    return (_FIRST_READER_LINE + n_readers) * CACHE_LINE + capacity


def _check_capacity(capacity: int) -> None:
    if capacity < 4096 or capacity & (capacity - 1):
        raise ValueError(
            f"ring capacity must be a power of two of at least 4096 bytes, not {capacity}"
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
        if offset % CACHE_LINE or words[base] != _MAGIC:
            raise ValueError(f"no ring at offset {offset} of this region")
        self.region = region
        self.offset = offset
        self.capacity = int(words[base + 1])
        self.n_readers = int(words[base + 2])
        self.writer_bell_offset = int(words[base + 3])
        self.mask = self.capacity - 1
        self.data = offset + (_FIRST_READER_LINE + self.n_readers) * CACHE_LINE

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
        words[base + 1] = capacity
        words[base + 2] = n_readers
        words[base + 3] = writer_bell_offset
        for reader, bell in enumerate(reader_bell_offsets):
            words[base + (_FIRST_READER_LINE + reader) * _LINE_WORDS + 2] = bell
        full_fence()
        words[base] = _MAGIC
        return RingLayout(region, offset)

    def word_index(self, line: int, slot: int = 0) -> int:
        """Index into ``region.words`` of word ``slot`` of control line ``line``."""
        return self.offset // 8 + line * _LINE_WORDS + slot

    def reader_line(self, reader: int) -> int:
        """Control line of reader ``reader``."""
        return _FIRST_READER_LINE + reader

    @property
    def max_record_payload(self) -> int:
        """Largest payload one record may carry (a quarter of the ring)."""
        return self.capacity // 4 - HEADER_BYTES

    def state(self) -> int:
        """OPEN, CLOSED or BROKEN."""
        return int(self.region.words[self.word_index(_STATE)])

    def set_state(self, state: int) -> None:
        """Marks the ring closed or broken and wakes every parked end."""
        words = self.region.words
        index = self.word_index(_STATE)
        if words[index] == OPEN or state == BROKEN:
            words[index] = state
        full_fence()
        Doorbell(self.region, self.writer_bell_offset).interrupt()
        for reader in range(self.n_readers):
            bell = int(words[self.word_index(self.reader_line(reader), 2)])
            Doorbell(self.region, bell).interrupt()


def _raise_for_state(state: int, who: str) -> None:
    if state == BROKEN:
        raise ChannelBrokenError(f"the ring was broken while the {who} waited (its peer died)")
    raise ChannelClosedError(f"the ring was closed while the {who} waited")


class RingWriter:
    """The one writing end of a ring.

    Args:
        layout: The ring.
        strategy: How to wait when the ring is full.
    """

    def __init__(self, layout: RingLayout, strategy: WaitStrategy = DEFAULT_STRATEGY) -> None:
        self._layout = layout
        self._words = layout.region.words
        self._bytes = layout.region.bytes
        self._strategy = strategy
        self._capacity = layout.capacity
        self._mask = layout.mask
        self._data = layout.data
        self._write_index = layout.word_index(_WRITE)
        self._state_index = layout.word_index(_STATE)
        self._cursor = int(self._words[self._write_index])
        self._reader_cursor_index = [
            layout.word_index(layout.reader_line(r)) for r in range(layout.n_readers)
        ]
        self._reader_bells = [
            Doorbell(layout.region, int(self._words[layout.word_index(layout.reader_line(r), 2)]))
            for r in range(layout.n_readers)
        ]
        self._reader_bell_words = [
            int(self._words[layout.word_index(layout.reader_line(r), 2)]) // 8
            for r in range(layout.n_readers)
        ]
        self._bell = Doorbell(layout.region, layout.writer_bell_offset)
        self._known_floor = self._cursor
        self._max_payload = layout.max_record_payload
        self._reserved = -1  # byte position of the reserved record, or -1

    @property
    def layout(self) -> RingLayout:
        """Where the ring lives."""
        return self._layout

    @property
    def cursor(self) -> int:
        """Bytes written so far (the write cursor)."""
        return self._cursor

    @property
    def max_payload(self) -> int:
        """Largest payload of one record."""
        return self._max_payload

    def _floor(self) -> int:
        words = self._words
        floor = self._cursor
        for index in self._reader_cursor_index:
            if not words[index + 1]:  # not detached
                cursor = int(words[index])
                if cursor < floor:
                    floor = cursor
        self._known_floor = floor
        return floor

    def reserve(
        self, nbytes: int, *, deadline: float | None, alive: Callable[[], bool] | None = None
    ) -> memoryview:
        """Waits for room and returns a writable view for one record's payload.

        Args:
            nbytes: Payload size, at most :attr:`max_payload`.
            deadline: ``time.monotonic()`` value to give up at, or None.
            alive: Liveness check of the readers' side.

        Raises:
            TimeoutError: No room before the deadline (nothing was written).
            ChannelClosedError, ChannelBrokenError: The ring is closed or broken.
        """
        if nbytes > self._max_payload:
            raise ValueError(f"a record holds at most {self._max_payload} bytes, not {nbytes}")
        size = HEADER_BYTES + ((nbytes + 7) & ~7)
        position = self._cursor & self._mask
        tail = self._capacity - position
        needed = size if size <= tail else tail + size
        limit = self._cursor + needed - self._capacity
        if self._known_floor < limit and self._floor() < limit:
            # Readers a record was not addressed to may be parked with their cursor
            # behind: wake them all so they skip ahead and free the room.
            self._notify_all()

            def has_room() -> bool:
                return self._floor() >= limit or self._words[self._state_index] != OPEN

            if not wait_until(
                has_room, self._bell, deadline=deadline, alive=alive, strategy=self._strategy
            ):
                raise TimeoutError(
                    "the ring stayed full until the deadline (a reader is not reading)"
                )
        state = self._words[self._state_index]
        if state != OPEN:
            _raise_for_state(int(state), "writer")
        if size > tail:
            self._words[(self._data + position) // 8] = (tail - HEADER_BYTES) | (PAD << 32)
            self._cursor += tail
            position = 0
        start = self._data + position + HEADER_BYTES
        self._reserved = position
        return self._bytes[start : start + nbytes]

    def commit(self, nbytes: int, *, more: bool = False, kind: int = DATA, wake: int = -1) -> None:
        """Publishes the reserved record with ``nbytes`` of payload.

        Args:
            nbytes: The payload size given to :meth:`reserve` (or less).
            more: True if further fragments of the same message follow.
            kind: DATA, or ABORT to tell readers to drop a partial message.
            wake: The reader the record is for, or -1 for all. Only that reader is
                woken if parked; the others find the record (and skip it) when they
                next wake, at the latest when the writer runs short of room.
        """
        position = self._reserved
        if position < 0:
            raise RuntimeError("commit() without reserve()")
        self._reserved = -1
        words = self._words
        words[(self._data + position) >> 3] = nbytes | (kind << 32) | (more << 40)
        cursor = self._cursor + HEADER_BYTES + ((nbytes + 7) & ~7)
        self._cursor = cursor
        if not STORES_ARE_ORDERED:
            full_fence()
        words[self._write_index] = cursor
        full_fence()
        if wake >= 0:
            if words[self._reader_bell_words[wake]]:
                self._reader_bells[wake].notify()
            return
        for index, word in enumerate(self._reader_bell_words):
            if words[word]:
                self._reader_bells[index].notify()

    def _notify_all(self) -> None:
        full_fence()
        for bell in self._reader_bells:
            bell.notify()

    def detached_readers(self) -> list[int]:
        """Readers that detached (their ranks died); they no longer hold the writer back."""
        return [
            reader
            for reader, index in enumerate(self._reader_cursor_index)
            if self._words[index + 1]
        ]

    def close(self) -> None:
        """Closes the ring: readers drain what was written, then get ChannelClosedError."""
        self._layout.set_state(CLOSED)


class RingReader:
    """One reading end of a ring, with a private cursor.

    Args:
        layout: The ring.
        reader: This reader's index.
        strategy: How to wait for data.
    """

    def __init__(
        self, layout: RingLayout, reader: int, strategy: WaitStrategy = DEFAULT_STRATEGY
    ) -> None:
        if not 0 <= reader < layout.n_readers:
            raise ValueError(
                f"reader {reader} out of range for a ring of {layout.n_readers} readers"
            )
        self._layout = layout
        self._words = layout.region.words
        self._bytes = layout.region.bytes
        self._strategy = strategy
        self._mask = layout.mask
        self._data = layout.data
        self._write_index = layout.word_index(_WRITE)
        self._state_index = layout.word_index(_STATE)
        self._cursor_index = layout.word_index(layout.reader_line(reader))
        self._cursor = int(self._words[self._cursor_index])
        self._bell = Doorbell(layout.region, int(self._words[self._cursor_index + 2]))
        self._writer_bell = Doorbell(layout.region, layout.writer_bell_offset)
        self._writer_bell_word = layout.writer_bell_offset // 8
        self._pending = 0
        self.kind = DATA
        self.more = False

    @property
    def bell(self) -> Doorbell:
        """The doorbell this reader parks on (shared with other rings of the same reader)."""
        return self._bell

    def has_data(self) -> bool:
        """True if a record (possibly a PAD) waits, or the ring is no longer open."""
        return (
            self._words[self._write_index] != self._cursor or self._words[self._state_index] != OPEN
        )

    def poll(self) -> memoryview | None:
        """Returns the next record's payload, or None if nothing is published yet.

        The view stays valid until :meth:`consume`. :attr:`kind` and :attr:`more`
        describe the record.

        Records published before the ring was closed or broken are still returned:
        a dead writer's last complete messages are not lost.

        Raises:
            ChannelClosedError: The ring was closed and everything was read.
            ChannelBrokenError: The ring was marked broken and everything was read.
        """
        if self._pending:
            raise RuntimeError("poll() again before consume()")
        words = self._words
        while True:
            published = words[self._write_index]
            if published == self._cursor:
                state = words[self._state_index]
                if state != OPEN and words[self._write_index] == self._cursor:
                    _raise_for_state(int(state), "reader")
                return None
            if not STORES_ARE_ORDERED:
                full_fence()
            position = self._cursor & self._mask
            header = words[(self._data + position) >> 3]
            length = header & _LENGTH_MASK
            kind = (header >> 32) & 0xFF
            if kind == PAD:
                self._cursor += HEADER_BYTES + length
                continue
            self.kind = kind
            self.more = bool((header >> 40) & MORE)
            self._pending = HEADER_BYTES + ((length + 7) & ~7)
            start = self._data + position + HEADER_BYTES
            return self._bytes[start : start + length]

    def consume(self) -> None:
        """Releases the record returned by :meth:`poll` back to the writer."""
        cursor = self._cursor + self._pending
        self._cursor = cursor
        self._pending = 0
        words = self._words
        words[self._cursor_index] = cursor
        full_fence()
        if words[self._writer_bell_word]:
            self._writer_bell.notify()

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
            if not wait_until(
                self.has_data, self._bell, deadline=deadline, alive=alive, strategy=self._strategy
            ):
                raise TimeoutError("no message arrived before the deadline")
            view = self.poll()
        return view

    def detach(self) -> None:
        """Stops holding the writer back: this reader will read no more."""
        self._words[self._cursor_index + 1] = 1
        full_fence()
        self._writer_bell.interrupt()


def detach_reader(layout: RingLayout, reader: int) -> None:
    """Detaches ``reader`` on its behalf (its process died), waking the writer."""
    layout.region.words[layout.word_index(layout.reader_line(reader), 1)] = 1
    full_fence()
    Doorbell(layout.region, layout.writer_bell_offset).interrupt()


def monotonic_deadline(timeout: float | None) -> float | None:
    """Turns a timeout in seconds (or None) into a ``time.monotonic()`` deadline."""
    return None if timeout is None else time.monotonic() + timeout
