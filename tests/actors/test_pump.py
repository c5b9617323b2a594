"""Tests for torchtroupe/actors/pump.py: order of calls, timeouts and late replies."""

from __future__ import annotations

import logging
import pickle
import random
import time

import pytest

import torchtroupe as tt
from tests.actors.actors_for_tests import Echo
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT
from torchtroupe.actors.messages import RESULT, Reply
from torchtroupe.actors.pump import ReplyPump
from torchtroupe.actors.slots import CallSlot
from torchtroupe.transport.codec import TARGET_ALL, send_encoded
from torchtroupe.transport.mailbox import CallerEnd, MailboxLayout, RankEnd


def test_each_rank_sees_calls_broadcasts_and_scatters_in_the_order_they_were_made() -> None:
    world_size = 2
    expected: list[list[int]] = [[] for _ in range(world_size)]
    choose = random.Random(1234)
    futures = []
    with tt.spawn(Echo, world_size=world_size, timeout=LONG_TIMEOUT) as group:
        for counter in range(10_000):
            kind = choose.randrange(4)
            if kind == 0:
                rank = choose.randrange(world_size)
                assert group[rank].call("log", counter, timeout=SHORT_TIMEOUT) == counter
                expected[rank].append(counter)
            elif kind == 1:
                rank = choose.randrange(world_size)
                futures.append(
                    (group[rank].call_async("log", counter, timeout=SHORT_TIMEOUT), counter)
                )
                expected[rank].append(counter)
            elif kind == 2:
                assert group.broadcast("log", counter, timeout=SHORT_TIMEOUT) == [counter] * 2
                for log in expected:
                    log.append(counter)
            else:
                got = group.scatter("log", [(counter,), (counter,)], timeout=SHORT_TIMEOUT)
                assert got == [counter] * 2
                for log in expected:
                    log.append(counter)
        for future, counter in futures:
            assert future.result(timeout=SHORT_TIMEOUT) == counter
        seen = group.broadcast("fetch_log", timeout=SHORT_TIMEOUT)
    for rank in range(world_size):
        assert seen[rank] == expected[rank], f"rank {rank} saw calls out of order"


def test_slow_call_raises_call_timeout_error_which_is_a_timeout_error() -> None:
    with tt.spawn(Echo, timeout=LONG_TIMEOUT) as group:
        started = time.monotonic()
        with pytest.raises(tt.CallTimeoutError) as caught:
            group[0].call("sleep", 1.0, timeout=0.2)
        assert time.monotonic() - started < 1.0  # it did not wait for the answer
        assert isinstance(caught.value, TimeoutError)
        assert "sleep" in str(caught.value)


def test_late_reply_is_never_handed_to_the_next_call() -> None:
    with tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT) as group:
        with pytest.raises(tt.CallTimeoutError):
            group[0].call("sleep", 1.0, timeout=0.2)
        # The rank answers the sleep first (it serves in order); that answer is dropped.
        assert group[0].call("echo", "own result", timeout=SHORT_TIMEOUT) == "own result"
        assert group[0].call("echo", "again", timeout=SHORT_TIMEOUT) == "again"


def test_late_broadcast_replies_are_never_handed_to_the_next_broadcast() -> None:
    with tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT) as group:
        with pytest.raises(TimeoutError):
            group.broadcast("sleep", 1.0, timeout=0.2)
        assert group.broadcast("echo", "own", timeout=SHORT_TIMEOUT) == ["own", "own"]
        assert group.scatter("echo", [(0,), (1,)], timeout=SHORT_TIMEOUT) == [0, 1]


def test_a_malformed_reply_is_dropped_with_a_warning_and_is_not_taken_for_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    layout = MailboxLayout.create(1, 1 << 14)
    controls: list[tuple[int, Reply]] = []
    router = ReplyPump(
        CallerEnd(layout),
        "g",
        lambda rank: f"rank {rank}",
        lambda r, c: controls.append((r, c)),
        lambda rank, tag, count: [],
    )
    router.open_rank(0)
    slot = CallSlot(7, 0, "noop")
    assert router.register(slot)
    rank_side = RankEnd(layout, 0)
    # Two fields where a reply has three: nothing can say which call it answers.
    send_encoded(rank_side.replies, pickle.dumps((7, RESULT)), TARGET_ALL, 7, deadline=None)
    send_encoded(rank_side.replies, pickle.dumps((7, RESULT, "ok")), TARGET_ALL, 7, deadline=None)

    with caplog.at_level(logging.WARNING, logger="torchtroupe.actors.pump"):
        router.drain_now()

    assert "dropped a malformed reply from rank 0" in caplog.text
    assert controls == []
    assert slot.done and slot.outcome() == "ok"
    assert router.close(SHORT_TIMEOUT)
    del router, rank_side
    layout.region.release()
