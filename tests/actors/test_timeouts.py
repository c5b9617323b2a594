"""Every call takes ``timeout=``; past it the caller gets CallTimeoutError, whatever
the form of the call, and a late answer is never taken for another call's."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import torchtroupe as tt
from tests.actors.actors_for_tests import Echo
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT


@pytest.fixture
def group() -> Iterator[tt.ActorGroup]:
    with tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT) as group:
        yield group


def _slow(actor: object, seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_call_async_future_fails_with_call_timeout_error(group: tt.ActorGroup) -> None:
    started = time.monotonic()
    future = group[0].call_async("sleep", 1.0, timeout=0.2)
    with pytest.raises(tt.CallTimeoutError, match="sleep"):
        future.result(SHORT_TIMEOUT)
    assert time.monotonic() - started < 1.0  # failed at its deadline, not at the answer
    assert group[0].call("echo", "own answer", timeout=SHORT_TIMEOUT) == "own answer"


def test_a_broadcast_async_future_fails_with_call_timeout_error(group: tt.ActorGroup) -> None:
    future = group.broadcast_async("sleep", 1.0, timeout=0.2)
    with pytest.raises(tt.CallTimeoutError):
        future.result(SHORT_TIMEOUT)
    assert group.broadcast("echo", 7, timeout=SHORT_TIMEOUT) == [7, 7]


def test_run_on_one_rank_raises_call_timeout_error(group: tt.ActorGroup) -> None:
    with pytest.raises(tt.CallTimeoutError):
        group[1].run(_slow, 1.0, timeout=0.2)
    assert group[1].run(_slow, 0.0, timeout=SHORT_TIMEOUT) == 0.0


def test_run_async_on_one_rank_fails_with_call_timeout_error(group: tt.ActorGroup) -> None:
    future = group[1].run_async(_slow, 1.0, timeout=0.2)
    with pytest.raises(tt.CallTimeoutError):
        future.result(SHORT_TIMEOUT)
