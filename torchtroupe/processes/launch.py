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
"""

from __future__ import annotations

import multiprocessing.spawn
import signal
import time
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


@dataclass(slots=True)
class RankProcess:
    """One incarnation of one rank, as the caller sees it.

    Attributes:
        rank: The rank.
        process: The multiprocessing process (closed once reaped by :func:`stop`).
        death_pipe: Write end of the rank's death pipe; only this process holds it.
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


def launch(
    context: BaseContext,
    rank: int,
    title: str,
    target: Callable[..., None],
    args: tuple[object, ...],
) -> RankProcess:
    """Starts one rank process running ``target(*args, death_pipe, fd_socket)``.

    The rank holds the read end of a pipe whose write end only this process holds:
    ``target`` must pass it to ``lifeline.bind`` first thing, so that the rank ends
    when this process ends (Note [A rank dies with its driver] in lifeline.py).
    ``title`` names the process (it must start with ``RANK_PROCESS_PREFIX``).
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
    return RankProcess(rank, process, writer, channel, process.pid, process.sentinel)


def stop(ranks: Sequence[RankProcess], *, graceful_s: float, term_s: float = _KILL_WAIT_S) -> None:
    """Ends ``ranks``: waits ``graceful_s`` for them to exit (a STOP request was
    sent already, or they are dying), then SIGTERM and ``term_s`` more, then
    SIGKILL, and reaps all.
    """
    ranks = [rank for rank in ranks if not rank.reaped]
    deadline = time.monotonic() + graceful_s
    _wait_exited(ranks, deadline)
    for signal_number in (signal.SIGTERM, signal.SIGKILL):
        alive = [rank for rank in ranks if rank.process.exitcode is None]
        if not alive:
            break
        for rank in alive:
            _send_signal(rank.process, signal_number)
        _wait_exited(alive, time.monotonic() + term_s)
    for rank in ranks:
        rank.process.join()
        rank.reaped_exitcode = rank.process.exitcode
        rank.reaped = True
        rank.process.close()
        rank.death_pipe.close()


def _send_signal(process: BaseProcess, signal_number: int) -> None:
    if signal_number == signal.SIGTERM:
        process.terminate()
    else:
        process.kill()


def _wait_exited(ranks: Sequence[RankProcess], deadline: float) -> None:
    pending = {rank.sentinel: rank for rank in ranks if rank.process.exitcode is None}
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        for sentinel in wait(list(pending), timeout=remaining):
            if isinstance(sentinel, int):
                pending.pop(sentinel).process.join(0)
