"""Tests for torchtroupe/transport/stream.py: messages of any size, fragments, aborts."""

from __future__ import annotations

import array
import itertools
import random
import threading
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import ExitStack

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.timeouts import SHORT_TIMEOUT
from tests.transport.rings import FormattedRing, in_thread, new_ring
from torchtroupe.errors import ChannelBrokenError, ChannelClosedError
from torchtroupe.transport.layout import BROKEN
from torchtroupe.transport.ring import RingReader, RingWriter, monotonic_deadline
from torchtroupe.transport.stream import MessageAbortedError, MessageReader, MessageWriter

PATTERN = random.Random(1).randbytes(1 << 18)


def message(index: int, nbytes: int) -> bytes:
    """Distinct, reproducible content for message ``index``."""
    start = (index * 104729) % (len(PATTERN) - nbytes + 1)
    return PATTERN[start : start + nbytes]


def split(data: bytes, cuts: list[int]) -> list[memoryview | bytes]:
    """Cuts ``data`` at the given offsets into a mix of bytes and memoryview chunks."""
    bounds = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    chunks: list[memoryview | bytes] = []
    for n, (start, end) in enumerate(itertools.pairwise(bounds)):
        chunk = data[start:end]
        chunks.append(memoryview(chunk) if n % 2 else chunk)
    return chunks


def read_whole(incoming_reader: MessageReader, nbytes: int, step: int = 0) -> bytes:
    """Receives one message of ``nbytes`` and reads it, ``step`` bytes at a time (0: at once)."""
    incoming = incoming_reader.receive(deadline=monotonic_deadline(SHORT_TIMEOUT))
    buffer = bytearray(nbytes)
    view = memoryview(buffer)
    position = 0
    while position < nbytes:
        end = nbytes if step == 0 else min(nbytes, position + step)
        incoming.readinto(view[position:end])
        position = end
    incoming.finish()
    return bytes(buffer)


def broken(ring: FormattedRing) -> Callable[[], None]:
    """Breaks ``ring``: whoever waits on it gets ChannelBrokenError at once."""
    return lambda: ring.layout.set_state(BROKEN)


def break_if_failed(ring: FormattedRing) -> Callable[[Future[None]], None]:
    """A done-callback that breaks ``ring`` when the future's thread failed."""

    def callback(future: Future[None]) -> None:
        if future.exception() is not None:
            ring.layout.set_state(BROKEN)

    return callback


@st.composite
def message_scripts(draw: st.DrawFn) -> tuple[int, int, list[tuple[int, list[int]]], int]:
    """(capacity, readers, [(size, chunk cuts)], read step)."""
    capacity = draw(st.sampled_from([4096, 8192, 16384]))
    n_readers = draw(st.integers(1, 3))
    largest = capacity // 4 - 8
    size = st.one_of(
        st.integers(0, 4 * capacity),
        st.integers(0, 64),
        st.sampled_from([largest - 1, largest, largest + 1, 2 * largest, 2 * largest + 1]),
    )
    cuts = st.lists(st.integers(0, 4 * capacity), max_size=5)
    messages = draw(st.lists(st.tuples(size, cuts), min_size=1, max_size=12))
    step = draw(st.sampled_from([0, 1, 100, 999, 4096]))
    return capacity, n_readers, messages, step


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(script=message_scripts())
def test_messages_of_any_size_arrive_whole_and_in_order_at_every_reader(
    script: tuple[int, int, list[tuple[int, list[int]]], int],
) -> None:
    capacity, n_readers, messages, step = script
    ring = new_ring(capacity, n_readers)
    writer = MessageWriter(RingWriter(ring.layout))
    sent = [message(index, size) for index, (size, _) in enumerate(messages)]

    def send_all() -> None:
        for data, (_, cuts) in zip(sent, messages, strict=True):
            writer.send(split(data, cuts), len(data), deadline=monotonic_deadline(SHORT_TIMEOUT))

    def receive_all(reader_index: int) -> Callable[[], list[bytes]]:
        reader = MessageReader(RingReader(ring.layout, reader_index))
        return lambda: [read_whole(reader, len(data), step) for data in sent]

    with ExitStack() as stack:
        sending = stack.enter_context(in_thread(send_all, unblock=broken(ring)))
        others = [
            stack.enter_context(in_thread(receive_all(r), unblock=broken(ring)))
            for r in range(1, n_readers)
        ]
        assert receive_all(0)() == sent
        for other in others:
            assert other.result(SHORT_TIMEOUT) == sent
        sending.result(SHORT_TIMEOUT)


def test_a_message_larger_than_a_record_is_sent_as_fragments() -> None:
    ring = new_ring(4096)
    ring_writer = RingWriter(ring.layout)
    writer, reader = MessageWriter(ring_writer), RingReader(ring.layout, 0)
    data = message(0, 2 * ring_writer.max_payload + 5)
    writer.send([data], len(data), deadline=monotonic_deadline(SHORT_TIMEOUT))

    fragments = []
    while (view := reader.poll()) is not None:
        fragments.append((len(view), reader.more))
        reader.consume()
    largest = ring_writer.max_payload
    assert fragments == [(largest, True), (largest, True), (5, False)]


def test_skip_moves_over_bytes_across_fragments() -> None:
    ring = new_ring(4096)
    writer, reader = (
        MessageWriter(RingWriter(ring.layout)),
        MessageReader(RingReader(ring.layout, 0)),
    )
    data = message(0, 3000)
    writer.send([data], len(data), deadline=monotonic_deadline(SHORT_TIMEOUT))
    incoming = reader.receive(deadline=monotonic_deadline(SHORT_TIMEOUT))
    incoming.skip(1500)
    tail = bytearray(1500)
    incoming.readinto(memoryview(tail))
    incoming.finish()
    assert bytes(tail) == data[1500:]


def test_reading_past_the_end_of_a_message_is_an_error() -> None:
    ring = new_ring(4096)
    writer, reader = (
        MessageWriter(RingWriter(ring.layout)),
        MessageReader(RingReader(ring.layout, 0)),
    )
    writer.send([b"abc"], 3, deadline=monotonic_deadline(SHORT_TIMEOUT))
    incoming = reader.receive(deadline=monotonic_deadline(SHORT_TIMEOUT))
    with pytest.raises(ValueError):
        incoming.readinto(memoryview(bytearray(4)))


def test_finish_skips_an_unread_message_and_the_next_one_arrives_intact() -> None:
    ring = new_ring(4096)
    writer, reader = (
        MessageWriter(RingWriter(ring.layout)),
        MessageReader(RingReader(ring.layout, 0)),
    )
    first, second = message(0, 2500), message(1, 700)
    writer.send([first], len(first), deadline=monotonic_deadline(SHORT_TIMEOUT))
    writer.send([second], len(second), deadline=monotonic_deadline(SHORT_TIMEOUT))
    reader.receive(deadline=monotonic_deadline(SHORT_TIMEOUT)).finish()
    assert read_whole(reader, len(second)) == second


def test_a_message_whose_writer_timed_out_is_dropped_and_the_next_arrives_intact() -> None:
    ring = new_ring(4096, n_readers=2)
    writer = MessageWriter(RingWriter(ring.layout))
    readers = [MessageReader(RingReader(ring.layout, r)) for r in range(2)]
    abandoned, after = message(0, 20_000), message(1, 3000)

    # Nobody reads, so the ring fills in the middle of the message.
    with pytest.raises(TimeoutError):
        writer.send([abandoned], len(abandoned), deadline=monotonic_deadline(0.05))

    timed_out = threading.Event()

    def send_next() -> None:
        timed_out.set()
        writer.send([after], len(after), deadline=monotonic_deadline(SHORT_TIMEOUT))

    def drop_then_read(reader: MessageReader) -> bytes:
        incoming = reader.receive(deadline=monotonic_deadline(SHORT_TIMEOUT))
        with pytest.raises(MessageAbortedError):
            incoming.readinto(memoryview(bytearray(len(abandoned))))
        incoming.finish()
        return read_whole(reader, len(after))

    with (
        in_thread(send_next, unblock=broken(ring)) as sending,
        in_thread(lambda: drop_then_read(readers[1]), unblock=broken(ring)) as second_reader,
    ):
        assert timed_out.wait(SHORT_TIMEOUT)
        assert drop_then_read(readers[0]) == after
        assert second_reader.result(SHORT_TIMEOUT) == after
        sending.result(SHORT_TIMEOUT)


def test_an_abandoned_message_that_was_never_started_is_skipped_by_finish() -> None:
    ring = new_ring(4096)
    writer, reader = (
        MessageWriter(RingWriter(ring.layout)),
        MessageReader(RingReader(ring.layout, 0)),
    )
    abandoned, after = message(0, 10_000), message(1, 100)
    with pytest.raises(TimeoutError):
        writer.send([abandoned], len(abandoned), deadline=monotonic_deadline(0.05))

    def send_next() -> None:
        writer.send([after], len(after), deadline=monotonic_deadline(SHORT_TIMEOUT))

    with in_thread(send_next, unblock=broken(ring)) as sending:
        # A reader that skips the message without reading it (e.g. not its target).
        reader.receive(deadline=monotonic_deadline(SHORT_TIMEOUT)).finish()
        assert read_whole(reader, len(after)) == after
        sending.result(SHORT_TIMEOUT)


def test_a_message_that_timed_out_before_its_first_record_leaves_no_trace() -> None:
    ring = new_ring(4096, n_readers=2)
    ring_writer = RingWriter(ring.layout)
    writer = MessageWriter(ring_writer)
    fast = MessageReader(RingReader(ring.layout, 0))
    slow = MessageReader(RingReader(ring.layout, 1))
    small = [message(n, ring_writer.max_payload) for n in range(4)]
    for data in small:  # fills the ring exactly
        writer.send([data], len(data), deadline=monotonic_deadline(SHORT_TIMEOUT))
        assert read_whole(fast, len(data)) == data
    big = message(9, 5000)
    with pytest.raises(TimeoutError):
        writer.send([big], len(big), deadline=monotonic_deadline(0.05))
    assert fast.poll() is None
    for data in small:
        assert read_whole(slow, len(data)) == data
    assert slow.poll() is None


def test_a_reader_gets_channel_closed_after_the_last_message() -> None:
    ring = new_ring(4096)
    ring_writer = RingWriter(ring.layout)
    writer, reader = MessageWriter(ring_writer), MessageReader(RingReader(ring.layout, 0))
    data = message(0, 100)
    writer.send([data], len(data), deadline=monotonic_deadline(SHORT_TIMEOUT))
    ring_writer.close()
    assert read_whole(reader, len(data)) == data
    with pytest.raises(ChannelClosedError):
        reader.receive(deadline=monotonic_deadline(SHORT_TIMEOUT))


@pytest.mark.parametrize("nbytes", [16, 4000])
def test_send_accepts_memoryviews_of_any_item_format(nbytes: int) -> None:
    # Chunks are "memoryview | bytes": a view of doubles must go through both the
    # one-record path (small) and the fragment path (large).
    ring = new_ring(4096)
    writer, reader = (
        MessageWriter(RingWriter(ring.layout)),
        MessageReader(RingReader(ring.layout, 0)),
    )
    values = array.array("d", range(nbytes // 8))
    sent = bytes(memoryview(values).cast("B"))

    def send() -> None:
        writer.send([memoryview(values)], nbytes, deadline=monotonic_deadline(SHORT_TIMEOUT))

    with in_thread(send, unblock=broken(ring)) as sending:
        sending.add_done_callback(break_if_failed(ring))
        try:
            received = read_whole(reader, nbytes)
        except ChannelBrokenError:
            sending.result(0)  # the writer's own error, if it failed
            raise
        sending.result(SHORT_TIMEOUT)
    assert received == sent


def test_a_send_whose_chunk_cannot_be_read_leaves_the_ring_usable() -> None:
    ring = new_ring(1 << 14, n_readers=1)
    writer, reader = (
        MessageWriter(RingWriter(ring.layout)),
        MessageReader(RingReader(ring.layout, 0)),
    )
    # More chunks than the core gathers in one call, so the record is reserved, then
    # filled here; the last chunk is not a buffer.
    chunks: list[object] = [b"x"] * 9 + [object()]

    with pytest.raises(TypeError):
        writer.send(chunks, 10, deadline=monotonic_deadline(SHORT_TIMEOUT))  # type: ignore[arg-type]

    writer.send([b"after"], 5, deadline=monotonic_deadline(SHORT_TIMEOUT))
    assert read_whole(reader, 5) == b"after"
