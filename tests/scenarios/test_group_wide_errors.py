"""Errors that end a whole group reach every call form as themselves: shutdown gives
GroupClosedError and a give-up SupervisionError, never wrapped in a GroupError
(DESIGN.md, Errors)."""

from __future__ import annotations

import threading

import pytest

import torchtroupe as tt
from tests.actors.actors_for_tests import Echo
from tests.supervision.actors_for_supervision import Counter
from tests.supervision.events_for_tests import EventRecorder
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT
from torchtroupe.testing import kill_rank


def test_a_broadcast_in_flight_when_another_thread_shuts_down_raises_group_closed_error() -> None:
    group = tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT)
    outcome: list[BaseException] = []
    started = threading.Event()

    def broadcast() -> None:
        started.set()
        try:
            group.broadcast("sleep", 30.0, timeout=LONG_TIMEOUT)
        except BaseException as error:
            outcome.append(error)

    caller = threading.Thread(target=broadcast)
    caller.start()
    assert started.wait(SHORT_TIMEOUT)
    group.shutdown(timeout=0.0)
    caller.join(SHORT_TIMEOUT)
    assert not caller.is_alive()
    assert len(outcome) == 1
    assert type(outcome[0]) is tt.GroupClosedError


def test_scatter_and_call_on_a_shut_down_group_raise_group_closed_error() -> None:
    group = tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT)
    group.shutdown(timeout=SHORT_TIMEOUT)
    with pytest.raises(tt.GroupClosedError):
        group.scatter("echo", [(1,), (2,)], timeout=SHORT_TIMEOUT)
    with pytest.raises(tt.GroupClosedError):
        group.broadcast("echo", 1, timeout=SHORT_TIMEOUT)
    with pytest.raises(tt.GroupClosedError):
        group[0].call("echo", 1, timeout=SHORT_TIMEOUT)


def test_a_call_in_flight_on_a_survivor_stopped_by_a_give_up_gets_supervision_error() -> None:
    recorder = EventRecorder()
    policy = tt.RestartPolicy(max_restarts=0)
    with tt.spawn(
        Counter, args=("c",), world_size=2, restart=policy, timeout=LONG_TIMEOUT, on_event=recorder
    ) as group:
        survivor = group.pids[1]
        assert survivor is not None
        hanging = group[1].call_async("count_and_hang_in", survivor)
        scattered = group.broadcast_async("count_and_hang_in", survivor)
        kill_rank(group, 0)
        recorder.wait_for("gave_up")
        for future in (hanging, scattered):
            error = future.exception(timeout=SHORT_TIMEOUT)
            assert type(error) is tt.SupervisionError
        with pytest.raises(tt.GroupClosedError) as closed:
            group.broadcast("identity", timeout=SHORT_TIMEOUT)
        assert isinstance(closed.value.__cause__, tt.SupervisionError)
