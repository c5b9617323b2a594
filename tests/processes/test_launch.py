"""Tests for processes/launch.py: ending a rank's process group.

They drive ``launch`` and ``stop`` directly, with a launch target that never stops on its
own (``stubborn_rank``).
"""

from __future__ import annotations

import importlib
import os
import signal
from collections.abc import Iterator
from multiprocessing.connection import Connection

import psutil
import pytest

from tests.processes.actors_for_processes import kill_survivors, stubborn_rank
from tests.supervision.processes_for_tests import wait_until_gone
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
