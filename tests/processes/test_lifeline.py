"""Tests for processes/lifeline.py: a rank ends with the process that launched it.

The driver whose death is tested is a separate program (a script run in a child
interpreter) that the test SIGKILLs; see Note [A rank dies with its driver].
"""

from __future__ import annotations

import multiprocessing.forkserver
import os
import signal
from pathlib import Path

import psutil
import pytest

import torchtroupe as tt
from tests.processes.actors_for_processes import Parent, kill_survivors
from tests.supervision.events_for_tests import EventRecorder
from tests.supervision.processes_for_tests import read_json_line, start_script, wait_until_gone
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT

# DESIGN.md: the driver's death ends every process it started within a second. The
# bound leaves room for a loaded machine; it is a hang guard, not a measurement.
DRIVER_DEATH_BOUND_S = 2.0

DRIVER = """
import ctypes
import json
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import sys

import torchtroupe as tt
from tests.processes.actors_for_processes import start_children


class Rank(tt.Actor):
    @tt.endpoint
    def pid(self) -> int:
        return os.getpid()

    @tt.endpoint
    def start_children(self) -> list[int]:
        return start_children()

    @tt.endpoint
    def hold_the_gil(self) -> None:
        print(json.dumps({"holding the gil": os.getpid()}), flush=True)
        ctypes.PyDLL(None).sleep(300)  # PyDLL: the GIL stays held during the C call


if __name__ == "__main__":
    state = sys.argv[1]
    group = tt.spawn(Rank, world_size=2)
    children = group[0].call("start_children", timeout=60)
    print(json.dumps({
        "ranks": group.pids,
        "children": children,
        "forkserver": multiprocessing.forkserver._forkserver._forkserver_pid,
        "resource tracker": multiprocessing.resource_tracker._resource_tracker._pid,
    }), flush=True)
    if state == "holding the gil":
        group[1].call_async("hold_the_gil")
    sys.stdin.readline()
"""


def _descendants(pid: int) -> list[int]:
    return [process.pid for process in psutil.Process(pid).children(recursive=True)]


@pytest.mark.parametrize("state", ["idle", "holding the gil", "stopped"])
def test_a_killed_driver_leaves_no_process_behind_whatever_state_a_rank_is_in(
    tmp_path: Path, state: str
) -> None:
    program = start_script(tmp_path, DRIVER.replace("sys.argv[1]", repr(state)))
    descendants: list[int] = []
    try:
        report = read_json_line(program, tmp_path)
        ranks, children = report["ranks"], report["children"]
        helpers = [report["forkserver"], report["resource tracker"]]
        assert isinstance(ranks, list) and isinstance(children, list)
        if state == "holding the gil":
            assert read_json_line(program, tmp_path) == {"holding the gil": ranks[1]}
        elif state == "stopped":
            os.kill(ranks[1], signal.SIGSTOP)
        descendants = _descendants(program.pid)
        assert {*ranks, *children, *helpers} <= set(descendants)

        program.kill()
        assert program.wait(LONG_TIMEOUT) == -signal.SIGKILL

        assert wait_until_gone(descendants, DRIVER_DEATH_BOUND_S) == []
    finally:
        if program.poll() is None:
            program.kill()
        kill_survivors(descendants)  # they hold the program's stdout open
        program.communicate(timeout=LONG_TIMEOUT)


def test_a_rank_does_not_hold_the_drivers_forkserver_lifeline() -> None:
    server = multiprocessing.forkserver._forkserver
    with tt.spawn(Parent, timeout=LONG_TIMEOUT) as group:
        alive_fd = server._forkserver_alive_fd  # type: ignore[attr-defined]
        alive_pipe = os.fstat(alive_fd).st_ino
        assert alive_pipe not in group[0].call("pipe_inodes", timeout=SHORT_TIMEOUT)


@pytest.mark.parametrize(
    ("start_method", "expected"), [("forkserver", signal.SIGKILL), ("spawn", 0)]
)
def test_a_rank_asks_for_a_parent_death_signal_only_from_a_forkserver(
    start_method: str, expected: int
) -> None:
    # Under spawn the parent "thread" is whichever thread of the driver started the rank
    # (a restart thread, say): the signal would kill the rank when that thread ends.
    with tt.spawn(Parent, start_method=start_method, timeout=LONG_TIMEOUT) as group:
        assert group[0].call("parent_death_signal", timeout=SHORT_TIMEOUT) == expected


# -- a rank's children end with it: Note [Descendants end with their rank] -------------


def test_a_ranks_children_end_when_its_group_shuts_down() -> None:
    group = tt.spawn(Parent, timeout=LONG_TIMEOUT)
    children: list[int] = []
    try:
        children = group[0].call("start_children", timeout=SHORT_TIMEOUT)
    finally:
        group.shutdown(timeout=SHORT_TIMEOUT)
        try:
            assert wait_until_gone(children, SHORT_TIMEOUT) == []
        finally:
            kill_survivors(children)


def test_a_ranks_children_end_when_the_rank_exits_on_its_own() -> None:
    children: list[int] = []
    try:
        with tt.spawn(Parent, timeout=LONG_TIMEOUT) as group:
            children = group[0].call("start_children", timeout=SHORT_TIMEOUT)
            with pytest.raises(tt.ActorDiedError):
                group[0].call("exit_abnormally", 3, timeout=SHORT_TIMEOUT)
            assert wait_until_gone(children, SHORT_TIMEOUT) == []
    finally:
        kill_survivors(children)


def test_a_ranks_children_end_when_the_rank_is_killed_and_restarted() -> None:
    recorder = EventRecorder()
    policy = tt.RestartPolicy(max_restarts=1)
    children: list[int] = []
    try:
        with tt.spawn(Parent, restart=policy, on_event=recorder, timeout=LONG_TIMEOUT) as group:
            children = group[0].call("start_children", timeout=SHORT_TIMEOUT)
            killed = group[0].pid
            assert killed is not None
            os.kill(killed, signal.SIGKILL)
            assert wait_until_gone(children, SHORT_TIMEOUT) == []
            recorder.wait_for("restarted", rank=0)
            assert group[0].call("parent_death_signal", timeout=SHORT_TIMEOUT) == signal.SIGKILL
            assert group[0].pid != killed
    finally:
        kill_survivors(children)
