"""Ctrl-C in a driver with a long call in flight (DESIGN.md, supervision): the first
stops gracefully within ``shutdown_s`` and says on stderr what it waits for; a second
kills the ranks at once and the program ends, leaving nothing running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.supervision.processes_for_tests import wait_until_gone
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT

_REPO_ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
import json, os, time
import torchtroupe as tt

class Slow(tt.Actor):
    @tt.endpoint
    def work(self, seconds):
        print(json.dumps({"working": os.getpid()}), flush=True)
        time.sleep(seconds)  # the rank's long work, not synchronisation
        return seconds

with tt.spawn(Slow, world_size=1, shutdown_s=SHUTDOWN_S) as group:
    print(json.dumps({"ranks": group.pids}), flush=True)
    group[0].call("work", 600.0)
"""


class Driver:
    """A driver program with one rank busy in a 600 s call."""

    def __init__(self, tmp_path: Path, shutdown_s: float) -> None:
        script = tmp_path / "driver.py"
        script.write_text(PROGRAM.replace("SHUTDOWN_S", repr(shutdown_s)))
        self.process = subprocess.Popen(
            [sys.executable, str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(_REPO_ROOT)),
            cwd=tmp_path,
        )
        assert self.process.stdout is not None
        self.ranks: list[int] = json.loads(self.process.stdout.readline())["ranks"]
        working = json.loads(self.process.stdout.readline())["working"]
        assert working == self.ranks[0]  # the call is running in the rank

    def stderr_until(self, marker: str) -> str:
        """Reads stderr lines until one holds ``marker``; returns all read."""
        assert self.process.stderr is not None
        seen = ""
        while marker not in seen:
            line = self.process.stderr.readline()
            if not line:
                break
            seen += line
        return seen

    def end(self) -> None:
        self.process.kill()
        self.process.communicate(timeout=LONG_TIMEOUT)


@pytest.fixture
def driver_factory(tmp_path: Path) -> Iterator[list[Driver]]:
    drivers: list[Driver] = []
    yield drivers
    for driver in drivers:
        driver.end()


def test_a_first_ctrl_c_says_what_it_waits_for_and_stops_within_shutdown_s(
    tmp_path: Path, driver_factory: list[Driver]
) -> None:
    driver = Driver(tmp_path, shutdown_s=1.0)
    driver_factory.append(driver)
    driver.process.send_signal(signal.SIGINT)
    said = driver.stderr_until("Ctrl-C again")
    assert "stopping group" in said
    assert f"rank 0 (pid {driver.ranks[0]})" in said
    assert "'work'" in said
    driver.process.wait(LONG_TIMEOUT)
    assert "KeyboardInterrupt" in driver.stderr_until("KeyboardInterrupt")
    assert wait_until_gone(driver.ranks, SHORT_TIMEOUT) == []


def test_a_second_ctrl_c_kills_the_ranks_at_once_and_the_program_ends(
    tmp_path: Path, driver_factory: list[Driver]
) -> None:
    driver = Driver(tmp_path, shutdown_s=LONG_TIMEOUT * 5)
    driver_factory.append(driver)
    driver.process.send_signal(signal.SIGINT)
    assert "Ctrl-C again" in driver.stderr_until("Ctrl-C again")
    driver.process.send_signal(signal.SIGINT)
    # Far sooner than the graceful window (300 s): a hang here is the bug.
    driver.process.wait(SHORT_TIMEOUT)
    assert wait_until_gone(driver.ranks, SHORT_TIMEOUT) == []
