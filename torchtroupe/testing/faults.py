"""Fault injection for tests of code built on torchtroupe.

Runs in the caller (the test). Each injector acts on one rank of a group and is
deterministic: the fault has happened (or the rank is hung) when it returns.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from typing import Any

from ..actors.group import ActorGroup


def _pid(group: ActorGroup, rank: int) -> int:
    pid = group[rank].pid
    if pid is None:
        raise RuntimeError(f"rank {rank} of group {group.name!r} has no process right now")
    return pid


def kill_rank(group: ActorGroup, rank: int, signal_number: int = signal.SIGKILL) -> int:
    """Sends ``signal_number`` (SIGKILL by default) to rank ``rank``'s process.

    Returns:
        The pid that was signalled.
    """
    pid = _pid(group, rank)
    os.kill(pid, signal_number)
    return pid


def segfault_rank(group: ActorGroup, rank: int) -> int:
    """Kills rank ``rank`` with SIGSEGV, as a crash in C code would. Returns the pid."""
    return kill_rank(group, rank, signal.SIGSEGV)


def _exit_now(actor: Any, code: int) -> None:
    os._exit(code)


def exit_rank(group: ActorGroup, rank: int, code: int = 3) -> Future[Any]:
    """Makes rank ``rank`` call ``os._exit(code)`` from inside an endpoint call.

    Returns:
        The call's future; it fails with ActorDiedError (exit code ``code``).
    """
    return group[rank].run_async(_exit_now, code)


@contextmanager
def hung_rank(group: ActorGroup, rank: int) -> Iterator[int]:
    """Freezes rank ``rank`` (SIGSTOP) for the ``with`` block, then resumes it.

    A stopped process is hung as if stuck in C code: it is alive, holds its
    resources, and answers nothing. Yields its pid.
    """
    pid = kill_rank(group, rank, signal.SIGSTOP)
    try:
        yield pid
    finally:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
