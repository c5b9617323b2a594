"""Tests for torchtroupe/actors/lifecycle.py: what callers see when a rank dies."""

from __future__ import annotations

import os
import signal
import time

import pytest

import torchtroupe as tt
from tests.actors.actors_for_tests import Echo
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT


def test_call_in_flight_fails_with_actor_died_when_its_rank_is_killed() -> None:
    with tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT) as group:
        pid = group[1].pid
        assert pid is not None
        future = group[1].call_async("sleep", 60.0, timeout=SHORT_TIMEOUT)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(tt.ActorDiedError) as caught:
            future.result(timeout=SHORT_TIMEOUT)  # far less than the endpoint's 60 s
        error = caught.value
        assert error.rank == 1
        assert error.pid == pid
        assert error.exitcode == -signal.SIGKILL
        assert error.signal_name == "SIGKILL"
        assert "SIGKILL" in str(error)
        assert group[0].call("echo", "alive", timeout=SHORT_TIMEOUT) == "alive"


def test_blocking_call_fails_with_actor_died_at_once_when_the_rank_kills_itself() -> None:
    with tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT) as group:
        pid = group[0].pid
        started = time.monotonic()
        with pytest.raises(tt.ActorDiedError) as caught:
            group[0].call("kill_self", timeout=LONG_TIMEOUT)
        assert time.monotonic() - started < SHORT_TIMEOUT  # not at the call's timeout
        assert caught.value.rank == 0
        assert caught.value.pid == pid
        assert caught.value.signal_name == "SIGKILL"


def test_rank_is_marked_dead_by_the_time_its_call_fails_with_actor_died() -> None:
    with tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT) as group:
        assert group[1].alive
        with pytest.raises(tt.ActorDiedError):
            group[1].call("kill_self", timeout=SHORT_TIMEOUT)
        alive_after_its_death = [ref.alive for ref in group]
    del group  # so that a failure below is not also reported as a leak
    assert alive_after_its_death == [True, False]


def test_call_to_a_dead_rank_fails_at_once_with_its_actor_died_error() -> None:
    with tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT) as group:
        pid = group[1].pid
        with pytest.raises(tt.ActorDiedError):
            group[1].call("kill_self", timeout=SHORT_TIMEOUT)
        for _ in range(2):
            with pytest.raises(tt.ActorDiedError) as caught:
                group[1].call("echo", 1, timeout=SHORT_TIMEOUT)  # not CallTimeoutError
            assert caught.value.rank == 1
            assert caught.value.pid == pid
            assert caught.value.exitcode == -signal.SIGKILL
            assert "SIGKILL" in str(caught.value)
        with pytest.raises(tt.ActorDiedError):
            group[1].call_async("echo", 1, timeout=SHORT_TIMEOUT).result(timeout=SHORT_TIMEOUT)
        assert group[0].call("echo", "alive", timeout=SHORT_TIMEOUT) == "alive"


def test_broadcast_with_a_dead_rank_raises_group_error_holding_its_actor_died_error() -> None:
    with tt.spawn(Echo, world_size=3, timeout=LONG_TIMEOUT) as group:
        with pytest.raises(tt.ActorDiedError):
            group[1].call("kill_self", timeout=SHORT_TIMEOUT)
        with pytest.raises(tt.GroupError) as caught:
            group.broadcast("log", 7, timeout=SHORT_TIMEOUT)
        assert isinstance(caught.value, ExceptionGroup)
        (died,) = caught.value.exceptions
        assert isinstance(died, tt.ActorDiedError)
        assert died.rank == 1
        # The live ranks were still called.
        assert group[0].call("fetch_log", timeout=SHORT_TIMEOUT) == [7]
        assert group[2].call("fetch_log", timeout=SHORT_TIMEOUT) == [7]


def test_broadcast_in_flight_when_a_rank_is_killed_raises_group_error() -> None:
    with tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT) as group:
        pid = group[0].pid
        assert pid is not None
        future = group.broadcast_async("sleep", 60.0, timeout=SHORT_TIMEOUT)
        os.kill(pid, signal.SIGKILL)
        killed_other = group.pids[1]
        assert killed_other is not None
        os.kill(killed_other, signal.SIGKILL)
        with pytest.raises(tt.GroupError) as caught:
            future.result(timeout=SHORT_TIMEOUT)
        assert sorted(e.rank for e in caught.value.exceptions) == [0, 1]  # type: ignore[attr-defined]
        assert all(isinstance(e, tt.ActorDiedError) for e in caught.value.exceptions)


def test_sys_exit_0_in_an_endpoint_fails_the_call_with_actor_died_exit_code_0() -> None:
    with tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT) as group:
        pid = group[1].pid
        with pytest.raises(tt.ActorDiedError) as caught:
            group[1].call("exit_with", 0, timeout=SHORT_TIMEOUT)
        assert caught.value.rank == 1
        assert caught.value.pid == pid
        assert caught.value.exitcode == 0
        assert caught.value.signal_name is None
        assert group[0].call("echo", "alive", timeout=SHORT_TIMEOUT) == "alive"


def test_sys_exit_with_a_code_fails_the_call_with_that_exit_code() -> None:
    with tt.spawn(Echo, timeout=LONG_TIMEOUT) as group:
        with pytest.raises(tt.ActorDiedError) as caught:
            group[0].call("exit_with", 5, timeout=SHORT_TIMEOUT)
        assert caught.value.exitcode == 5
