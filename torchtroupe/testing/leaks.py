"""Leak checks for tests: child processes, threads, file descriptors, /dev/shm entries.

Take a snapshot before the code under test runs and ask what is new afterwards::

    before = take_snapshot()
    run_the_code()
    assert_no_leaks(before)

Everything here runs in the calling process and thread, and only on Linux: it reads
``/proc/self/fd`` and ``/dev/shm``.

Whatever exists when the snapshot is taken is the baseline and is never reported. Helpers
that rightly live for the whole session (a multiprocessing forkserver, the resource
tracker) must therefore be started before the baseline is taken; the test suite does that
in a session fixture rather than excluding processes by name.

Note [Waiting for exits without reaping]
----------------------------------------
A process or thread that the code under test has just stopped may still be on its way
out, so ``find_leaks`` waits for it (up to ``settle_timeout``) before calling it a leak.
Child processes are waited for through a pidfd (``os.pidfd_open``), which becomes
readable when the process exits but does not reap it. ``psutil.wait_procs`` would reap
children with ``waitpid`` and so steal the exit status from their owner: a
``multiprocessing.Process`` whose status was taken that way reports itself alive for ever.
A child that exited but that nobody reaped (a zombie) is still a leak; its owner gets until
the deadline to reap it.
"""

from __future__ import annotations

import fcntl
import os
import selectors
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

__all__ = ["LeakSnapshot", "assert_no_leaks", "find_leaks", "take_snapshot"]

_PROC_FD_DIR = "/proc/self/fd"
_SHM_DIR = "/dev/shm"
# Backoff for rechecking state that offers nothing to wait on (fds, /dev/shm, reaping).
_FIRST_RECHECK_S = 0.001
_LONGEST_RECHECK_S = 0.1


@dataclass(frozen=True, slots=True)
class LeakSnapshot:
    """What the current process holds at one moment.

    Attributes:
        child_pids: Pids of every descendant process (children, grandchildren, ...).
        threads: ``(ident, name)`` of every live Python thread.
        fds: Open file descriptor numbers.
        shm_entries: Names in ``/dev/shm`` (empty where there is no ``/dev/shm``).
    """

    child_pids: frozenset[int]
    threads: frozenset[tuple[int, str]]
    fds: frozenset[int]
    shm_entries: frozenset[str]

    @property
    def thread_idents(self) -> frozenset[int]:
        """The idents of the threads in :attr:`threads`."""
        return frozenset(ident for ident, _ in self.threads)


def take_snapshot() -> LeakSnapshot:
    """Record the current process's child processes, threads, fds and /dev/shm entries.

    Runs in the calling thread; the file descriptor it opens to list ``/proc/self/fd`` is
    closed again and left out of the result.

    Returns:
        The snapshot, to pass to :func:`find_leaks` or :func:`assert_no_leaks` later.
    """
    return LeakSnapshot(
        child_pids=frozenset(_child_pids()),
        threads=frozenset(_live_threads()),
        fds=frozenset(_open_fds()),
        shm_entries=frozenset(_shm_entries()),
    )


def find_leaks(before: LeakSnapshot, *, settle_timeout: float = 5.0) -> list[str]:
    """List what exists now but did not exist in ``before``.

    Processes and threads that are still exiting are waited for, and fds and /dev/shm
    entries are rechecked with a short backoff, all within one shared ``settle_timeout``;
    only what is still there afterwards is reported. A clean result returns at once. See
    Note [Waiting for exits without reaping].

    Args:
        before: A snapshot taken by :func:`take_snapshot` in this process.
        settle_timeout: Seconds to give leftovers to go away; 0 checks once without
            waiting.

    Returns:
        One human-readable line per leak (new child process with its pid and command
        line, new thread, new fd with what it points to, new /dev/shm entry); empty when
        nothing leaked.
    """
    deadline = time.monotonic() + max(settle_timeout, 0.0)
    leaks: list[str] = []
    leaks += _settle_processes(before.child_pids, deadline)
    leaks += _settle_threads(before.thread_idents, deadline)
    # After the process wait, which opened (and closed) pidfds of its own.
    leaks += _settle(lambda: _fd_leaks(before.fds), deadline)
    leaks += _settle(lambda: _shm_leaks(before.shm_entries), deadline)
    return leaks


def assert_no_leaks(before: LeakSnapshot, *, settle_timeout: float = 5.0) -> None:
    """Fail when anything leaked since ``before``.

    Args:
        before: A snapshot taken by :func:`take_snapshot` in this process.
        settle_timeout: As for :func:`find_leaks`.

    Raises:
        AssertionError: Something leaked; the message lists every leak, one per line.
    """
    leaks = find_leaks(before, settle_timeout=settle_timeout)
    if leaks:
        lines = "\n".join(f"  - {leak}" for leak in leaks)
        raise AssertionError(
            f"{len(leaks)} resource(s) leaked; stop, join, close or unlink them before "
            f"returning:\n{lines}"
        )


# --- collecting -------------------------------------------------------------------------


def _child_pids() -> list[int]:
    return [int(child.pid) for child in psutil.Process().children(recursive=True)]


def _live_threads() -> list[tuple[int, str]]:
    return [(t.ident, t.name) for t in threading.enumerate() if t.ident is not None]


def _open_fds() -> list[int]:
    # The listing includes the fd that reads the directory (os.listdir of an fd even
    # dups it into a second one). It is closed by the time listdir returns, so keeping
    # only the fds that are still open leaves it out.
    return [fd for fd in map(int, os.listdir(_PROC_FD_DIR)) if _is_open(fd)]


def _is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


def _shm_entries() -> list[str]:
    try:
        return os.listdir(_SHM_DIR)
    except FileNotFoundError:
        return []


# --- settling ---------------------------------------------------------------------------


def _remaining(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


def _settle(check: Callable[[], list[str]], deadline: float) -> list[str]:
    """Re-run ``check`` with a growing pause until it finds nothing or the deadline passes.

    Used only where there is nothing to wait on; this is a bounded grace period for
    cleanup, not a way to synchronise with the code under test.
    """
    pause = _FIRST_RECHECK_S
    while True:
        found = check()
        remaining = _remaining(deadline)
        if not found or remaining == 0.0:
            return found
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, _LONGEST_RECHECK_S)


def _settle_processes(baseline: frozenset[int], deadline: float) -> list[str]:
    new = [pid for pid in _child_pids() if pid not in baseline]
    if not new:
        return []
    _wait_for_exit(new, deadline)
    return _settle(lambda: _process_leaks(baseline), deadline)


def _wait_for_exit(pids: Iterable[int], deadline: float) -> None:
    """Block until every process in ``pids`` has exited or the deadline passes; reap none."""
    with selectors.DefaultSelector() as selector:
        try:
            for pid in pids:
                try:
                    pidfd = os.pidfd_open(pid)
                except ProcessLookupError:
                    continue  # Already gone.
                selector.register(pidfd, selectors.EVENT_READ)
            while selector.get_map() and (remaining := _remaining(deadline)) > 0.0:
                for key, _ in selector.select(remaining):
                    selector.unregister(key.fd)
                    os.close(key.fd)
        finally:
            for key in list(selector.get_map().values()):
                selector.unregister(key.fd)
                os.close(key.fd)


def _process_leaks(baseline: frozenset[int]) -> list[str]:
    leaks = []
    for child in psutil.Process().children(recursive=True):
        if child.pid in baseline:
            continue
        try:
            status = child.status()
            cmdline = " ".join(child.cmdline()) or child.name()
        except psutil.NoSuchProcess:
            continue
        except psutil.Error:
            status, cmdline = "unknown", "<unreadable>"
        if status == psutil.STATUS_ZOMBIE:
            leaks.append(f"child process pid {child.pid} exited but was never reaped (zombie)")
        else:
            leaks.append(f"child process pid {child.pid} still running: {cmdline}")
    return leaks


def _settle_threads(baseline: frozenset[int], deadline: float) -> list[str]:
    current = threading.current_thread()
    new = [t for t in threading.enumerate() if t.ident not in baseline and t is not current]
    for thread in new:
        # A thread started outside `threading` cannot be joined; it is just reported.
        if not isinstance(thread, threading._DummyThread):
            thread.join(_remaining(deadline))
    return [
        f"thread {t.name!r} (ident {t.ident}, daemon={t.daemon}) still running"
        for t in new
        if t.is_alive()
    ]


def _fd_leaks(baseline: frozenset[int]) -> list[str]:
    leaks = []
    for fd in sorted(set(_open_fds()) - baseline):
        try:
            target = os.readlink(f"{_PROC_FD_DIR}/{fd}")
        except OSError:
            continue  # Closed since it was listed.
        leaks.append(f"file descriptor {fd} still open: {target}")
    return leaks


def _shm_leaks(baseline: frozenset[str]) -> list[str]:
    return [
        f"/dev/shm entry still present: {_SHM_DIR}/{name}"
        for name in sorted(set(_shm_entries()) - baseline)
    ]
