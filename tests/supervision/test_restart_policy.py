"""Tests for supervision/policy.py's RestartPolicy as groups apply it (supervision/group_policy.py).

Each test kills a chosen rank with SIGKILL and waits on supervision events, never on
the clock: ``exited`` once the monitor saw the death, ``restarted`` once the new
incarnation is ready.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pydantic
import pytest

import torchtroupe as tt
from tests.supervision.actors_for_supervision import Counter, CrashesOnSecondStart
from tests.supervision.events_for_tests import EventRecorder
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT
from torchtroupe.testing import kill_rank


def spawn_counters(
    recorder: EventRecorder, policy: tt.RestartPolicy, world_size: int = 3
) -> tt.ActorGroup:
    return tt.spawn(
        Counter,
        args=("same-args",),
        world_size=world_size,
        restart=policy,
        name="counters",
        on_event=recorder,
        timeout=LONG_TIMEOUT,
    )


def kill_and_wait_for_restart(
    group: tt.ActorGroup, recorder: EventRecorder, rank: int, restarted: list[int]
) -> int:
    """Kills ``rank``; returns once every rank in ``restarted`` was restarted."""
    mark = recorder.mark()
    killed = kill_rank(group, rank)
    for each in restarted:
        recorder.wait_for("restarted", rank=each, since=mark)
    return killed


def identities(group: tt.ActorGroup) -> list[tuple[int, int, str]]:
    return [tuple(x) for x in group.broadcast("identity", timeout=SHORT_TIMEOUT)]


def test_one_for_one_restarts_only_the_killed_rank_with_the_same_arguments() -> None:
    recorder = EventRecorder()
    policy = tt.RestartPolicy(strategy="one_for_one", max_restarts=3)
    with spawn_counters(recorder, policy) as group:
        before = list(group.pids)
        killed = kill_and_wait_for_restart(group, recorder, 1, restarted=[1])
        after = list(group.pids)

        assert killed == before[1]
        assert after[0] == before[0] and after[2] == before[2]
        assert after[1] not in (None, before[1])
        assert identities(group) == [
            (0, before[0], "same-args"),
            (1, after[1], "same-args"),  # __init__ ran again in the new process
            (2, before[2], "same-args"),
        ]
        assert recorder.matching("restarted") == recorder.matching("restarted", rank=1)


def test_one_for_all_restarts_every_rank_when_one_is_killed() -> None:
    recorder = EventRecorder()
    policy = tt.RestartPolicy(strategy="one_for_all", max_restarts=3)
    with spawn_counters(recorder, policy) as group:
        before = list(group.pids)
        kill_and_wait_for_restart(group, recorder, 1, restarted=[0, 1, 2])
        after = list(group.pids)

        assert all(new is not None and new != old for old, new in zip(before, after, strict=True))
        assert identities(group) == [(r, after[r], "same-args") for r in range(3)]


def test_rest_for_one_restarts_the_killed_rank_and_those_after_it() -> None:
    recorder = EventRecorder()
    policy = tt.RestartPolicy(strategy="rest_for_one", max_restarts=3)
    with spawn_counters(recorder, policy) as group:
        before = list(group.pids)
        kill_and_wait_for_restart(group, recorder, 1, restarted=[1, 2])
        after = list(group.pids)

        assert after[0] == before[0]
        assert after[1] not in (None, before[1]) and after[2] not in (None, before[2])
        assert identities(group) == [(r, after[r], "same-args") for r in range(3)]
        assert not recorder.matching("restarted", rank=0)


def test_calls_in_flight_at_the_death_fail_and_are_not_replayed() -> None:
    recorder = EventRecorder()
    policy = tt.RestartPolicy(strategy="one_for_one", max_restarts=3)
    with spawn_counters(recorder, policy, world_size=2) as group:
        doomed = group[1].pid
        assert doomed is not None
        hanging = group[1].call_async("count_and_hang_in", doomed)
        queued = group[1].call_async("invocation_count")
        mark = recorder.mark()
        kill_rank(group, 1)

        for future in (hanging, queued):
            with pytest.raises(tt.ActorDiedError) as died:
                future.result(SHORT_TIMEOUT)
            assert (died.value.rank, died.value.pid) == (1, doomed)
            assert died.value.exitcode == -9 and died.value.signal_name == "SIGKILL"
        recorder.wait_for("restarted", rank=1, since=mark)

        # A replay would have run count_and_hang_in in the new process (which does not
        # hang there) before this call, and counted 1.
        assert group[1].call("invocation_count", timeout=SHORT_TIMEOUT) == 0
        assert group[0].call("invocation_count", timeout=SHORT_TIMEOUT) == 0


def test_a_call_made_while_the_restart_is_under_way_waits_and_reaches_the_new_rank() -> None:
    exited = threading.Event()
    restarted = threading.Event()

    def note(event: tt.SupervisionEvent) -> None:
        if event.kind == "exited":
            exited.set()
        elif event.kind == "restarted":
            restarted.set()

    recorder = EventRecorder(also=note)
    # The backoff holds the restart back long enough for the call to be made after the
    # death was seen (exited) and before the new rank is up (restarted).
    policy = tt.RestartPolicy(strategy="one_for_one", max_restarts=3, backoff_s=0.5)
    with spawn_counters(recorder, policy, world_size=2) as group:
        old = group[1].pid
        kill_rank(group, 1)
        assert exited.wait(SHORT_TIMEOUT)
        assert not restarted.is_set()

        rank, pid, label = group[1].call("identity", timeout=LONG_TIMEOUT)

        assert restarted.is_set()
        assert (rank, label) == (1, "same-args")
        assert pid == group[1].pid and pid != old


def test_more_restarts_than_the_policy_allows_gives_up_with_every_failure() -> None:
    recorder = EventRecorder()
    policy = tt.RestartPolicy(strategy="one_for_one", max_restarts=1, within_s=60.0)
    group = spawn_counters(recorder, policy, world_size=2)
    try:
        first = kill_and_wait_for_restart(group, recorder, 0, restarted=[0])
        second = kill_rank(group, 0)
        recorder.wait_for("gave_up")

        with pytest.raises(tt.GroupClosedError) as closed:
            group[1].call("identity", timeout=SHORT_TIMEOUT)
        cause = closed.value.__cause__
        assert isinstance(cause, tt.SupervisionError)
        assert [(f.rank, f.pid, f.exitcode) for f in cause.failures] == [
            (0, first, -9),
            (0, second, -9),
        ]
        assert all(isinstance(f, tt.ActorDiedError) for f in cause.failures)
        with pytest.raises(tt.GroupClosedError):
            group.broadcast("identity", timeout=SHORT_TIMEOUT)
    finally:
        group.shutdown(SHORT_TIMEOUT)


def test_a_call_waiting_for_a_restart_gets_supervision_error_when_the_group_gives_up() -> None:
    exited = threading.Event()
    recorder = EventRecorder(also=lambda e: exited.set() if e.kind == "exited" else None)
    # The backoff keeps rank 0 restarting while rank 1 dies too: one restart too many.
    policy = tt.RestartPolicy(strategy="one_for_one", max_restarts=1, backoff_s=2.0)
    group = spawn_counters(recorder, policy, world_size=2)
    try:
        first = kill_rank(group, 0)
        assert exited.wait(SHORT_TIMEOUT)
        waiting: Future[Any] = Future()
        entered = threading.Event()

        def call_rank_0() -> None:
            entered.set()
            try:
                waiting.set_result(group[0].call("identity", timeout=LONG_TIMEOUT))
            except BaseException as error:
                waiting.set_exception(error)

        caller = threading.Thread(target=call_rank_0)
        caller.start()
        assert entered.wait(SHORT_TIMEOUT)
        second = kill_rank(group, 1)
        recorder.wait_for("gave_up")
        caller.join(LONG_TIMEOUT)

        with pytest.raises(tt.SupervisionError) as gave_up:
            waiting.result(0)
        failures = gave_up.value.failures
        assert [(f.rank, f.pid, f.exitcode) for f in failures] == [(0, first, -9), (1, second, -9)]
        with pytest.raises(tt.GroupClosedError):
            group[0].call("identity", timeout=SHORT_TIMEOUT)
    finally:
        group.shutdown(SHORT_TIMEOUT)


@pytest.mark.parametrize(
    ("field", "value"),
    [("strategy", "bogus"), ("max_restarts", -1), ("within_s", 0), ("backoff_s", -0.5)],
)
def test_restart_policy_rejects_a_bad_value_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(pydantic.ValidationError) as invalid:
        tt.RestartPolicy(**{field: value})
    assert isinstance(invalid.value, ValueError)
    assert field in str(invalid.value)
    assert [error["loc"] for error in invalid.value.errors()] == [(field,)]


def test_a_rank_dying_in_init_during_a_restart_is_restarted_again(tmp_path: Path) -> None:
    recorder = EventRecorder()
    policy = tt.RestartPolicy(strategy="one_for_one", max_restarts=5, within_s=60)
    count_path = str(tmp_path / "starts")
    with tt.spawn(
        CrashesOnSecondStart, args=(count_path,), restart=policy, on_event=recorder
    ) as group:
        kill_rank(group, 0)
        recorder.wait_for("restarted", rank=0)
        assert group[0].call("pid", timeout=LONG_TIMEOUT) == group.pids[0]
    kinds = [event.kind for event in recorder.events]
    assert kinds.count("exited") == 2  # the killed rank, then the one that died starting
    assert kinds.count("restarting") == 2  # one restart per failure, none in parallel
    assert "gave_up" not in kinds
