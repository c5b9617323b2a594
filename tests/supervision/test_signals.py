"""Tests for processes/signals.py and the tt.fatal path of actors/rank_main.py.

SIGTERM and SIGKILL are sent to a separate supervising program (a script run in a
child interpreter), never to the test process itself.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

import torchtroupe as tt
from tests.supervision.actors_for_supervision import Counter
from tests.supervision.events_for_tests import EventRecorder
from tests.supervision.processes_for_tests import read_json_line, start_script, wait_until_gone
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT
from torchtroupe.actors.rank_main import FATAL_EXIT_CODE

PROGRAM = """
import json
import multiprocessing.forkserver
import os
import signal
import sys

import torchtroupe as tt


class Idle(tt.Actor):
    @tt.endpoint
    def pid(self) -> int:
        return os.getpid()


def user_handler(signum, frame):
    print(json.dumps({"user_handler": signum}), flush=True)


if __name__ == "__main__":
    if "--user-handler" in sys.argv:
        signal.signal(signal.SIGTERM, user_handler)
    group = tt.spawn(Idle, world_size=2, shutdown_s=5.0)
    assert group.broadcast("pid", timeout=60) == group.pids
    server = multiprocessing.forkserver._forkserver._forkserver_pid
    print(json.dumps({"ranks": group.pids, "forkserver": server}), flush=True)
    sys.stdin.readline()
    print(json.dumps({"stdin": "closed"}), flush=True)
"""


def test_fatal_in_an_endpoint_ends_the_rank_with_its_reason() -> None:
    with tt.spawn(Counter, args=("fatal",), timeout=LONG_TIMEOUT) as group:
        pid = group[0].pid
        with pytest.raises(tt.ActorDiedError) as died:
            group[0].call("fail_fatally", "the device is gone", timeout=SHORT_TIMEOUT)
        assert died.value.reason == "the device is gone"
        assert (died.value.rank, died.value.pid) == (0, pid)
        assert died.value.exitcode == FATAL_EXIT_CODE == 70
        assert "the device is gone" in str(died.value)
        with pytest.raises(tt.ActorDiedError):
            group[0].call("identity", timeout=SHORT_TIMEOUT)


def test_fatal_rank_is_restarted_under_a_restart_policy() -> None:
    recorder = EventRecorder()
    policy = tt.RestartPolicy(max_restarts=1)
    with tt.spawn(
        Counter, args=("fatal",), restart=policy, on_event=recorder, timeout=LONG_TIMEOUT
    ) as group:
        old = group[0].pid
        with pytest.raises(tt.ActorDiedError) as died:
            group[0].call("fail_fatally", "sticky", timeout=SHORT_TIMEOUT)
        assert died.value.reason == "sticky"
        (exited,) = recorder.wait_for("exited", rank=0)
        assert exited.exitcode == FATAL_EXIT_CODE
        recorder.wait_for("restarted", rank=0)
        assert group[0].call("identity", timeout=SHORT_TIMEOUT) == (0, group[0].pid, "fatal")
        assert group[0].pid != old


def test_fatal_outside_a_rank_is_refused() -> None:
    with pytest.raises(RuntimeError, match="inside an actor"):
        tt.fatal("not in a rank")


def test_sigterm_stops_the_ranks_and_ends_the_program(tmp_path: Path) -> None:
    program = start_script(tmp_path, PROGRAM)
    try:
        ranks = read_json_line(program, tmp_path)["ranks"]
        assert isinstance(ranks, list) and all(psutil.pid_exists(pid) for pid in ranks)

        program.send_signal(signal.SIGTERM)

        assert program.wait(LONG_TIMEOUT) == -signal.SIGTERM
        assert wait_until_gone(ranks, SHORT_TIMEOUT) == []
    finally:
        program.kill()
        program.communicate(timeout=LONG_TIMEOUT)


def test_sigterm_runs_the_handler_the_user_installed_after_stopping_the_ranks(
    tmp_path: Path,
) -> None:
    program = start_script(tmp_path, PROGRAM.replace("sys.argv", "['--user-handler']"))
    try:
        ranks = read_json_line(program, tmp_path)["ranks"]
        assert isinstance(ranks, list)

        program.send_signal(signal.SIGTERM)

        assert read_json_line(program, tmp_path) == {"user_handler": signal.SIGTERM}
        assert wait_until_gone(ranks, SHORT_TIMEOUT) == []
        # The user's handler did not exit, so the program goes on until stdin closes.
        assert program.poll() is None
        output, _ = program.communicate("\n", timeout=LONG_TIMEOUT)
        assert output.strip() == '{"stdin": "closed"}'
        assert program.returncode == 0
    finally:
        if program.poll() is None:
            program.kill()
        program.communicate(timeout=LONG_TIMEOUT)


def test_a_supervising_program_killed_with_sigkill_leaves_no_process_behind(
    tmp_path: Path,
) -> None:
    shm_before = set(os.listdir("/dev/shm"))
    program = start_script(tmp_path, PROGRAM)
    try:
        report = read_json_line(program, tmp_path)
        ranks, server = report["ranks"], report["forkserver"]
        assert isinstance(ranks, list) and isinstance(server, int)
        descendants = [p.pid for p in psutil.Process(program.pid).children(recursive=True)]
        assert server in descendants and set(ranks) <= set(descendants)

        program.kill()
        assert program.wait(LONG_TIMEOUT) == -signal.SIGKILL

        # Ranks, the forkserver and the resource tracker all notice their parent died.
        assert wait_until_gone(descendants, SHORT_TIMEOUT) == []
    finally:
        if program.poll() is None:
            program.kill()
        program.communicate(timeout=LONG_TIMEOUT)
    assert set(os.listdir("/dev/shm")) - shm_before == set()
