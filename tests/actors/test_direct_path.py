"""Tests for the direct path of calls and broadcasts (Note [The direct path] in
torchtroupe/actors/direct.py): when it is taken, and that leaving it loses nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch

import torchtroupe as tt
from tests.actors.actors_for_tests import Echo
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT
from torchtroupe._remote_errors import capture
from torchtroupe.actors.direct import DirectPath
from torchtroupe.actors.messages import ERROR, RESULT
from torchtroupe.actors.pump import ReplyPump
from torchtroupe.actors.slots import CallSlot
from torchtroupe.transport.codec import TARGET_ALL, Encoder, send_encoded
from torchtroupe.transport.mailbox import CallerEnd, MailboxLayout, RankEnd


@dataclass
class Mailbox:
    """A router over an in-process mailbox, with each rank's end to write replies."""

    router: ReplyPump
    ranks: list[RankEnd]

    def reply(self, rank: int, seq: int, kind: int, value: Any) -> None:
        message = Encoder().encode_compact((seq, kind, value), tag=seq)
        send_encoded(self.ranks[rank].replies, message, TARGET_ALL, seq, deadline=None)


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    layout = MailboxLayout.create(2, 1 << 14)
    router = ReplyPump(
        CallerEnd(layout),
        "g",
        lambda rank: f"Echo rank {rank}",
        lambda rank, reply: None,
        lambda rank, tag, count: [],
    )
    router.open_rank(0)
    router.open_rank(1)
    box = Mailbox(router, [RankEnd(layout, 0), RankEnd(layout, 1)])
    yield box
    assert router.close(SHORT_TIMEOUT)
    del box, router
    layout.region.release()


class _Group:
    """The little of a group's lifecycle that the read half looks at."""

    def __init__(self) -> None:
        self.name = "g"
        self.states: list[str] = []
        self.closed = False
        self.gave_up = None


def _direct(router: ReplyPump) -> DirectPath:
    return DirectPath(router, None, _Group())  # type: ignore[arg-type]


def _answer(router: ReplyPump, rank: int, seq: int) -> tuple[bool, Any]:
    assert router.try_exclusive(rank)
    try:
        return _direct(router).read_reply(rank, seq, "echo", None)
    finally:
        router.release_pump()


def _wait_for(router: ReplyPump, slots: list[CallSlot]) -> None:
    router.wait(slots, None, lambda: "the test's call")


# -- taking the direct path ---------------------------------------------------------------


def test_a_reply_already_in_the_ring_is_returned_without_a_slot(mailbox: Mailbox) -> None:
    mailbox.reply(0, 7, RESULT, "seven")

    assert _answer(mailbox.router, 0, 7) == (True, "seven")
    assert mailbox.router.try_exclusive(0)  # nothing was left registered
    mailbox.router.release_pump()


def test_an_error_reply_is_raised_as_its_own_type_with_a_note(mailbox: Mailbox) -> None:
    mailbox.reply(1, 3, ERROR, capture(KeyError("missing")))

    with pytest.raises(KeyError) as caught:
        _answer(mailbox.router, 1, 3)
    assert "raised in Echo rank 1, endpoint 'echo'" in caught.value.__notes__


def test_no_direct_path_while_another_call_is_outstanding(mailbox: Mailbox) -> None:
    other = CallSlot(1, 1, "echo")
    assert mailbox.router.register(other)

    assert not mailbox.router.try_exclusive(0)
    mailbox.router.forget([other])
    assert mailbox.router.try_exclusive(0)
    mailbox.router.release_pump()


def test_no_direct_path_while_another_thread_reads_the_rings(mailbox: Mailbox) -> None:
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        assert mailbox.router.try_exclusive(1)
        held.set()
        done.wait(SHORT_TIMEOUT)
        mailbox.router.release_pump()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(SHORT_TIMEOUT)
        assert not mailbox.router.try_exclusive(0)
    finally:
        done.set()
        holder.join(SHORT_TIMEOUT)
    assert mailbox.router.try_exclusive(0)
    mailbox.router.release_pump()


# -- leaving it without losing anything ----------------------------------------------------


def test_a_late_reply_is_never_taken_for_the_direct_calls_own(mailbox: Mailbox) -> None:
    mailbox.reply(0, 5, RESULT, "an earlier call's, which timed out")
    mailbox.reply(0, 7, RESULT, "own")

    answered, slot = _answer(mailbox.router, 0, 7)

    assert not answered
    _wait_for(mailbox.router, [slot])
    assert slot.outcome() == "own"


def test_a_reply_after_the_spin_window_reaches_the_registered_slot(mailbox: Mailbox) -> None:
    answered, slot = _answer(mailbox.router, 0, 9)
    assert not answered and not slot.done

    mailbox.reply(0, 9, RESULT, "late but kept")
    _wait_for(mailbox.router, [slot])

    assert slot.outcome() == "late but kept"


def test_a_reply_carrying_a_tensor_leaves_the_direct_path_and_arrives(mailbox: Mailbox) -> None:
    mailbox.reply(0, 4, RESULT, torch.arange(6))

    answered, slot = _answer(mailbox.router, 0, 4)

    assert not answered
    _wait_for(mailbox.router, [slot])
    assert torch.equal(slot.outcome(), torch.arange(6))


def test_another_threads_reply_read_on_the_direct_path_reaches_its_call(mailbox: Mailbox) -> None:
    # The other call registered after this one took the pump, and its rank answered first.
    assert mailbox.router.try_exclusive(0)
    try:
        other = CallSlot(2, 0, "echo")
        assert mailbox.router.register(other)
        mailbox.reply(0, 2, RESULT, "theirs")
        mailbox.reply(0, 3, RESULT, "mine")
        answered, mine = _direct(mailbox.router).read_reply(0, 3, "echo", None)
    finally:
        mailbox.router.release_pump()

    assert not answered
    _wait_for(mailbox.router, [other, mine])
    assert (other.outcome(), mine.outcome()) == ("theirs", "mine")


# -- broadcasts -----------------------------------------------------------------------------


def _gather(router: ReplyPump, seq: int) -> tuple[bool, Any]:
    assert router.try_exclusive(TARGET_ALL)
    try:
        return _direct(router).read_replies(seq, "echo", None)
    finally:
        router.release_pump()


def test_a_broadcast_gathers_every_rank_in_rank_order(mailbox: Mailbox) -> None:
    mailbox.reply(1, 6, RESULT, "from 1")
    mailbox.reply(0, 6, RESULT, "from 0")

    assert _gather(mailbox.router, 6) == (True, ["from 0", "from 1"])


def test_a_broadcast_with_a_late_rank_keeps_the_answers_it_has(mailbox: Mailbox) -> None:
    mailbox.reply(1, 6, RESULT, "from 1")

    answered, slots = _gather(mailbox.router, 6)
    assert not answered
    assert [slot.done for slot in slots] == [False, True]

    mailbox.reply(0, 6, RESULT, "from 0")
    _wait_for(mailbox.router, slots)
    assert [slot.outcome() for slot in slots] == ["from 0", "from 1"]


def test_a_broadcast_where_a_rank_raised_resolves_every_slot(mailbox: Mailbox) -> None:
    mailbox.reply(0, 8, ERROR, capture(ValueError("rank 0 failed")))
    mailbox.reply(1, 8, RESULT, "from 1")

    answered, slots = _gather(mailbox.router, 8)
    assert not answered
    _wait_for(mailbox.router, slots)

    assert isinstance(slots[0].error, ValueError)
    assert slots[1].outcome() == "from 1"


def test_no_direct_broadcast_while_a_rank_is_not_readable() -> None:
    layout = MailboxLayout.create(2, 1 << 14)
    router = ReplyPump(CallerEnd(layout), "g", str, lambda r, c: None, lambda r, t, n: [])
    router.open_rank(0)  # rank 1 is still starting

    assert not router.try_exclusive(TARGET_ALL)
    assert router.try_exclusive(0)
    router.release_pump()
    assert router.close(SHORT_TIMEOUT)
    del router
    layout.region.release()


# -- through real ranks ---------------------------------------------------------------------


@dataclass
class Point:
    x: int


def test_calls_with_values_the_direct_path_does_not_carry_still_work() -> None:
    with tt.spawn(Echo, timeout=LONG_TIMEOUT) as group:
        # A class instance is not a builtin value: the general path sends it.
        assert group[0].call("echo", Point(3), timeout=SHORT_TIMEOUT) == Point(3)
        assert group[0].call("echo", "plain", timeout=SHORT_TIMEOUT) == "plain"
        big = "x" * (1 << 21)  # longer than one record of the default ring
        assert group[0].call("echo", big, timeout=SHORT_TIMEOUT) == big
        assert group.broadcast("echo", big, timeout=SHORT_TIMEOUT) == [big]


def test_a_broadcast_where_ranks_answer_at_different_times_keeps_rank_order() -> None:
    with tt.spawn(Echo, world_size=3, timeout=LONG_TIMEOUT) as group:
        # The last rank answers first; the first 0.1 s later, well past the spin window.
        got = group.broadcast("answer_in_reverse_rank_order", 0.05, timeout=SHORT_TIMEOUT)
        assert got == [0, 1, 2]
        with pytest.raises(tt.GroupError) as caught:
            group.broadcast("fail_on_rank", 1, 0.05, timeout=SHORT_TIMEOUT)
        assert [type(error) for error in caught.value.exceptions] == [ValueError]
        assert group.broadcast("echo", "after", timeout=SHORT_TIMEOUT) == ["after"] * 3


def test_a_call_or_broadcast_with_timeout_zero_times_out_even_with_the_answer_at_hand() -> None:
    with tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT) as group:
        with pytest.raises(tt.CallTimeoutError):
            group[0].call("echo", 1, timeout=0)
        with pytest.raises(tt.CallTimeoutError):
            group.broadcast("echo", 1, timeout=0)
        assert group[0].call("echo", 2, timeout=SHORT_TIMEOUT) == 2


def test_a_group_that_gave_up_refuses_calls_while_its_ranks_are_still_being_stopped() -> None:
    with tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT) as group:
        # The moment between a give-up being recorded and the ranks being stopped.
        group._lifecycle.gave_up = tt.SupervisionError("gave up after too many restarts")
        with pytest.raises(tt.GroupClosedError, match="gave up"):
            group[0].call("echo", 1, timeout=SHORT_TIMEOUT)
        with pytest.raises(tt.GroupClosedError, match="gave up"):
            group.broadcast("echo", 1, timeout=SHORT_TIMEOUT)
