"""What a rank's serve loop does with exceptions that are hard to send back, and with
a stop that breaks its rings.

Whatever an endpoint raises, the caller gets it (as its own type, or RemoteError) and
the rank serves on; a rank stopped while parked exits without printing anything.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

import torchtroupe as tt
from tests.actors.quiet_stop_driver import ROUNDS
from tests.actors.rank_error_actors import DIVIDE_LINE, NotRebuildable, Raiser, Unprintable
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT
from torchtroupe.actors.rank_main import FATAL_EXIT_CODE

REPOSITORY = Path(__file__).resolve().parents[2]
# The driver starts its own forkserver (importing torch), then a group or two per round.
DRIVER_TIMEOUT = 100.0


def _spawn_one() -> tt.ActorGroup:
    return tt.spawn(Raiser, world_size=1, timeout=LONG_TIMEOUT)


def _formatted(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


def _dropped_frames(error: BaseException) -> int:
    notes = "\n".join(getattr(error, "__notes__", []))
    found = re.search(r"traceback truncated: ([\d,]+) frames dropped", notes)
    assert found is not None, f"no truncation note in {notes!r}"
    return int(found.group(1).replace(",", ""))


def _assert_serves_on(group: tt.ActorGroup, pid: int | None) -> None:
    assert group[0].call("ping", timeout=SHORT_TIMEOUT) == "pong"
    assert group[0].pid == pid


# -- recursion --------------------------------------------------------------------------


def test_an_endpoint_hitting_the_recursion_limit_raises_recursion_error_and_rank_serves_on() -> (
    None
):
    with _spawn_one() as group:
        pid = group[0].pid
        with pytest.raises(RecursionError) as caught:
            group[0].call("recurse_forever", timeout=LONG_TIMEOUT)
        _assert_serves_on(group, pid)
    error = caught.value
    assert _dropped_frames(error) > 0
    frames = traceback.extract_tb(error.__traceback__)
    names = [frame.name for frame in frames]
    assert "recurse_forever" in names  # the endpoint: among the outermost frames
    assert frames[-1].name == "recurse_forever"  # the innermost frame
    assert len(frames) < 200  # truncated: the caller's frames, then 100 of the rank's
    assert "Raiser rank 0" in "\n".join(error.__notes__)


@pytest.mark.parametrize("restore", [True, False], ids=["limit-restored", "limit-left-raised"])
def test_a_ten_thousand_deep_recursion_under_a_raised_limit_comes_back_truncated(
    restore: bool,
) -> None:
    with _spawn_one() as group:
        pid = group[0].pid
        default_limit = group[0].call("recursion_limit", timeout=SHORT_TIMEOUT)
        with pytest.raises(RecursionError) as caught:
            group[0].call(
                "recurse_under_raised_limit", 10_000, restore=restore, timeout=LONG_TIMEOUT
            )
        _assert_serves_on(group, pid)
        limit = group[0].call("recursion_limit", timeout=SHORT_TIMEOUT)
    assert limit == (default_limit if restore else 10_000)
    assert _dropped_frames(caught.value) > 9_000
    text = _formatted(caught.value)
    assert "recurse_under_raised_limit" in text
    assert "frames dropped" in text
    assert len(text) < 64_000


# -- chains ---------------------------------------------------------------------------


def test_a_long_chain_of_causes_comes_back_cut_with_a_note_and_the_rank_serves_on() -> None:
    with _spawn_one() as group:
        pid = group[0].pid
        with pytest.raises(ValueError, match="link 999") as caught:
            group[0].call("fail_with_a_chain", 1_000, timeout=LONG_TIMEOUT)
        _assert_serves_on(group, pid)
    chain: list[BaseException] = [caught.value]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    assert [str(error) for error in chain] == [f"link {n}" for n in range(999, 990, -1)]
    assert "991 more were not sent back" in "\n".join(chain[-1].__notes__)


def test_a_chain_of_causes_that_loops_comes_back_once_around() -> None:
    with _spawn_one() as group, pytest.raises(ValueError, match="first") as caught:
        group[0].call("fail_with_a_looping_chain", timeout=SHORT_TIMEOUT)
    cause = caught.value.__cause__
    assert isinstance(cause, KeyError)
    assert cause.__cause__ is None


def test_an_exception_raised_while_handling_another_keeps_it_as_its_context() -> None:
    with _spawn_one() as group, pytest.raises(ValueError, match="while handling") as caught:
        group[0].call("fail_while_handling", timeout=SHORT_TIMEOUT)
    context = caught.value.__context__
    assert isinstance(context, KeyError)
    assert caught.value.__cause__ is None
    text = _formatted(caught.value)
    assert "During handling of the above exception, another exception occurred" in text
    assert text.count("fail_while_handling") >= 2  # the frames of both


# -- exceptions that are hard to send ---------------------------------------------------


def test_an_exception_whose_str_fails_comes_back_as_its_type_and_the_rank_serves_on() -> None:
    with _spawn_one() as group:
        pid = group[0].pid
        with pytest.raises(Unprintable):
            group[0].call("fail_unprintably", timeout=SHORT_TIMEOUT)
        _assert_serves_on(group, pid)


def test_a_deep_exception_that_cannot_be_rebuilt_comes_back_as_remote_error_truncated() -> None:
    with _spawn_one() as group:
        pid = group[0].pid
        with pytest.raises(tt.RemoteError) as caught:
            group[0].call("fail_deep_and_not_rebuildable", 500, timeout=LONG_TIMEOUT)
        _assert_serves_on(group, pid)
    error = caught.value
    assert error.type_name == f"{NotRebuildable.__module__}.{NotRebuildable.__qualname__}"
    assert error.message == "deep and odd"
    assert "frames dropped" in error.remote_traceback
    assert "recurse_then_raise" in error.remote_traceback
    assert "fail_deep_and_not_rebuildable" in error.remote_traceback
    assert _dropped_frames(error) > 300


def test_an_error_naming_a_sticky_cuda_failure_is_answered_then_ends_the_rank() -> None:
    with _spawn_one() as group:
        with pytest.raises(RuntimeError, match="device-side assert"):
            group[0].call("fail_like_a_sticky_cuda_error", timeout=SHORT_TIMEOUT)
        with pytest.raises(tt.ActorDiedError) as died:
            group[0].call("ping", timeout=LONG_TIMEOUT)
    assert died.value.exitcode == FATAL_EXIT_CODE
    assert died.value.reason is not None
    assert "device-side assert" in died.value.reason


# -- where the carets point -------------------------------------------------------------


def _caret_spans(text: str) -> list[tuple[str, str]]:
    """Each source line of a formatted traceback that is followed by a caret line."""
    lines = text.splitlines()
    return [
        (source, carets)
        for source, carets in itertools.pairwise(lines)
        if carets.strip() and set(carets.strip()) <= set("^~")
    ]


def test_the_carets_of_remote_frames_stand_under_the_expression_that_failed() -> None:
    with _spawn_one() as group, pytest.raises(ZeroDivisionError) as caught:
        group[0].call("divide_ten_by", 0, timeout=SHORT_TIMEOUT)
    spans = _caret_spans(_formatted(caught.value))
    divide = [(source, carets) for source, carets in spans if source.strip() == DIVIDE_LINE]
    assert len(divide) == 1, spans
    source, carets = divide[0]
    start = source.index("10 // x")
    assert carets.rstrip() == " " * start + "~~~^^~~"  # as Python prints it in the rank
    for source, carets in spans:  # no frame's carets stray outside its code
        code_start = len(source) - len(source.lstrip())
        caret_start = len(carets) - len(carets.lstrip())
        assert code_start <= caret_start, (source, carets)
        assert len(carets.rstrip()) <= len(source.rstrip()), (source, carets)


# -- stopping -----------------------------------------------------------------------------


@pytest.mark.timeout(DRIVER_TIMEOUT + 20)
def test_ranks_stopped_while_parked_exit_without_printing_a_traceback() -> None:
    environment = dict(os.environ, TORCHTROUPE_SPIN_US="0")
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPOSITORY), environment.get("PYTHONPATH")])
    )
    driver = subprocess.run(
        [sys.executable, "-m", "tests.actors.quiet_stop_driver"],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT,
        check=False,
    )
    assert driver.returncode == 0, driver.stderr
    assert f"stopped {len(ROUNDS)} groups" in driver.stdout
    assert "Traceback" not in driver.stderr, driver.stderr
    assert "Error" not in driver.stderr, driver.stderr
