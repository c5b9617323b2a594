"""Starting and stopping rank processes: birth and end, nothing about what a rank runs.

Runs in the caller's process.

Note [Start methods]
--------------------
``forkserver`` (the default) forks each rank from a server process that imported
torch (and the modules named in ``preload=``) once, so a rank is up in
milliseconds instead of re-importing torch for seconds. The server is shared by
every group of the process and ends with it. ``spawn`` starts a fresh interpreter
per rank. ``fork`` is refused once CUDA is initialised in the caller, because a
forked child cannot use the parent's CUDA context.

Note [Ranks do not re-run __main__]
-----------------------------------
Under ``forkserver`` and ``spawn``, multiprocessing re-imports the parent's main
script in every child, so that functions defined there can be unpickled by name.
Our ranks never need that: the actor class and its arguments travel cloudpickled,
by value. Re-running the script would be slow, and fatal for the common script
that calls ``spawn`` at top level without an ``if __name__ == "__main__"`` guard
(the child would try to spawn again). So the preparation data of processes named
as our ranks (and only those) leaves the main module out.

Note [A second Ctrl-C stops at once]
------------------------------------
The first Ctrl-C raises KeyboardInterrupt in the driver's code; leaving the ``with``
block (or ``shutdown()``) then stops the ranks gracefully, and :func:`stop` waits up to
``graceful_s`` for them. A second Ctrl-C raises KeyboardInterrupt again, inside that
wait: the user wants out now. :func:`stop` then SIGKILLs every rank and its process
group at once, reaps every one, and only then lets the KeyboardInterrupt go on. Further
Ctrl-Cs while it reaps are absorbed: nothing can refuse SIGKILL, so the reaping takes
milliseconds, while a rank left running would hang the interpreter's exit in
multiprocessing's atexit join of its children (ranks are not daemonic). Any other
exception escaping the wait is handled the same way.

The same hang is possible outside :func:`stop`: a Ctrl-C that interrupts a shutdown
before it reaches :func:`stop`, or a group's exit-time stop cut short. So every rank
launched here and not yet reaped is also SIGKILLed and reaped by a multiprocessing
exit finaliser, which runs just before multiprocessing joins the children at
interpreter exit (after the groups' own exit-time shutdowns, which are ``atexit``
callbacks registered later): by then a rank still running is one nobody will stop.
"""

from __future__ import annotations

import contextlib
import multiprocessing.spawn
import multiprocessing.util
import os
import signal
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess

import torch
import torch.multiprocessing

from ..transport.fdpass import FdChannel, socket_pair
from . import forkserver_exit

START_METHODS = ("forkserver", "spawn", "fork")
# See Note [The forkserver exits at once] in forkserver_exit.py.
_ALWAYS_PRELOADED = ("torch", forkserver_exit.__name__)
_KILL_WAIT_S = 5.0
RANK_PROCESS_PREFIX = "troupe:"
_preparation_data = multiprocessing.spawn.get_preparation_data


def _preparation_data_without_main(name: str) -> dict[str, object]:
    data: dict[str, object] = _preparation_data(name)
    if name.startswith(RANK_PROCESS_PREFIX):
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


multiprocessing.spawn.get_preparation_data = _preparation_data_without_main


def start_context(start_method: str, preload: Sequence[str] = ()) -> BaseContext:
    """The multiprocessing context that starts ranks.

    Args:
        start_method: ``forkserver``, ``spawn`` or ``fork``.
        preload: Modules the forkserver imports once (torch always is).

    Raises:
        ValueError: Unknown start method.
        RuntimeError: ``fork`` after CUDA was initialised.
    """
    if start_method not in START_METHODS:
        raise ValueError(f"start_method must be one of {START_METHODS}, not {start_method!r}")
    if start_method == "fork" and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        raise RuntimeError(
            "cannot start ranks with 'fork': CUDA is already initialised in this process, "
            "and a forked child cannot use it; use start_method='forkserver' (the default)"
        )
    context = torch.multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        context.set_forkserver_preload([*_ALWAYS_PRELOADED, *preload])
    return context


@dataclass(slots=True, weakref_slot=True)
class RankProcess:
    """One incarnation of one rank, as the caller sees it.

    Attributes:
        rank: The rank.
        process: The multiprocessing process (closed once reaped by :func:`stop`).
        death_pipe: Write end of the rank's death pipe; only this process holds it, and
            nothing is ever written to it: closing it, or this process's death, ends the
            rank and its process group.
        fd_channel: The caller's end of the rank's fd channel (shared-memory tensors).
        pid: The process id.
        sentinel: Becomes readable when the process ends.
        reaped_exitcode: The exit code, once :func:`stop` reaped the process.
    """

    rank: int
    process: BaseProcess
    death_pipe: Connection
    fd_channel: FdChannel
    pid: int
    sentinel: int
    reaped_exitcode: int | None = None
    reaped: bool = False

    @property
    def exitcode(self) -> int | None:
        """The exit code (negative: killed by that signal), or None while running."""
        if self.reaped:
            return self.reaped_exitcode
        return self.process.exitcode

    def end_descendants(self) -> None:
        """SIGKILLs the rank's process group: every process the rank started that is
        still in it, and the rank itself if it still runs.

        Runs in the process that launched the rank, on any thread. Safe at any time:
        it acts only while the rank's pid cannot have been reused, that is until the
        rank is reaped, and is a no-op afterwards (and so idempotent). See Note
        [Descendants end with their rank] in lifeline.py: each rank's keeper does the
        same by itself the moment the rank ends, so this is the synchronous path
        :func:`stop` takes before it reaps a rank, and a backstop.

        Under ``spawn`` and ``fork`` this process reaps the rank, so call it before
        anything reads :attr:`exitcode` of a rank that ended (reading it reaps). Under
        ``forkserver`` the server reaps the rank as soon as it ends, and this acts only
        while the rank has not ended or the server has not reaped it yet.
        """
        if self.reaped or not _pid_is_held(self):
            return
        # A rank that did not make itself a group leader (it died at boot) has no group:
        # ESRCH. EPERM: the pid now leads another user's group, which cannot be ours.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


def _pid_is_held(rank: RankProcess) -> bool:
    """True while ``rank``'s pid (its process group's id) cannot name another process:
    the rank is not reaped yet."""
    try:
        os.waitid(os.P_PID, rank.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        pass  # reaped by us already, or not our child (forkserver): see below
    else:
        return True  # our child, running or a zombie: the kernel keeps its pid
    # A forkserver's child: the server writes the exit code to the sentinel once it has
    # reaped the rank, so an unready sentinel means not reaped. The server could reap it
    # between this check and the caller's kill; the pid would then have to be handed to
    # a new group leader in those microseconds, and Linux hands out pids in a cycle.
    return not wait([rank.sentinel], 0)


def launch(
    context: BaseContext,
    rank: int,
    title: str,
    target: Callable[..., None],
    args: tuple[object, ...],
) -> RankProcess:
    """Starts one rank process running ``target(*args, death_pipe, fd_socket)``.

    The rank holds the read end of a pipe whose write end only this process holds:
    ``target`` must pass it to ``lifeline.bind`` first thing, so that the rank, and
    what it starts, end when this process ends (Note [A rank dies with its driver] in
    lifeline.py). ``title`` names the process (it must start with
    ``RANK_PROCESS_PREFIX``).
    """
    reader, writer = context.Pipe(duplex=False)
    caller_socket, rank_socket = socket_pair()
    process = context.Process(  # type: ignore[attr-defined]
        target=target,
        args=(*args, reader, rank_socket),
        name=title,
        daemon=False,
    )
    try:
        process.start()
    finally:
        reader.close()
        rank_socket.close()
    assert process.pid is not None  # set by start()
    channel = FdChannel(caller_socket)
    launched = RankProcess(rank, process, writer, channel, process.pid, process.sentinel)
    _track(launched)
    return launched


def stop(ranks: Sequence[RankProcess], *, graceful_s: float, term_s: float = _KILL_WAIT_S) -> None:
    """Ends ``ranks`` and what they started, and reaps them.

    Waits ``graceful_s`` for the ranks to exit (a STOP request was sent already, or they
    are dying), then sends SIGTERM and waits ``term_s`` more, then SIGKILL. Before
    reaping a rank it ends the rank's process group (see
    :meth:`RankProcess.end_descendants`). Ranks reaped already are skipped.

    Runs in the launching process, on any thread.

    Raises:
        KeyboardInterrupt: A Ctrl-C arrived while it waited: every rank was then
            SIGKILLed and reaped first. See Note [A second Ctrl-C stops at once].
    """
    ranks = [rank for rank in ranks if not rank.reaped]
    try:
        running = _wait_exited(ranks, time.monotonic() + graceful_s)
        for signal_number in (signal.SIGTERM, signal.SIGKILL):
            if not running:
                break
            for rank in running:
                _send_signal(rank.process, signal_number)
            running = _wait_exited(running, time.monotonic() + term_s)
    except BaseException:
        _kill_and_reap(ranks)
        raise
    for rank in ranks:
        _reap(rank)


def _has_ended(rank: RankProcess) -> bool:
    """True once the rank's sentinel fired: it exited (under ``forkserver``: and the
    server reaped it, so its pid must not be signalled any more)."""
    return bool(wait([rank.sentinel], 0))


def _send_signal(process: BaseProcess, signal_number: int) -> None:
    if signal_number == signal.SIGTERM:
        process.terminate()
    else:
        process.kill()


def _wait_exited(ranks: Sequence[RankProcess], deadline: float) -> list[RankProcess]:
    """Waits until every rank's sentinel fired or ``deadline`` passed; returns the ranks
    still running. Reaps none."""
    pending = {rank.sentinel: rank for rank in ranks}
    while pending:
        remaining = max(deadline - time.monotonic(), 0.0)
        for sentinel in wait(list(pending), timeout=remaining):
            if isinstance(sentinel, int):
                pending.pop(sentinel)
        if remaining == 0.0:
            break
    return list(pending.values())


def _reap(rank: RankProcess) -> None:
    """Ends ``rank``'s process group, reaps it and closes what we hold of it.

    Safe to run again after an interruption at any point.
    """
    if not rank.reaped:
        rank.end_descendants()
        rank.process.join()
        rank.reaped_exitcode = rank.process.exitcode
        rank.reaped = True
    _unreaped.pop(id(rank), None)
    rank.process.close()
    rank.death_pipe.close()


def _kill_and_reap(ranks: Sequence[RankProcess]) -> None:
    """SIGKILLs every rank with its process group, then reaps them all, absorbing
    KeyboardInterrupts until done. See Note [A second Ctrl-C stops at once]."""
    while True:
        try:
            for rank in ranks:  # all killed first: no rank's end waits behind another's
                if not rank.reaped:
                    rank.end_descendants()
                    if not _has_ended(rank):
                        rank.process.kill()  # in case it did not lead a group yet
            for rank in ranks:
                _reap(rank)
            return
        except KeyboardInterrupt:
            continue


# Every rank this process launched and has not reaped yet; see Note [A second Ctrl-C
# stops at once]. A forked child inherits the dict and the pid: it starts afresh.
_unreaped: weakref.WeakValueDictionary[int, RankProcess] = weakref.WeakValueDictionary()
_unreaped_pid: int | None = None


def _track(rank: RankProcess) -> None:
    global _unreaped_pid
    if _unreaped_pid != os.getpid():
        _unreaped.clear()
        _unreaped_pid = os.getpid()
        multiprocessing.util.Finalize(None, _end_unreaped_ranks, exitpriority=0)
    _unreaped[id(rank)] = rank


def _end_unreaped_ranks() -> None:
    """Runs at interpreter exit, just before multiprocessing joins the children."""
    if _unreaped_pid == os.getpid():
        _kill_and_reap([rank for rank in list(_unreaped.values()) if not rank.reaped])
