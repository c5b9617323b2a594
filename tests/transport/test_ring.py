"""Tests for torchtroupe/transport/ring.py: records, wrap-around, back-pressure, close, break."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT
from tests.transport.rings import (
    PARK_UNTIL_WOKEN,
    WRITER_BELL,
    in_thread,
    new_ring,
    reader_bell,
    wait_until_parked,
)
from torchtroupe.errors import ChannelBrokenError, ChannelClosedError
from torchtroupe.transport.layout import BROKEN, CLOSED, DATA, HEADER_BYTES
from torchtroupe.transport.region import SharedRegion
from torchtroupe.transport.ring import (
    RingLayout,
    RingReader,
    RingWriter,
    detach_reader,
    monotonic_deadline,
    ring_footprint,
)

PATTERN = random.Random(0).randbytes(1 << 16)


def payload(index: int, nbytes: int) -> bytes:
    """Distinct, reproducible bytes for record ``index``."""
    start = (index * 7919) % (len(PATTERN) // 2)
    return PATTERN[start : start + nbytes]


def record_bytes(nbytes: int) -> int:
    """Ring bytes one record of ``nbytes`` payload occupies."""
    return HEADER_BYTES + ((nbytes + 7) & ~7)


def write_now(writer: RingWriter, index: int, nbytes: int) -> bytes:
    """Writes record ``index`` if there is room at once; raises TimeoutError if not."""
    data = payload(index, nbytes)
    view = writer.reserve(nbytes, deadline=time.monotonic())
    view[:] = data
    writer.commit(nbytes)
    return data


def drain(reader: RingReader) -> list[bytes]:
    """Reads and consumes every record published so far."""
    records = []
    while (view := reader.poll()) is not None:
        assert reader.kind == DATA
        assert not reader.more
        records.append(bytes(view))
        reader.consume()
    return records


def advance_to(writer: RingWriter, readers: list[RingReader], position: int) -> None:
    """Moves an empty ring's cursors to byte ``position`` with records every reader reads."""
    remaining = position
    while remaining:
        size = min(remaining, writer.max_payload + HEADER_BYTES)
        view = writer.reserve(size - HEADER_BYTES, deadline=monotonic_deadline(SHORT_TIMEOUT))
        view[:] = bytes(len(view))
        writer.commit(size - HEADER_BYTES)
        remaining -= size
        for reader in readers:
            assert len(drain(reader)) == 1


@st.composite
def ring_scripts(draw: st.DrawFn) -> tuple[int, int, int, list[tuple[int, int]]]:
    """(capacity, readers, start position, [(record size, readers that drain after it)])."""
    capacity = draw(st.sampled_from([4096, 8192]))
    n_readers = draw(st.integers(1, 4))
    start = 8 * draw(st.integers(0, capacity // 8 - 1))
    largest = capacity // 4 - HEADER_BYTES
    size = st.one_of(
        st.integers(0, largest),
        st.sampled_from([0, 1, 7, 8, 9, largest - 8, largest - 1, largest]),
    )
    drains = st.integers(0, (1 << n_readers) - 1)
    records = draw(st.lists(st.tuples(size, drains), max_size=80))
    return capacity, n_readers, start, records


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(script=ring_scripts())
def test_every_reader_reads_back_every_record_in_order_across_wrap_arounds(
    script: tuple[int, int, int, list[tuple[int, int]]],
) -> None:
    capacity, n_readers, start, records = script
    ring = new_ring(capacity, n_readers)
    writer = RingWriter(ring.layout)
    readers = [RingReader(ring.layout, r) for r in range(n_readers)]
    assert writer.max_payload == capacity // 4 - HEADER_BYTES
    advance_to(writer, readers, start)

    written: list[bytes] = []
    seen: list[list[bytes]] = [[] for _ in readers]
    for index, (nbytes, drainers) in enumerate(records):
        try:
            written.append(write_now(writer, index, nbytes))
        except TimeoutError:
            # Full: the slowest reader holds the writer back until it reads.
            for reader, records_seen in zip(readers, seen, strict=True):
                records_seen += drain(reader)
            written.append(write_now(writer, index, nbytes))
        for r, (reader, records_seen) in enumerate(zip(readers, seen, strict=True)):
            if drainers >> r & 1:
                records_seen += drain(reader)
    for reader, records_seen in zip(readers, seen, strict=True):
        records_seen += drain(reader)
        assert records_seen == written


def test_records_cross_the_end_of_the_ring_at_every_offset() -> None:
    capacity = 4096
    for start in range(0, capacity, 8):
        ring = new_ring(capacity)
        writer, reader = RingWriter(ring.layout), RingReader(ring.layout, 0)
        advance_to(writer, [reader], start)
        largest = writer.max_payload
        for index in range(6):
            data = write_now(writer, index, largest)
            assert drain(reader) == [data], f"start {start}, record {index}"


def test_records_of_every_small_size_keep_their_length_and_bytes() -> None:
    ring = new_ring(4096)
    writer, reader = RingWriter(ring.layout), RingReader(ring.layout, 0)
    for nbytes in range(writer.max_payload + 1):
        data = write_now(writer, nbytes, nbytes)
        assert drain(reader) == [data]


def fill(writer: RingWriter, fast: RingReader, nbytes: int) -> list[bytes]:
    """Writes records until the ring is full, the fast reader reading each at once."""
    written = []
    while True:
        deadline = monotonic_deadline(0.05)
        try:
            view = writer.reserve(nbytes, deadline=deadline)
        except TimeoutError:
            assert time.monotonic() >= deadline
            return written
        data = payload(len(written), nbytes)
        view[:] = data
        writer.commit(nbytes)
        written.append(data)
        assert drain(fast) == [data]
        assert len(written) <= 64, "the writer never ran out of room"


def test_a_reader_that_does_not_read_holds_back_the_writer_until_the_deadline() -> None:
    ring = new_ring(4096, n_readers=2)
    writer = RingWriter(ring.layout)
    fast, slow = RingReader(ring.layout, 0), RingReader(ring.layout, 1)
    written = fill(writer, fast, writer.max_payload)

    assert len(written) == 4096 // record_bytes(writer.max_payload)
    # The reserve that timed out left nothing behind.
    assert fast.poll() is None
    assert drain(slow) == written
    assert fast.poll() is None
    # Once the slow reader caught up, there is room again.
    data = write_now(writer, 99, writer.max_payload)
    assert drain(fast) == [data]
    assert drain(slow) == [data]


def test_a_timed_out_reserve_that_would_have_wrapped_leaves_the_ring_unchanged() -> None:
    ring = new_ring(4096, n_readers=2)
    writer = RingWriter(ring.layout)
    fast, slow = RingReader(ring.layout, 0), RingReader(ring.layout, 1)
    advance_to(writer, [fast, slow], 4096 - 520)  # the next big record needs a PAD
    written = fill(writer, fast, 600)
    assert written

    assert drain(slow) == written
    data = write_now(writer, 1, writer.max_payload)
    assert drain(fast) == [data]
    assert drain(slow) == [data]


@pytest.mark.parametrize("detached_by", ["itself", "a monitor"])
def test_detaching_the_slow_reader_wakes_the_parked_writer(detached_by: str) -> None:
    ring = new_ring(4096, n_readers=2)
    writer = RingWriter(ring.layout, strategy=PARK_UNTIL_WOKEN)
    fast, slow = RingReader(ring.layout, 0), RingReader(ring.layout, 1)
    fill(writer, fast, writer.max_payload)

    def write_once_more() -> bytes:
        data = payload(7, writer.max_payload)
        view = writer.reserve(len(data), deadline=monotonic_deadline(LONG_TIMEOUT))
        view[:] = data
        writer.commit(len(data))
        return data

    with in_thread(write_once_more, unblock=lambda: ring.layout.set_state(BROKEN)) as future:
        wait_until_parked(ring.region, WRITER_BELL)
        assert not future.done()
        if detached_by == "itself":
            slow.detach()
        else:
            detach_reader(ring.layout, 1)
        data = future.result(SHORT_TIMEOUT)
    assert drain(fast) == [data]
    assert writer.detached_readers() == [1]
    # The detached reader no longer holds anything back: many rings' worth goes through.
    for index in range(40):
        data = write_now(writer, index, writer.max_payload)
        assert drain(fast) == [data]


def test_readers_drain_a_closed_ring_then_get_channel_closed() -> None:
    ring = new_ring(4096, n_readers=2)
    writer = RingWriter(ring.layout)
    readers = [RingReader(ring.layout, r) for r in range(2)]
    written = [write_now(writer, index, 100 * index) for index in range(5)]
    writer.close()

    for reader in readers:
        assert drain_until_closed(reader) == written
        with pytest.raises(ChannelClosedError):
            reader.receive(deadline=monotonic_deadline(SHORT_TIMEOUT))
    with pytest.raises(ChannelClosedError):
        writer.reserve(8, deadline=monotonic_deadline(SHORT_TIMEOUT))


def drain_until_closed(reader: RingReader) -> list[bytes]:
    records = []
    with pytest.raises(ChannelClosedError):
        while True:
            view = reader.receive(deadline=monotonic_deadline(SHORT_TIMEOUT))
            records.append(bytes(view))
            reader.consume()
    return records


@pytest.mark.parametrize(
    ("state", "error"), [(CLOSED, ChannelClosedError), (BROKEN, ChannelBrokenError)]
)
def test_a_parked_reader_is_woken_at_once_when_the_ring_is_closed_or_broken(
    state: int, error: type[Exception]
) -> None:
    ring = new_ring(4096)
    reader = RingReader(ring.layout, 0, strategy=PARK_UNTIL_WOKEN)

    def receive() -> object:
        return reader.receive(deadline=monotonic_deadline(LONG_TIMEOUT))

    with in_thread(receive, unblock=lambda: ring.layout.set_state(BROKEN)) as future:
        wait_until_parked(ring.region, reader_bell(0))
        assert not future.done()
        ring.layout.set_state(state)
        with pytest.raises(error):
            future.result(SHORT_TIMEOUT)


@pytest.mark.parametrize(
    ("state", "error"), [(CLOSED, ChannelClosedError), (BROKEN, ChannelBrokenError)]
)
def test_a_parked_writer_is_woken_at_once_when_the_ring_is_closed_or_broken(
    state: int, error: type[Exception]
) -> None:
    ring = new_ring(4096, n_readers=2)
    writer = RingWriter(ring.layout, strategy=PARK_UNTIL_WOKEN)
    fill(writer, RingReader(ring.layout, 0), writer.max_payload)

    def reserve() -> object:
        return writer.reserve(writer.max_payload, deadline=monotonic_deadline(LONG_TIMEOUT))

    with in_thread(reserve, unblock=lambda: ring.layout.set_state(BROKEN)) as future:
        wait_until_parked(ring.region, WRITER_BELL)
        assert not future.done()
        ring.layout.set_state(state)
        with pytest.raises(error):
            future.result(SHORT_TIMEOUT)


def test_a_broken_ring_delivers_what_was_published_then_fails_readers() -> None:
    ring = new_ring(4096)
    writer, reader = RingWriter(ring.layout), RingReader(ring.layout, 0)
    write_now(writer, 0, 10)
    ring.layout.set_state(BROKEN)
    view = reader.poll()
    assert view is not None and len(view) == 10
    reader.consume()
    with pytest.raises(ChannelBrokenError):
        reader.poll()
    with pytest.raises(ChannelBrokenError):
        reader.receive(deadline=monotonic_deadline(SHORT_TIMEOUT))
    with pytest.raises(ChannelBrokenError):
        writer.reserve(8, deadline=monotonic_deadline(SHORT_TIMEOUT))


def test_closing_a_broken_ring_leaves_it_broken() -> None:
    ring = new_ring(4096)
    ring.layout.set_state(BROKEN)
    RingWriter(ring.layout).close()
    assert ring.layout.state() == BROKEN


def test_an_empty_ring_times_out_a_reader_at_its_deadline() -> None:
    ring = new_ring(4096)
    reader = RingReader(ring.layout, 0)
    deadline = monotonic_deadline(0.05)
    with pytest.raises(TimeoutError):
        reader.receive(deadline=deadline)
    assert time.monotonic() >= deadline


def test_a_reader_in_another_thread_gets_records_as_they_are_committed() -> None:
    ring = new_ring(4096)
    writer = RingWriter(ring.layout)
    reader = RingReader(ring.layout, 0, strategy=PARK_UNTIL_WOKEN)

    def read_three() -> list[bytes]:
        records = []
        for _ in range(3):
            records.append(bytes(reader.receive(deadline=monotonic_deadline(LONG_TIMEOUT))))
            reader.consume()
        return records

    with in_thread(read_three, unblock=lambda: ring.layout.set_state(BROKEN)) as future:
        written = []
        for index in range(3):
            wait_until_parked(ring.region, reader_bell(0))
            written.append(write_now(writer, index, 50))
        assert future.result(SHORT_TIMEOUT) == written


@pytest.mark.parametrize("capacity", [0, 1024, 2048, 4095, 5000, 12288])
def test_format_rejects_a_capacity_that_is_not_a_power_of_two_of_at_least_4096(
    capacity: int,
) -> None:
    region = SharedRegion.allocate(1 << 16)
    with pytest.raises(ValueError, match="power of two"):
        RingLayout.format(
            region, 128, capacity=capacity, reader_bell_offsets=[64], writer_bell_offset=0
        )


def test_format_rejects_no_readers_a_misaligned_offset_and_a_region_too_small() -> None:
    region = SharedRegion.allocate(8192)
    with pytest.raises(ValueError):
        RingLayout.format(region, 128, capacity=4096, reader_bell_offsets=[], writer_bell_offset=0)
    with pytest.raises(ValueError):
        RingLayout.format(
            region, 136, capacity=4096, reader_bell_offsets=[64], writer_bell_offset=0
        )
    with pytest.raises(ValueError):
        RingLayout.format(
            region, 128, capacity=8192, reader_bell_offsets=[64], writer_bell_offset=0
        )
    with pytest.raises(ValueError):
        RingLayout(region, 128)  # nothing was formatted there
    assert ring_footprint(4096, 1) <= region.nbytes - 128


def test_reserve_rejects_a_record_larger_than_max_payload_and_writes_nothing() -> None:
    ring = new_ring(4096)
    writer, reader = RingWriter(ring.layout), RingReader(ring.layout, 0)
    with pytest.raises(ValueError):
        writer.reserve(writer.max_payload + 1, deadline=monotonic_deadline(SHORT_TIMEOUT))
    assert reader.poll() is None
    data = write_now(writer, 0, writer.max_payload)
    assert drain(reader) == [data]


def test_a_reader_index_out_of_range_is_rejected() -> None:
    ring = new_ring(4096, n_readers=2)
    with pytest.raises(ValueError):
        RingReader(ring.layout, 2)
    with pytest.raises(ValueError):
        RingReader(ring.layout, -1)
