"""Tests for torchtroupe/transport/arena.py and arena_views.py: large tensors are written
once into shared memory and received in place."""

from __future__ import annotations

import gc
import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.timeouts import SHORT_TIMEOUT
from tests.transport.rings import new_ring
from torchtroupe.transport.arena import GRANULE, FreeList, TensorArena
from torchtroupe.transport.arena_views import forget_arena, mapped_segments
from torchtroupe.transport.codec import TARGET_ALL, EncodedMessage, Encoder, decode
from torchtroupe.transport.ring import RingReader, RingWriter, monotonic_deadline
from torchtroupe.transport.stream import MessageReader, MessageWriter

MiB = 1 << 20


class ArenaChannel:
    """An encoder with an arena at one end of a ring, ``n_readers`` readers at the other
    (all in this process: each decode maps the segments as a rank would)."""

    def __init__(self, n_readers: int = 1, capacity: int = 64 * MiB) -> None:
        self.ring = new_ring(4 * MiB, n_readers)
        self.writer = MessageWriter(RingWriter(self.ring.layout))
        self.readers = [MessageReader(RingReader(self.ring.layout, r)) for r in range(n_readers)]
        self.arena = TensorArena(n_readers, capacity)
        self.encoder = Encoder(share_fds=True, arena=self.arena)

    def send(self, obj: Any, target: int = TARGET_ALL) -> EncodedMessage | bytes:
        message = self.encoder.encode_compact(obj, target)
        self._fds = list(message.fds) if isinstance(message, EncodedMessage) else []
        chunks = message.chunks if isinstance(message, EncodedMessage) else [message]
        nbytes = sum(len(chunk) for chunk in chunks)
        if isinstance(message, EncodedMessage):
            self.writer.send(chunks, nbytes, deadline=monotonic_deadline(SHORT_TIMEOUT))
        return message

    def receive(self, reader: int = 0) -> Any:
        message = self.readers[reader].receive(deadline=monotonic_deadline(SHORT_TIMEOUT))
        return decode(message, lambda tag, count: [os.dup(fd) for fd in self._fds], reader)

    def close(self) -> None:
        forget_arena(self.arena.key)
        self.arena.close()
        self.readers.clear()
        self.writer = None  # type: ignore[assignment]
        self.ring.region.release()


@pytest.fixture
def channel() -> Iterator[ArenaChannel]:
    channel = ArenaChannel()
    yield channel
    channel.close()


def _inside_arena(tensor: torch.Tensor) -> bool:
    address = tensor.data_ptr()
    return any(start <= address < start + n for start, n in mapped_segments())


@pytest.mark.parametrize("numel", [16 << 10, 1 << 18, 4 << 20])
def test_a_large_tensor_arrives_whole_and_lives_in_an_arena_segment(
    channel: ArenaChannel, numel: int
) -> None:
    sent = torch.randn(numel)
    channel.send(("x", sent))
    name, received = channel.receive()
    assert name == "x"
    assert torch.equal(received, sent)
    assert _inside_arena(received)
    assert received.data_ptr() != sent.data_ptr()


def test_a_small_tensor_still_goes_through_the_ring(channel: ArenaChannel) -> None:
    sent = torch.randn(100)
    message = channel.send(sent)
    assert isinstance(message, EncodedMessage) and not message.blocks
    received = channel.receive()
    assert torch.equal(received, sent) and not _inside_arena(received)


def test_views_of_one_storage_stay_views_of_one_block(channel: ArenaChannel) -> None:
    base = torch.arange(1 << 18, dtype=torch.float64).reshape(512, 512)
    channel.send([base[1:], base[:, 3], base.t()])
    rows, column, transposed = channel.receive()
    assert torch.equal(rows, base[1:])
    assert torch.equal(column, base[:, 3])
    assert torch.equal(transposed, base.t())
    assert rows.untyped_storage().data_ptr() == column.untyped_storage().data_ptr()


def test_the_senders_later_writes_do_not_change_what_was_received(
    channel: ArenaChannel,
) -> None:
    sent = torch.zeros(1 << 18)
    channel.send(sent)
    received = channel.receive()
    sent.fill_(7.0)
    assert float(received.abs().sum()) == 0.0


def test_a_block_is_reused_once_the_receiver_drops_its_tensor(channel: ArenaChannel) -> None:
    channel.send(torch.randn(1 << 18))
    first = channel.receive()
    address = first.data_ptr()
    assert channel.arena.busy_blocks() == 1
    del first
    gc.collect()
    assert channel.arena.busy_blocks() == 0
    channel.send(torch.randn(1 << 18))
    second = channel.receive()
    assert second.data_ptr() == address


def test_a_held_block_is_not_reused(channel: ArenaChannel) -> None:
    channel.send(torch.ones(1 << 18))
    held = channel.receive()
    channel.send(torch.zeros(1 << 18))
    other = channel.receive()
    assert held.data_ptr() != other.data_ptr()
    assert float(held.sum()) == 1 << 18


def test_a_broadcast_block_is_free_only_once_every_reader_dropped_it() -> None:
    channel = ArenaChannel(n_readers=3)
    try:
        sent = torch.randn(1 << 18)
        channel.send(sent)
        received = [channel.receive(r) for r in range(3)]
        for tensor in received:
            assert torch.equal(tensor, sent)
        del tensor
        received.pop()
        received.pop()
        gc.collect()
        assert channel.arena.busy_blocks() == 1
        received.clear()
        gc.collect()
        assert channel.arena.busy_blocks() == 0
    finally:
        channel.close()


def test_a_dead_readers_blocks_are_freed_when_it_is_forgotten() -> None:
    channel = ArenaChannel(n_readers=2)
    try:
        channel.send(torch.randn(1 << 18), target=1)
        channel.send(torch.randn(1 << 18))  # to both; reader 0 takes and drops it
        assert channel.arena.busy_blocks() == 2
        channel.readers[0].receive(deadline=monotonic_deadline(SHORT_TIMEOUT)).finish()
        channel.receive(0)  # a rank skips messages for others; reader 0 takes the second
        gc.collect()
        assert channel.arena.busy_blocks() == 2  # reader 1 never read either
        channel.arena.forget_reader(1)
        assert channel.arena.busy_blocks() == 0
    finally:
        channel.close()


def test_a_full_arena_falls_back_to_the_ring_without_waiting() -> None:
    channel = ArenaChannel(capacity=2 * MiB)
    try:
        channel.send(torch.randn(300_000))  # 1.2 MB: fits
        held = channel.receive()
        message = channel.send(torch.randn(300_000))  # no room while held, no growth
        assert isinstance(message, EncodedMessage) and not message.blocks
        assert not _inside_arena(channel.receive())
        assert _inside_arena(held)
    finally:
        channel.close()


def test_a_received_tensor_stays_valid_after_the_arena_is_closed(
    channel: ArenaChannel,
) -> None:
    sent = torch.randn(1 << 18)
    channel.send(sent)
    received = channel.receive()
    channel.close()
    gc.collect()
    assert torch.equal(received, sent)


def test_a_cancelled_message_gives_its_blocks_back(channel: ArenaChannel) -> None:
    message = channel.encoder.encode_compact(torch.randn(1 << 18))
    assert channel.arena.busy_blocks() == 1
    channel.encoder.cancel(message)
    assert channel.arena.busy_blocks() == 0


# --- the allocator -----------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(min_value=1, max_value=40), st.integers(0, 1000)),
        max_size=80,
    )
)
def test_the_free_list_never_hands_out_overlapping_runs(
    operations: list[tuple[bool, int, int]],
) -> None:
    size = 64 * GRANULE
    free = FreeList(size)
    live: dict[int, int] = {}
    for allocate, granules, pick in operations:
        if allocate or not live:
            nbytes = granules * GRANULE
            start = free.allocate(nbytes)
            if start is None:
                assert all(n < nbytes for _, n in free.runs())
                continue
            assert start >= 0 and start + nbytes <= size
            for other, length in live.items():
                assert start + nbytes <= other or other + length <= start
            live[start] = nbytes
        else:
            start = sorted(live)[pick % len(live)]
            free.free(start, live.pop(start))
        assert free.free_bytes() + sum(live.values()) == size
        runs = free.runs()
        for (a, n), (b, _) in itertools.pairwise(runs):
            assert a + n < b  # coalesced: no two runs touch
    for start, nbytes in list(live.items()):
        free.free(start, nbytes)
    assert free.runs() == [(0, size)]


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(min_value=1, max_value=3 * MiB), st.integers(0, 99)),
        max_size=30,
    )
)
def test_the_arena_grows_within_its_cap_and_reuses_what_was_released(
    operations: list[tuple[bool, int, int]],
) -> None:
    cap = 40 * MiB
    arena = TensorArena(1, cap)
    source = torch.zeros(3 * MiB, dtype=torch.uint8)
    held: list[Any] = []
    try:
        for place, nbytes, pick in operations:
            if place or not held:
                block = arena.place(source.data_ptr(), nbytes, [0])
                if block is not None:
                    held.append(block)
            else:
                block = held.pop(pick % len(held))
                arena.cancel([block])  # as its reader's release would
            assert sum(n for _, n in arena.segment_spans()) <= cap
            assert arena.busy_blocks() == len(held)
        arena.cancel(held)
        assert arena.busy_blocks() == 0
        spans = arena.segment_spans()
        if spans:  # everything free again: the largest place fits without growing
            largest = max(n for _, n in spans) - 2 * GRANULE
            assert arena.place(source.data_ptr(), min(largest, 3 * MiB), [0]) is not None
            assert arena.segment_spans() == spans
    finally:
        arena.close()
