"""The ring's hot path in pure Python: the fallback for ``_ringcore.c``.

Runs in the writer's and the readers' processes, one thread per end at a time.

Same classes, methods, constants and behaviour as the C extension ``_ringcore``
(the layout is documented in ``ring.py``, its numbers live in ``layout.py``);
``ring.py`` builds on whichever is available, and the tests run each against the
other. This one serves where the extension was not
built, or with ``TORCHTROUPE_NATIVE=0``; it is several times slower per message.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .fence import STORES_ARE_ORDERED, full_fence
from .futex import futex_wake
from .layout import (
    AWAKE,
    BELL_WORD,
    BROKEN,
    CACHE_LINE,
    CAPACITY_WORD,
    CURSOR_WORD,
    DATA,
    DETACHED_WORD,
    FIRST_READER_LINE,
    FLAGS_SHIFT,
    HEADER_BYTES,
    KIND_MASK,
    KIND_SHIFT,
    LENGTH_MASK,
    LINE_WORDS,
    MAGIC,
    MAX_CAPACITY,
    MAX_GATHER,
    MIN_CAPACITY,
    MORE,
    N_READERS_WORD,
    OPEN,
    PAD,
    PLAIN_BUDGET,
    PLAIN_DUMP_MAX,
    PLAIN_MAX_DEPTH,
    PRELUDE,
    PRELUDE_BYTES,
    RECORD_DIVISOR,
    STATE_LINE,
    TARGET_ALL,
    WRITE_LINE,
    WRITER_BELL_WORD,
)

# Exactly the compiled core's public names (tests/transport/test_ringcore_parity.py). The
# constants are layout.py's, which the compiled core repeats (Note [One home for the ring's
# numbers]); what else this module imports is not part of it.
__all__ = [
    "AWAKE", "BELL_WORD", "BROKEN", "CACHE_LINE", "CAPACITY_WORD", "CURSOR_WORD", "DATA",
    "DETACHED_WORD", "FIRST_READER_LINE", "FLAGS_SHIFT", "HEADER_BYTES", "KIND_MASK",
    "KIND_SHIFT", "LENGTH_MASK", "LINE_WORDS", "MAGIC", "MAX_CAPACITY", "MAX_GATHER",
    "MIN_CAPACITY", "MORE", "N_READERS_WORD", "OPEN", "PAD", "PLAIN_BUDGET", "PLAIN_DUMP_MAX",
    "PLAIN_MAX_DEPTH", "PRELUDE_BYTES", "RECORD_DIVISOR", "STATE_LINE", "TARGET_ALL",
    "WRITER_BELL_WORD", "WRITE_LINE", "ReaderCore", "WriterCore", "full_fence", "loads",
    "plain_dumps", "set_errors", "spin_any", "take_each"
]

_closed_error: type[Exception] = RuntimeError
_broken_error: type[Exception] = RuntimeError


class _Region(Protocol):
    """What the cores need of a :class:`~torchtroupe.transport.region.SharedRegion`."""

    address: int
    words: memoryview


def set_errors(closed: type[Exception], broken: type[Exception]) -> None:
    """Sets the exceptions :meth:`ReaderCore.poll` raises for a closed or broken ring."""
    global _closed_error, _broken_error
    _closed_error, _broken_error = closed, broken


def _state_error(state: int, who: str) -> Exception:
    if state == BROKEN:
        return _broken_error(f"the ring was broken while the {who} waited (its peer died)")
    return _closed_error(f"the ring was closed while the {who} waited")


class _Header:
    """The constant part of a ring: where its cursors, bells and data are."""

    def __init__(self, region: _Region, offset: int) -> None:
        words = region.words
        region_bytes = len(words) * 8
        base = offset // 8
        if (
            offset < 0
            or offset % CACHE_LINE
            or region_bytes - offset < FIRST_READER_LINE * CACHE_LINE
        ):
            raise ValueError(f"no ring at offset {offset} of this region")
        if words[base] != MAGIC:
            raise ValueError(f"no ring at offset {offset} of this region")
        capacity = int(words[base + CAPACITY_WORD])
        n_readers = int(words[base + N_READERS_WORD])
        writer_bell = int(words[base + WRITER_BELL_WORD])
        room = region_bytes - offset
        if (
            not MIN_CAPACITY <= capacity <= MAX_CAPACITY
            or capacity & (capacity - 1)
            or not 1 <= n_readers <= (room - capacity) // CACHE_LINE - FIRST_READER_LINE
            or writer_bell % 8
            or writer_bell > region_bytes - 8
        ):
            raise ValueError("the ring's header is corrupt")
        for reader in range(n_readers):
            bell = int(words[base + (FIRST_READER_LINE + reader) * LINE_WORDS + BELL_WORD])
            if bell % 8 or bell > region_bytes - 8:
                raise ValueError("the ring's header is corrupt")
        self.words = words
        self.address = region.address
        self.capacity = capacity
        self.n_readers = n_readers
        self.writer_bell = writer_bell // 8
        self.write_index = base + WRITE_LINE * LINE_WORDS
        self.state_index = base + STATE_LINE * LINE_WORDS
        self.data = offset + (FIRST_READER_LINE + self.n_readers) * CACHE_LINE
        self.reader_lines = [
            base + (FIRST_READER_LINE + r) * LINE_WORDS for r in range(self.n_readers)
        ]

    def reader_bell(self, reader: int) -> int:
        return int(self.words[self.reader_lines[reader] + BELL_WORD]) // 8

    def notify(self, bell: int) -> None:
        """Rings the doorbell at word ``bell`` if its waiter parked."""
        if self.words[bell] != AWAKE:
            self.words[bell] = AWAKE
            futex_wake(self.address + 8 * bell)


class WriterCore:
    """The writing end of the ring at ``offset`` of ``region``."""

    def __init__(self, region: _Region, offset: int) -> None:
        ring = self._ring = _Header(region, offset)
        self._words = ring.words
        self._bytes = ring.words.cast("B")
        self._mask = ring.capacity - 1
        self._max_payload = ring.capacity // RECORD_DIVISOR - HEADER_BYTES
        self._cursor = int(self._words[ring.write_index])
        self._known_floor = self._cursor
        self._reserved = -1
        self._reserved_bytes = 0
        self._cursor_before = self._cursor

    @property
    def cursor(self) -> int:
        """Bytes written so far (the write cursor)."""
        return self._cursor

    @property
    def max_payload(self) -> int:
        """Largest payload of one record."""
        return self._max_payload

    def state(self) -> int:
        """OPEN, CLOSED or BROKEN."""
        return int(self._words[self._ring.state_index])

    def floor(self) -> int:
        """The slowest live reader's cursor."""
        words = self._words
        floor = self._cursor
        for line in self._ring.reader_lines:
            if not words[line + DETACHED_WORD]:
                cursor = int(words[line + CURSOR_WORD])
                if cursor < floor:
                    floor = cursor
        self._known_floor = floor
        return floor

    def needed_floor(self, nbytes: int) -> int:
        """The floor at which a record of ``nbytes`` fits."""
        size = HEADER_BYTES + ((nbytes + 7) & ~7)
        tail = self._ring.capacity - (self._cursor & self._mask)
        needed = size if size <= tail else tail + size
        return self._cursor + needed - self._ring.capacity

    def try_reserve(self, nbytes: int) -> memoryview | None:
        """Room for one record's payload now, or None (no room, or not open)."""
        if not 0 <= nbytes <= self._max_payload:
            raise ValueError(f"a record holds 0 to {self._max_payload} bytes, not {nbytes}")
        if self._reserved >= 0:
            raise RuntimeError("reserve() again before commit()")
        limit = self.needed_floor(nbytes)
        if self._known_floor < limit and self.floor() < limit:
            return None
        if self._words[self._ring.state_index] != OPEN:
            return None
        size = HEADER_BYTES + ((nbytes + 7) & ~7)
        position = self._cursor & self._mask
        tail = self._ring.capacity - position
        self._cursor_before = self._cursor
        self._reserved_bytes = nbytes
        if size > tail:
            pad = (tail - HEADER_BYTES) | (PAD << KIND_SHIFT)
            self._words[(self._ring.data + position) // 8] = pad
            self._cursor += tail
            position = 0
        self._reserved = position
        start = self._ring.data + position + HEADER_BYTES
        return self._bytes[start : start + nbytes]

    def commit(self, nbytes: int, more: bool = False, kind: int = DATA, wake: int = -1) -> None:
        """Publishes the reserved record; wakes reader ``wake`` (-1: every parked one)."""
        if self._reserved < 0:
            raise RuntimeError("commit() without reserve()")
        if nbytes > self._reserved_bytes:
            raise ValueError(
                f"commit() of {nbytes} bytes, but reserve() was for {self._reserved_bytes}"
            )
        if kind in (0, PAD) or not 0 < kind <= KIND_MASK:
            raise ValueError(f"commit() of a record of kind {kind}")
        ring = self._ring
        if wake >= ring.n_readers:
            raise ValueError(f"wake={wake} names no reader of a ring of {ring.n_readers} readers")
        position = self._reserved
        self._reserved = -1
        words = self._words
        words[(ring.data + position) >> 3] = (
            nbytes | (kind << KIND_SHIFT) | ((MORE if more else 0) << FLAGS_SHIFT)
        )
        self._cursor += HEADER_BYTES + ((nbytes + 7) & ~7)
        if not STORES_ARE_ORDERED:
            full_fence()
        words[ring.write_index] = self._cursor
        full_fence()
        if wake >= 0:
            ring.notify(ring.reader_bell(wake))
            return
        for reader in range(ring.n_readers):
            ring.notify(ring.reader_bell(reader))

    def cancel(self) -> None:
        """Forgets an uncommitted reservation (and its PAD): nothing was published."""
        if self._reserved >= 0:
            self._reserved = -1
            self._cursor = self._cursor_before

    def send(self, chunks: Sequence[memoryview | bytes], nbytes: int, wake: int) -> bool:
        """Writes the message as one record now, or returns False having written nothing
        (no room, not open, or too big for one record)."""
        if wake >= self._ring.n_readers:
            raise ValueError(
                f"wake={wake} names no reader of a ring of {self._ring.n_readers} readers"
            )
        if nbytes > self._max_payload or len(chunks) > MAX_GATHER:
            return False
        total = sum(memoryview(chunk).nbytes for chunk in chunks)
        if total != nbytes:
            raise ValueError(f"the chunks hold {total} bytes, not nbytes={nbytes}")
        view = self.try_reserve(nbytes)
        if view is None:
            return False
        position = 0
        for chunk in chunks:
            flat = memoryview(chunk).cast("B")
            view[position : position + len(flat)] = flat
            position += len(flat)
        self.commit(nbytes, wake=wake)
        return True

    def send_message(self, target: int, tag: int, pickle: bytes, wake: int) -> bool:
        """Writes a message without tensors (prelude and pickle, ``codec.py``) as one
        record now, or returns False having written nothing."""
        for word in (target, tag):
            if not -(1 << 63) <= word < 1 << 63:
                raise OverflowError(f"{word} does not fit a 64-bit prelude word")
        prelude = PRELUDE.pack(target, tag, 0, 0, len(pickle))
        return self.send((prelude, pickle), len(prelude) + len(pickle), wake)

    def send_plain(self, target: int, tag: int, obj: object, wake: int) -> bool:
        """:meth:`send_message` of ``obj``'s pickle, if it is a plain value whose pickle
        :func:`plain_dumps` writes; False: nothing was written."""
        payload = plain_dumps(obj)
        return payload is not None and self.send_message(target, tag, payload, wake)

    def notify_all(self) -> None:
        """Wakes every parked reader."""
        full_fence()
        for reader in range(self._ring.n_readers):
            self._ring.notify(self._ring.reader_bell(reader))

    def detached_readers(self) -> list[int]:
        """Readers that no longer hold the writer back."""
        words = self._words
        return [
            r for r, line in enumerate(self._ring.reader_lines) if words[line + DETACHED_WORD]
        ]


class ReaderCore:
    """Reading end number ``reader`` of the ring at ``offset`` of ``region``."""

    def __init__(self, region: _Region, offset: int, reader: int) -> None:
        ring = self._ring = _Header(region, offset)
        if not 0 <= reader < ring.n_readers:
            raise ValueError(
                f"reader {reader} out of range for a ring of {ring.n_readers} readers"
            )
        self._words = ring.words
        self._bytes = ring.words.cast("B")
        self._mask = ring.capacity - 1
        self._line = ring.reader_lines[reader]
        self._cursor_index = self._line + CURSOR_WORD
        self._cursor = int(self._words[self._cursor_index])
        self._pending = 0
        self.kind = DATA
        self.more = False
        self.resync = False  # the rest of an abandoned message is to skip (stream.py)

    def has_data(self) -> bool:
        """True if a record (possibly a PAD) waits, or the ring is no longer open."""
        words, ring = self._words, self._ring
        return words[ring.write_index] != self._cursor or words[ring.state_index] != OPEN

    def poll(self) -> memoryview | None:
        """The next record's payload, or None; see :attr:`kind` and :attr:`more`."""
        if self._pending:
            raise RuntimeError("poll() again before consume()")
        words, ring = self._words, self._ring
        while True:
            published = int(words[ring.write_index])
            if published == self._cursor:
                state = words[ring.state_index]
                if state != OPEN and words[ring.write_index] == self._cursor:
                    raise _state_error(int(state), "reader")
                return None
            if not STORES_ARE_ORDERED:
                full_fence()
            position = self._cursor & self._mask
            header = words[(ring.data + position) >> 3]
            length = header & LENGTH_MASK
            kind = (header >> KIND_SHIFT) & KIND_MASK
            tail = ring.capacity - position
            available = published - self._cursor
            size = HEADER_BYTES + ((length + 7) & ~7)
            if available > ring.capacity or (
                length != tail - HEADER_BYTES
                if kind == PAD
                else size > tail or size > available
            ):
                raise _broken_error("the ring is corrupt (a record overruns it)")
            if kind == PAD:
                self._cursor += HEADER_BYTES + length
                continue
            self.kind = kind
            self.more = bool((header >> FLAGS_SHIFT) & MORE)
            self._pending = HEADER_BYTES + ((length + 7) & ~7)
            start = ring.data + position + HEADER_BYTES
            return self._bytes[start : start + length]

    def poll_message(
        self,
    ) -> tuple[memoryview, int | None, int | None, memoryview | None] | None:
        """:meth:`poll`, with the prelude (``codec.py``) of a record that starts a message.

        Returns:
            None if nothing is published, else ``(record, target, tag, pickle)``;
            target and tag are None for a record too short for a prelude (ABORT);
            pickle is the pickle bytes when the whole message is this record and
            carries no tensors, else None.
        """
        record = self.poll()
        if record is None:
            return None
        if self.kind != DATA or len(record) < PRELUDE_BYTES:
            return record, None, None, None
        target, tag, n_storages, n_fds, pickle_len = PRELUDE.unpack_from(record)
        pickle = None
        complete = not self.more and pickle_len <= len(record) - PRELUDE_BYTES
        if complete and not n_storages and not n_fds:
            pickle = record[PRELUDE_BYTES : PRELUDE_BYTES + pickle_len]
        return record, target, tag, pickle

    def take(
        self, loads: Callable[[memoryview], Any], rank: int
    ) -> tuple[Any, ...] | memoryview | None:
        """The hot path of a reader that decodes messages (``codec.py``).

        Skips one-record messages without tensors addressed to neither ``rank`` nor
        every rank (-1), and returns the next one that is, unpickled with ``loads``
        (a tuple) and consumed. Any other record (tensors, fragments, ABORT, anything
        while :attr:`resync` is set, a pickle ``loads`` refused or that is not a
        tuple) is returned as :meth:`poll` returns it, still to consume. None:
        nothing is published. If ``loads`` raises something that is not an
        Exception (KeyboardInterrupt), that propagates and the record stays unread.
        """
        while True:
            polled = self.poll_message()
            if polled is None:
                return None
            record, target, _, pickle = polled
            if pickle is None or self.resync:
                return record
            if target != TARGET_ALL and target != rank:
                self.consume()
                continue
            try:
                value = loads(pickle)
            except Exception:
                return record  # the general path reports it, with the message's tag
            except BaseException:
                self._pending = 0  # unread: the next call sees it again
                raise
            if type(value) is not tuple:
                return record
            self.consume()
            return value

    def consume(self) -> None:
        """Releases the record returned by :meth:`poll` to the writer."""
        self._cursor += self._pending
        self._pending = 0
        if not STORES_ARE_ORDERED:
            full_fence()  # the payload's loads stay before the cursor store (aarch64)
        self._words[self._cursor_index] = self._cursor
        full_fence()
        self._ring.notify(self._ring.writer_bell)

    def spin(self, seconds: float) -> bool:
        """Busy-waits until :meth:`has_data`, at most ``seconds``."""
        return spin_any((self,), seconds)

    def detach(self) -> None:
        """Stops holding the writer back, for good."""
        self._words[self._line + DETACHED_WORD] = 1
        full_fence()
        bell = self._ring.writer_bell
        self._words[bell] = AWAKE
        futex_wake(self._ring.address + 8 * bell)


def take_each(
    readers: tuple[ReaderCore, ...], loads: Callable[[memoryview], Any], rank: int
) -> list[tuple[int, tuple[Any, ...] | memoryview]]:
    """:meth:`ReaderCore.take` on each reader until it has nothing more; a record left
    to the general path ends that reader's turn (it stays pending), and a closed or
    broken ring ends it quietly. If ``loads`` raises something that is not an
    Exception after some records were taken, those are returned (they were
    released) and the failing record stays unread for the next call."""
    taken: list[tuple[int, tuple[Any, ...] | memoryview]] = []
    for index, reader in enumerate(readers):
        while True:
            try:
                value = reader.take(loads, rank)
            except (_closed_error, _broken_error):
                break
            except BaseException:
                if not taken:
                    raise
                return taken
            if value is None:
                break
            taken.append((index, value))
            if type(value) is not tuple:
                break
    return taken


def spin_any(readers: tuple[ReaderCore, ...], seconds: float) -> bool:
    """Busy-waits until one of ``readers`` has data, at most ``seconds``."""
    if not seconds >= 0.0:  # negative, or NaN
        raise ValueError(f"spin seconds must be >= 0, not {seconds!r}")
    end = time.perf_counter() + seconds
    while True:
        for reader in readers:
            if reader.has_data():
                return True
        if time.perf_counter() >= end:
            return False


_PLAIN_ATOMS = (type(None), bool, int, float, str, bytes)


def _is_plain(obj: object, budget: int) -> bool:
    """Whether ``obj`` is built only of None, bool, int, float, str, bytes and exact
    tuples, lists and dicts of them: values every pickler writes the same way, without
    consulting ``reducer_override`` (the codec's fast path). False past ``budget``
    objects or ``PLAIN_MAX_DEPTH`` levels of nesting."""
    remaining = [budget]

    def walk(item: object, depth: int) -> bool:
        remaining[0] -= 1
        if remaining[0] < 0 or depth > PLAIN_MAX_DEPTH:
            return False
        kind = type(item)
        if kind in _PLAIN_ATOMS:
            return True
        if kind is tuple or kind is list:
            return all(walk(element, depth + 1) for element in item)  # type: ignore[attr-defined]
        if kind is dict:
            return all(
                walk(key, depth + 1) and walk(value, depth + 1)
                for key, value in item.items()  # type: ignore[attr-defined]
            )
        return False

    return walk(obj, 0)


def plain_dumps(obj: object) -> bytes | None:
    """The pickle of ``obj`` if it is a plain value (:func:`_is_plain`) whose pickle is
    at most ``PLAIN_DUMP_MAX`` bytes, else None (the compiled core writes it in C, and
    also declines a list or dict held twice, an int past 64 bits and a str with lone
    surrogates)."""
    if not _is_plain(obj, PLAIN_BUDGET):
        return None
    payload = pickle.dumps(obj, 5)
    return payload if len(payload) <= PLAIN_DUMP_MAX else None


loads = pickle.loads
"""``pickle.loads``; the compiled core's reads plain values in C, and its ``take``
unpickles in place when given it."""
