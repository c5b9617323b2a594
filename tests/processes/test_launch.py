"""Tests for processes/launch.py: ending a rank's process group, and stop() under Ctrl-C.

They drive ``launch`` and ``stop`` directly, with a launch target that never stops on its
own (``stubborn_rank``), except the last, which runs a whole program through the public
API and presses Ctrl-C twice.
"""

from __future__ import annotations

import _thread
import importlib
import multiprocessing.process
import os
import signal
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.processes.actors_for_processes import kill_survivors, stubborn_rank
from tests.supervision.processes_for_tests import read_json_line, start_script, wait_until_gone
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT
from torchtroupe.processes.launch import (
    RANK_PROCESS_PREFIX,
    RankProcess,
    launch,
    start_context,
    stop,
)

launch_module = importlib.import_module("torchtroupe.processes.launch")  # not launch()


class StubbornRanks:
    """Launches stubborn ranks and remembers every pid they report, for the cleanup."""

    def __init__(self) -> None:
        self.context = start_context("forkserver")
        self.ranks: list[RankProcess] = []
        self.children: dict[int, list[int]] = {}

    def launch(self) -> RankProcess:
        reader, writer = self.context.Pipe(duplex=False)
        title = f"{RANK_PROCESS_PREFIX}stubborn:{len(self.ranks)}"
        rank = launch(self.context, len(self.ranks), title, stubborn_rank, (writer,))
        self.ranks.append(rank)
        writer.close()
        self.children[rank.pid] = self._report(reader, rank.pid)
        return rank

    @staticmethod
    def _report(reader: Connection, pid: int) -> list[int]:
        with reader:
            reported_pid, *children = reader.recv()
        assert reported_pid == pid
        return [int(child) for child in children]

    def clean_up(self) -> None:
        kill_survivors([pid for rank in self.ranks for pid in (rank.pid, *self.children[rank.pid])])
        stop(self.ranks, graceful_s=0.0, term_s=LONG_TIMEOUT)
        for rank in self.ranks:
            rank.fd_channel.close()


@pytest.fixture
def stubborn() -> Iterator[StubbornRanks]:
    ranks = StubbornRanks()
    try:
        yield ranks
    finally:
        ranks.clean_up()


def _keeper_of(rank: RankProcess, children: list[int]) -> int:
    (keeper,) = [c.pid for c in psutil.Process(rank.pid).children() if c.pid not in children]
    return int(keeper)


def test_end_descendants_kills_a_ranks_process_group_even_without_its_keeper(
    stubborn: StubbornRanks, monkeypatch: pytest.MonkeyPatch
) -> None:
    rank = stubborn.launch()
    children = stubborn.children[rank.pid]
    keeper = _keeper_of(rank, children)
    os.kill(keeper, signal.SIGKILL)
    assert wait_until_gone([keeper], SHORT_TIMEOUT) == []

    rank.end_descendants()

    assert wait_until_gone([rank.pid, *children], SHORT_TIMEOUT) == []
    stop([rank], graceful_s=0.0, term_s=SHORT_TIMEOUT)
    assert rank.exitcode == -signal.SIGKILL
    killed: list[int] = []
    monkeypatch.setattr(os, "killpg", lambda pgid, signum: killed.append(pgid))
    rank.end_descendants()  # reaped: its pid may name another process by now
    assert killed == []


def _tell_when_stop_waits(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    waiting = threading.Event()
    real_wait = launch_module.wait

    def wait_and_tell(objects: list[Any], timeout: float | None = None) -> list[Any]:
        waiting.set()
        return list(real_wait(objects, timeout))

    monkeypatch.setattr(launch_module, "wait", wait_and_tell)
    return waiting


def test_ctrl_c_while_stop_waits_kills_and_reaps_every_rank_then_raises(
    stubborn: StubbornRanks, monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck, trigger = stubborn.launch(), stubborn.launch()
    waiting = _tell_when_stop_waits(monkeypatch)

    def press_ctrl_c_again() -> None:
        waiting.wait(LONG_TIMEOUT)
        _thread.interrupt_main()  # runs once the main thread is back from its wait...
        os.kill(trigger.pid, signal.SIGKILL)  # ...which this ends at once

    presser = threading.Thread(target=press_ctrl_c_again)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            stop([stuck, trigger], graceful_s=LONG_TIMEOUT, term_s=LONG_TIMEOUT)
    finally:
        presser.join()

    assert stuck.reaped and trigger.reaped
    assert stuck.exitcode == -signal.SIGKILL  # it ignores SIGTERM: it was killed at once
    assert wait_until_gone(stubborn.children[stuck.pid], SHORT_TIMEOUT) == []


def test_stop_reaps_every_rank_even_when_ctrl_c_is_pressed_again_while_it_reaps(
    stubborn: StubbornRanks, monkeypatch: pytest.MonkeyPatch
) -> None:
    ranks = [stubborn.launch(), stubborn.launch()]
    real_wait, real_join = launch_module.wait, multiprocessing.process.BaseProcess.join
    waits: list[float | None] = []
    interrupted_joins: list[multiprocessing.process.BaseProcess] = []

    def wait_interrupted_first(objects: list[Any], timeout: float | None = None) -> list[Any]:
        waits.append(timeout)
        if len(waits) == 1:
            raise KeyboardInterrupt  # Ctrl-C while stop waits for a graceful exit
        return list(real_wait(objects, timeout))

    def join_interrupted_first(
        process: multiprocessing.process.BaseProcess, timeout: float | None = None
    ) -> None:
        if not interrupted_joins:
            interrupted_joins.append(process)
            raise KeyboardInterrupt  # and again while it reaps
        real_join(process, timeout)

    monkeypatch.setattr(launch_module, "wait", wait_interrupted_first)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "join", join_interrupted_first)

    with pytest.raises(KeyboardInterrupt):
        stop(ranks, graceful_s=LONG_TIMEOUT, term_s=LONG_TIMEOUT)

    assert waits[0] is not None and waits[0] > SHORT_TIMEOUT
    assert len(interrupted_joins) == 1
    assert all(rank.reaped for rank in ranks)
    assert [rank.exitcode for rank in ranks] == [-signal.SIGKILL] * 2


# -- a whole program: the first Ctrl-C stops gracefully, the second at once -------------

PROGRAM = """
import json
import os
import signal
import sys
import time

import torchtroupe as tt

launch = sys.modules["torchtroupe.processes.launch"]  # the package re-exports launch()


class Busy(tt.Actor):
    @tt.endpoint
    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)  # busy: the STOP request waits behind this call


def tell_when_stop_waits() -> None:
    # A Ctrl-C writes to the wakeup fd, which the graceful wait watches too: so the
    # signal ends that wait even if it arrives just before the wait blocks.
    woken, wake = os.pipe()
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake)
    real_wait = launch.wait

    def wait(objects, timeout=None):
        if timeout is None or timeout < 30:
            return real_wait(objects, timeout)
        print(json.dumps({"stop waits": round(timeout)}), flush=True)
        return [ready for ready in real_wait([*objects, woken], timeout) if ready != woken]

    launch.wait = wait


if __name__ == "__main__":
    tell_when_stop_waits()
    group = tt.spawn(Busy, world_size=2, shutdown_s=60)
    group.broadcast_async("sleep", 300)
    with group:
        print(json.dumps({"ranks": group.pids}), flush=True)
        sys.stdin.readline()
"""


def test_a_second_ctrl_c_during_a_graceful_shutdown_ends_the_program_at_once(
    tmp_path: Path,
) -> None:
    program = start_script(tmp_path, PROGRAM)
    descendants: list[int] = []
    try:
        ranks = read_json_line(program, tmp_path)["ranks"]
        assert isinstance(ranks, list)
        descendants = [p.pid for p in psutil.Process(program.pid).children(recursive=True)]

        program.send_signal(signal.SIGINT)  # the first Ctrl-C: shutdown waits up to 60 s
        assert read_json_line(program, tmp_path) == {"stop waits": 60}
        program.send_signal(signal.SIGINT)  # the second

        assert program.wait(SHORT_TIMEOUT) == -signal.SIGINT  # died of its KeyboardInterrupt
        assert wait_until_gone(descendants, SHORT_TIMEOUT) == []
    finally:
        if program.poll() is None:
            program.kill()
        kill_survivors(descendants)
        program.communicate(timeout=LONG_TIMEOUT)


FORGETFUL_PROGRAM = """
import json

from tests.processes.actors_for_processes import stubborn_rank
from torchtroupe.processes.launch import RANK_PROCESS_PREFIX, launch, start_context

if __name__ == "__main__":
    context = start_context("forkserver")
    reader, writer = context.Pipe(duplex=False)
    rank = launch(context, 0, RANK_PROCESS_PREFIX + "forgotten:0", stubborn_rank, (writer,))
    writer.close()
    print(json.dumps({"pids": reader.recv()}), flush=True)
    # ends without stopping the rank, which would never end on its own
"""


def test_a_program_that_never_stopped_its_rank_still_exits_and_ends_it(tmp_path: Path) -> None:
    program = start_script(tmp_path, FORGETFUL_PROGRAM)
    pids: list[int] = []
    try:
        report = read_json_line(program, tmp_path)["pids"]
        assert isinstance(report, list)
        pids = report

        assert program.wait(SHORT_TIMEOUT) == 0  # not hung joining the rank at exit
        assert wait_until_gone(pids, SHORT_TIMEOUT) == []
    finally:
        if program.poll() is None:
            program.kill()
        kill_survivors(pids)
        program.communicate(timeout=LONG_TIMEOUT)
