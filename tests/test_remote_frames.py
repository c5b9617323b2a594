"""Tests for torchtroupe/_remote_frames.py: frames recorded from a traceback and made
into a real traceback again, in one process.

A rebuilt traceback prints as the original did, carets included; a frame whose
position is unknown prints no carets rather than wrong ones.
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from torchtroupe._remote_frames import (
    RemoteFrame,
    capture_frames,
    format_frames,
    rebuild_traceback,
)


def _divide(x: int) -> int:
    return 10 // x


def _look_up(table: dict[str, dict[str, int]]) -> int:
    return table["outer"]["inner"]


# fmt: off
def _add_over_lines(values: dict[str, Any]) -> Any:
    return (values["a"] +
            values["b"])
# fmt: on


def _call_with_accents() -> str:
    café = "é"
    return café.encode("ascii").decode()


FAILURES: list[Callable[[], object]] = [
    lambda: _divide(0),
    lambda: _look_up({"outer": {}}),
    lambda: _add_over_lines({"a": "text", "b": 1}),
    _call_with_accents,
]


def _caught(failure: Callable[[], object]) -> BaseException:
    with pytest.raises(Exception) as caught:
        failure()
    return caught.value


@pytest.mark.parametrize("failure", FAILURES, ids=["binary-op", "subscript", "two-lines", "utf8"])
def test_a_rebuilt_traceback_prints_as_the_original_carets_included(
    failure: Callable[[], object],
) -> None:
    error = _caught(failure)
    frames, gap, dropped = capture_frames(error.__traceback__)
    assert (gap, dropped) == (0, 0)
    rebuilt = rebuild_traceback(pickle.loads(pickle.dumps(frames)))
    original = traceback.format_tb(error.__traceback__)
    assert traceback.format_tb(rebuilt) == original
    assert any(set(line.splitlines()[-1].strip()) <= set("^~") for line in original)


def test_the_rank_side_text_prints_as_the_original_too() -> None:
    error = _caught(FAILURES[0])
    frames, gap, dropped = capture_frames(error.__traceback__)
    expected = "Traceback (most recent call last):\n" + "".join(
        traceback.format_tb(error.__traceback__)
    )
    assert format_frames(frames, gap, dropped) == expected


def test_a_frame_without_a_known_position_prints_its_line_without_carets() -> None:
    error = _caught(FAILURES[0])
    frames, _, _ = capture_frames(error.__traceback__)
    innermost = frames[-1]
    unknown = RemoteFrame(innermost.filename, innermost.name, innermost.module, innermost.lineno)
    rebuilt = rebuild_traceback((unknown,))
    (printed,) = traceback.format_tb(rebuilt)
    assert printed.splitlines() == [
        f'  File "{innermost.filename}", line {innermost.lineno}, in {innermost.name}',
        "    return 10 // x",
    ]


def test_a_frame_keeps_its_module_name_in_its_globals() -> None:
    error = _caught(FAILURES[0])
    frames, _, _ = capture_frames(error.__traceback__)
    rebuilt = rebuild_traceback(frames)
    assert rebuilt is not None
    assert rebuilt.tb_frame.f_globals["__name__"] == __name__
