"""The fd channel: tagged batches of fds beside ring messages."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.timeouts import SHORT_TIMEOUT
from torchtroupe.errors import ChannelBrokenError
from torchtroupe.transport.fdpass import FdChannel, socket_pair


@pytest.fixture
def channels() -> Iterator[tuple[FdChannel, FdChannel]]:
    left, right = socket_pair()
    sender, receiver = FdChannel(left), FdChannel(right)
    yield sender, receiver
    sender.close()
    receiver.close()


def _pipe_fds(count: int) -> tuple[list[int], list[int]]:
    pipes = [os.pipe() for _ in range(count)]
    return [r for r, _ in pipes], [w for _, w in pipes]


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def test_fds_arrive_as_working_duplicates(channels: tuple[FdChannel, FdChannel]) -> None:
    sender, receiver = channels
    reads, writes = _pipe_fds(1)
    sender.send(7, reads)
    (received,) = receiver.receive(7, 1, timeout=SHORT_TIMEOUT)
    os.write(writes[0], b"hello")
    assert received not in reads
    assert os.read(received, 5) == b"hello"
    _close([received, *reads, *writes])


def test_more_fds_than_one_datagram_carries_arrive_together(
    channels: tuple[FdChannel, FdChannel],
) -> None:
    sender, receiver = channels
    reads, writes = _pipe_fds(300)
    sender.send(1, reads)
    received = receiver.receive(1, 300, timeout=SHORT_TIMEOUT)
    assert len(received) == 300
    _close(received + reads + writes)


def test_a_batch_whose_message_was_never_published_is_dropped(
    channels: tuple[FdChannel, FdChannel],
) -> None:
    sender, receiver = channels
    stale, stale_writes = _pipe_fds(2)
    fresh, fresh_writes = _pipe_fds(1)
    sender.send(3, stale)  # its message was never written: nobody asks for tag 3
    sender.send(4, fresh)
    received = receiver.receive(4, 1, timeout=SHORT_TIMEOUT)
    assert len(received) == 1
    os.write(fresh_writes[0], b"x")
    assert os.read(received[0], 1) == b"x"
    _close(received + stale + stale_writes + fresh + fresh_writes)


def test_a_closed_peer_breaks_a_waiting_receiver(channels: tuple[FdChannel, FdChannel]) -> None:
    sender, receiver = channels
    sender.close()
    with pytest.raises(ChannelBrokenError):
        receiver.receive(1, 1, timeout=SHORT_TIMEOUT)
