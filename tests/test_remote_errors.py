"""Tests for torchtroupe/_remote_errors.py: the record of a rank's exception, in one
process (capture, pickle, rebuild), as the rank and the caller use it.

The record is bounded whatever was raised, capture never raises, and rebuild gives
the exception as its own type, or RemoteError, with its chain.
"""

from __future__ import annotations

import pickle
import sys
import traceback

import pytest

import torchtroupe as tt
from tests.actors.rank_error_actors import (
    NotRebuildable,
    Unprintable,
    chain_of,
    recurse_forever,
    recurse_then_raise,
)
from torchtroupe._remote_errors import RemoteFailure, capture, rebuild

# Far above what 100 frames, 9 chained exceptions and their formatted text need, far
# below what a 10,000-frame traceback or a 10,000-exception chain would take.
RECORD_BOUND = 200_000


def _raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as raised:
        return raised


def _sent(error: BaseException) -> tuple[RemoteFailure, int]:
    """``error``'s record as the caller unpickles it, and its size on the wire."""
    data = pickle.dumps(capture(error))
    return pickle.loads(data), len(data)


@pytest.fixture
def deep_recursion_error() -> RecursionError:
    """A RecursionError with about 20,000 frames (the limit is raised meanwhile)."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        with pytest.raises(RecursionError) as caught:
            recurse_forever(0)
    finally:
        sys.setrecursionlimit(old)
    return caught.value


def _frames_of(error: BaseException) -> list[traceback.FrameSummary]:
    return list(traceback.extract_tb(error.__traceback__))


# -- frames ---------------------------------------------------------------------------


def test_a_deep_traceback_is_sent_bounded_with_its_outermost_and_innermost_frames(
    deep_recursion_error: RecursionError,
) -> None:
    failure, size = _sent(deep_recursion_error)
    assert size < RECORD_BOUND
    rebuilt = rebuild(failure)
    assert type(rebuilt) is RecursionError
    original = _frames_of(deep_recursion_error)
    frames = _frames_of(rebuilt)
    assert 0 < len(frames) <= 100
    assert (frames[0].name, frames[0].lineno) == (original[0].name, original[0].lineno)
    assert (frames[-1].name, frames[-1].lineno) == (original[-1].name, original[-1].lineno)
    dropped = len(original) - len(frames)
    assert f"traceback truncated: {dropped:,} frames dropped" in "\n".join(rebuilt.__notes__)


def test_a_deep_traceback_formatted_for_remote_error_says_where_frames_were_dropped(
    deep_recursion_error: RecursionError,
) -> None:
    failure, _ = _sent(deep_recursion_error)
    assert "frames dropped ...]" in failure.formatted
    assert failure.formatted.rstrip().endswith("RecursionError: maximum recursion depth exceeded")
    assert len(failure.formatted) < RECORD_BOUND


def test_an_exception_that_cannot_be_rebuilt_comes_back_as_remote_error_with_its_frames() -> None:
    with pytest.raises(NotRebuildable) as caught:
        recurse_then_raise(300, NotRebuildable("one", "two"))
    failure, _ = _sent(caught.value)
    rebuilt = rebuild(failure)
    assert isinstance(rebuilt, tt.RemoteError)
    assert rebuilt.type_name.endswith("NotRebuildable")
    assert rebuilt.message == "one and two"
    assert "recurse_then_raise" in rebuilt.remote_traceback
    assert "frames dropped" in rebuilt.remote_traceback
    assert any(frame.name == "recurse_then_raise" for frame in _frames_of(rebuilt))


# -- chains ---------------------------------------------------------------------------


def test_a_long_chain_is_sent_bounded_and_the_rest_is_counted_in_a_note() -> None:
    failure, size = _sent(chain_of(10_000))
    assert size < RECORD_BOUND
    rebuilt = rebuild(failure)
    chain = [rebuilt]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    assert [str(error) for error in chain] == [f"link {n}" for n in range(9_999, 9_990, -1)]
    assert all(error.__traceback__ is not None for error in chain)
    assert "9,991 more were not sent back" in "\n".join(chain[-1].__notes__)


def test_a_chain_that_loops_is_sent_once_around() -> None:
    first, second = ValueError("first"), KeyError("second")
    first.__cause__ = second
    second.__cause__ = first
    rebuilt = rebuild(capture(first))
    assert isinstance(rebuilt.__cause__, KeyError)
    assert rebuilt.__cause__.__cause__ is None


def test_a_context_is_sent_unless_suppressed() -> None:
    try:
        try:
            raise KeyError("inner")
        except KeyError:
            raise ValueError("outer")  # noqa: B904 (the context is the point)
    except ValueError as error:
        with_context = rebuild(capture(error))
    assert isinstance(with_context.__context__, KeyError)
    assert not with_context.__suppress_context__
    assert "During handling of the above exception" in "".join(
        traceback.format_exception(with_context)
    )
    try:
        try:
            raise KeyError("inner")
        except KeyError:
            raise ValueError("outer") from None
    except ValueError as error:
        suppressed = rebuild(capture(error))
    assert suppressed.__context__ is None
    assert suppressed.__cause__ is None


# -- what capture survives ------------------------------------------------------------


def test_capture_of_an_exception_whose_str_fails_keeps_its_type() -> None:
    failure, _ = _sent(_raised(Unprintable()))
    assert failure.message == "<exception str() failed>"
    assert type(rebuild(failure)) is Unprintable


def test_a_huge_message_is_clipped_in_the_record_but_not_in_the_rebuilt_args() -> None:
    text = "x" * 1_000_000
    failure, _ = _sent(_raised(ValueError(text)))
    assert len(failure.message) < 20_000
    assert len(failure.formatted) < 70_000
    assert rebuild(failure).args == (text,)
