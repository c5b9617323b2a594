"""Tests for torchtroupe/errors.py and _remote_errors.py, as a caller sees them.

An exception raised by an endpoint must come back as its own type, with the
actor's frames in its traceback and a note naming class, rank, pid and endpoint.
"""

from __future__ import annotations

import pickle
import time
import traceback

import pytest

import torchtroupe as tt
from tests.actors.actors_for_tests import Echo, HoldsLockError, KeywordOnlyError
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT


def _spawn_two() -> tt.ActorGroup:
    return tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT)


def _formatted(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


# -- exceptions from an endpoint ----------------------------------------------------------


def test_endpoint_value_error_comes_back_as_value_error() -> None:
    with _spawn_two() as group:
        with pytest.raises(ValueError, match="bad input 42"):
            group[1].call("fail_with_value_error", "bad input 42", timeout=SHORT_TIMEOUT)
        try:
            group[0].call("fail_with_value_error", "caught", timeout=SHORT_TIMEOUT)
        except ValueError as error:
            assert type(error) is ValueError
        else:
            pytest.fail("the endpoint's ValueError did not reach the caller")


def test_remote_error_has_a_note_naming_class_rank_pid_and_endpoint() -> None:
    with _spawn_two() as group:
        pid = group[1].pid
        with pytest.raises(ValueError) as caught:
            group[1].call("fail_with_value_error", "noted", timeout=SHORT_TIMEOUT)
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "Echo" in notes
    assert "rank 1" in notes
    assert str(pid) in notes
    assert "fail_with_value_error" in notes


def test_remote_error_traceback_shows_the_actors_frames() -> None:
    with _spawn_two() as group, pytest.raises(ValueError) as caught:
        group[0].call("fail_with_value_error", "framed", timeout=SHORT_TIMEOUT)
    formatted = _formatted(caught.value)
    assert "actors_for_tests.py" in formatted
    assert "fail_with_value_error" in formatted
    assert "raise ValueError(message)" in formatted  # the source line of the raising frame


def test_call_async_future_raises_the_endpoints_exception_by_type() -> None:
    with _spawn_two() as group:
        future = group[1].call_async("fail_with_value_error", "async", timeout=SHORT_TIMEOUT)
        with pytest.raises(ValueError, match="async") as caught:
            future.result(timeout=SHORT_TIMEOUT)
    assert "actors_for_tests.py" in _formatted(caught.value)


def test_exception_with_keyword_only_init_comes_back_as_its_type_with_its_attribute() -> None:
    with _spawn_two() as group, pytest.raises(KeywordOnlyError) as caught:
        group[0].call("fail_with_keyword_only_error", 7, timeout=SHORT_TIMEOUT)
    assert caught.value.code == 7
    assert "failed with code 7" in str(caught.value)
    assert "fail_with_keyword_only_error" in _formatted(caught.value)


def test_exception_with_unpicklable_attribute_comes_back_as_its_type_without_it() -> None:
    with _spawn_two() as group, pytest.raises(Exception) as caught:
        group[0].call("fail_holding_a_lock", "locked out", timeout=SHORT_TIMEOUT)
    error = caught.value
    text = _formatted(error)
    assert "worker failed" not in text.lower()
    assert "locked out" in text
    assert "fail_holding_a_lock" in text
    # What the code does: rebuilt as its own type, the lock dropped and named in a note.
    assert type(error) is HoldsLockError
    assert error.detail == "kept"
    assert not hasattr(error, "lock")
    notes = "\n".join(error.__notes__)
    assert "lock" in notes
    assert "unpicklable" in notes


def test_chained_exception_keeps_its_cause_with_remote_frames() -> None:
    with _spawn_two() as group, pytest.raises(RuntimeError, match="lookup failed") as caught:
        group[1].call("fail_with_chain", timeout=SHORT_TIMEOUT)
    cause = caught.value.__cause__
    assert isinstance(cause, KeyError)
    assert "missing" in str(cause)
    formatted = _formatted(caught.value)
    assert "The above exception was the direct cause" in formatted
    assert formatted.count("fail_with_chain") >= 2  # both the cause's and the error's frames


def test_group_stays_usable_after_an_endpoint_raises() -> None:
    with _spawn_two() as group:
        for _ in range(3):
            with pytest.raises(ValueError):
                group[0].call("fail_with_value_error", "again", timeout=SHORT_TIMEOUT)
        assert group.broadcast("echo", "fine", timeout=SHORT_TIMEOUT) == ["fine", "fine"]


# -- broadcast and scatter: GroupError ---------------------------------------------------


def test_broadcast_where_one_rank_raises_gives_group_error_after_every_rank_answered() -> None:
    with _spawn_two() as group:
        with pytest.raises(tt.GroupError) as caught:
            group.broadcast("fail_on_rank", 1, 0.3, timeout=LONG_TIMEOUT)
        raised_at = time.monotonic()
        finished_at = group[0].call("when_finished", timeout=SHORT_TIMEOUT)
        error = caught.value
        assert isinstance(error, ExceptionGroup)
        assert isinstance(error, tt.TroupeError)
        (failure,) = error.exceptions
        assert isinstance(failure, ValueError)
        assert "rank 1 refuses" in str(failure)
        assert "rank 1" in "\n".join(failure.__notes__)
        assert finished_at is not None and finished_at <= raised_at  # rank 0 had answered
        assert group.broadcast("echo", "after", timeout=SHORT_TIMEOUT) == ["after", "after"]


def test_group_error_can_be_caught_with_except_star() -> None:
    caught: list[BaseException] = []
    with _spawn_two() as group:
        try:
            group.broadcast("fail_on_rank", 0, 0.0, timeout=SHORT_TIMEOUT)
        except* ValueError as group_of_value_errors:
            caught.extend(group_of_value_errors.exceptions)
    assert len(caught) == 1
    assert isinstance(caught[0], ValueError)
    assert "rank 0 refuses" in str(caught[0])


def test_scatter_where_every_rank_raises_gives_one_entry_per_rank() -> None:
    with _spawn_two() as group, pytest.raises(tt.GroupError) as caught:
        group.scatter("fail_with_value_error", [("zero",), ("one",)], timeout=SHORT_TIMEOUT)
    messages = sorted(str(e) for e in caught.value.exceptions)
    assert messages == ["one", "zero"]


# -- the error classes themselves ---------------------------------------------------------


def test_call_timeout_error_is_a_timeout_error_and_a_troupe_error() -> None:
    assert issubclass(tt.CallTimeoutError, TimeoutError)
    assert issubclass(tt.CallTimeoutError, tt.TroupeError)


def test_actor_died_error_names_the_signal_and_survives_pickling() -> None:
    error = tt.ActorDiedError(rank=2, pid=123, exitcode=-9, group="g")
    assert error.signal_name == "SIGKILL"
    assert "rank 2" in str(error)
    assert "123" in str(error)
    assert "SIGKILL" in str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.rank, copy.pid, copy.exitcode, copy.signal_name) == (2, 123, -9, "SIGKILL")


def test_remote_error_carries_type_name_message_and_remote_traceback() -> None:
    error = tt.RemoteError("pkg.Strange", "it broke", "Traceback ...\n  File x.py\n")
    assert error.type_name == "pkg.Strange"
    assert error.message == "it broke"
    assert "File x.py" in str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.type_name, copy.message, copy.remote_traceback) == (
        error.type_name,
        error.message,
        error.remote_traceback,
    )


def test_actor_init_error_survives_pickling_with_its_rank() -> None:
    error = tt.ActorInitError("rank 3 failed", rank=3, actor_name="Worker")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.rank, copy.actor_name, str(copy)) == (3, "Worker", "rank 3 failed")
