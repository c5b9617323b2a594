"""Actors, launch targets and helpers used by the tests of ``torchtroupe/processes``.

They live at module level in an importable module so that every rank can load them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
from multiprocessing.connection import Connection
from socket import socket

import torchtroupe as tt

_PR_GET_PDEATHSIG = 2


def start_children() -> list[int]:
    """Starts the two kinds of children a rank may have; returns their pids.

    A ``subprocess.Popen`` of ``sleep 300`` and an ``os.fork`` of this process that
    blocks until it is killed. Neither is ever waited for: they must end with the rank.
    """
    popen = subprocess.Popen(["sleep", "300"])
    pid = os.fork()
    if pid == 0:
        try:
            while True:
                signal.pause()
        finally:
            os._exit(0)
    return [popen.pid, pid]


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
    """A rank that starts children of its own, and reports on its ties."""

    @tt.endpoint
    def start_children(self) -> list[int]:
        return start_children()

    @tt.endpoint
    def pipe_inodes(self) -> set[int]:
        return pipe_inodes()

    @tt.endpoint
    def parent_death_signal(self) -> int:
        """What ``PR_GET_PDEATHSIG`` says: the signal this rank gets when the thread that
        forked it ends (0: none)."""
        value = ctypes.c_int(-1)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_GET_PDEATHSIG, ctypes.byref(value), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_GET_PDEATHSIG) failed")
        return value.value

    @tt.endpoint
    def exit_abnormally(self, code: int) -> None:
        os._exit(code)


def stubborn_rank(report: Connection, death_pipe: Connection, fd_socket: socket) -> None:
    """A launch target that never stops on its own, not even on SIGTERM.

    Reports ``[pid, child pids...]`` on ``report``, then blocks until it is killed.
    """
    from torchtroupe.processes import lifeline

    lifeline.bind(death_pipe, exit_code=70)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    report.send([os.getpid(), *start_children()])
    report.close()
    fd_socket.close()
    threading.Event().wait()
