"""Actors and helpers used by the tests of ``torchtroupe/processes``.

They live at module level in an importable module so that every rank can load them.
"""

from __future__ import annotations

import contextlib
import os
import signal

import torchtroupe as tt


def kill_survivors(pids: list[int]) -> None:
    """SIGKILLs whatever of ``pids`` still runs: the cleanup after a failed test, so that
    the failure is reported once, not as a hang or a process left for ever."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def pipe_inodes() -> set[int]:
    """The inodes of every pipe this process holds an fd of."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("pipe:["):
            inodes.add(int(target[len("pipe:[") : -1]))
    return inodes


class Parent(tt.Actor):
    """A rank that reports on its ties to the driver."""

    @tt.endpoint
    def pipe_inodes(self) -> set[int]:
        return pipe_inodes()
