"""A rank's ties to the process that launched it, set at boot: it ends when that one ends.

Runs in the rank's process: :func:`bind` on its main thread first thing at boot, before
any other thread exists; then one daemon thread blocked on the death pipe, which never
wakes while the rank lives, so an idle rank stays at 0 % CPU. Linux only where it says
so; elsewhere only the death pipe thread works.

Note [A rank dies with its driver]
----------------------------------
The driver's death, even by SIGKILL, must end every process it started within a second,
whatever a rank is doing: holding the GIL in C code, stopped by SIGSTOP, or idle.

* The death pipe. The rank holds the read end of a pipe whose only write end is in the
  driver, so the pipe reaches end-of-file when the driver dies, however it dies. A daemon
  thread of the rank blocks on it and calls ``os._exit``. That thread needs the GIL, so it
  cannot end a rank that holds the GIL in C code, nor a stopped one.
* ``PR_SET_PDEATHSIG``, a tie that needs no Python code of the rank's: the kernel
  SIGKILLs the rank when its OS parent dies. Under ``forkserver`` that parent is the
  forkserver, so the chain is: the driver dies, the server sees end-of-file on its
  "alive" pipe and exits, the kernel SIGKILLs every rank (stopped or not, GIL or not),
  and the resource tracker sees end-of-file on its pipe once no rank holds it.
* That chain used to be broken at its first link. CPython hands every child of the
  forkserver a copy of the driver's write end of the server's "alive" pipe
  (``multiprocessing.forkserver``: ``connect_to_new_process`` sends it, ``_serve_one``
  stores it in the child as ``_forkserver._forkserver_alive_fd``), meant for a child that
  starts processes through the same server. So every rank kept the forkserver alive: the
  server never saw end-of-file and never exited, PDEATHSIG never fired, and the resource
  tracker lived on too. :func:`bind` closes that inherited fd and forgets the inherited
  server (under ``fork`` the child inherits the whole state, pid included), so the server
  exits with the driver, and a group started inside a rank starts a forkserver of its
  own, tied to that rank. ``forkserver_exit`` makes the server's exit quick.

The race (the parent died before ``prctl`` ran, so no signal will come) is closed by
checking the death pipe right after: under ``forkserver`` the server only exits once the
driver is gone, and under ``spawn`` and ``fork`` the parent is the driver.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing.forkserver
import os
import signal
import threading
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["bind"]

_PR_SET_PDEATHSIG = 1


def bind(death_pipe: Connection, *, exit_code: int) -> None:
    """Ties this process to the one that launched it; call it first thing at boot.

    Runs in the rank's process, on its main thread, before any other thread is started.
    See Note [A rank dies with its driver].

    Args:
        death_pipe: The read end of the death pipe; only the launching process holds the
            write end.
        exit_code: The code this process exits with when the launching process is gone.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    _forget_inherited_forkserver()
    _set_parent_death_signal(signal.SIGKILL)
    if _at_end_of_file(death_pipe):
        os._exit(exit_code)  # the launching process is gone already
    _watch_death_pipe(death_pipe, exit_code)


def _forget_inherited_forkserver() -> None:
    """Closes the forkserver lifeline this process inherited and forgets that server.

    See Note [A rank dies with its driver].
    """
    server: Any = multiprocessing.forkserver._forkserver  # private state, untyped
    alive_fd: int | None = getattr(server, "_forkserver_alive_fd", None)
    if alive_fd is not None:
        with contextlib.suppress(OSError):
            os.close(alive_fd)
    server._forkserver_alive_fd = None
    server._forkserver_address = None
    server._forkserver_pid = None
    server._inherited_fds = None  # read while the process object was unpickled, not since
    server._lock = threading.Lock()  # under `fork` the copy may have been held


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False  # not Linux


def _set_parent_death_signal(signal_number: int) -> bool:
    return _prctl(_PR_SET_PDEATHSIG, int(signal_number))


def _at_end_of_file(connection: Connection) -> bool:
    """True if the other end is closed (the launching process is gone)."""
    try:
        return connection.poll(0)  # nothing is ever written: readable means end-of-file
    except OSError:
        return True


def _watch_death_pipe(connection: Connection, exit_code: int) -> None:
    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            connection.recv_bytes()
        os._exit(exit_code)  # the launching process is gone: nobody will read our replies

    threading.Thread(target=watch, name="torchtroupe-death-pipe", daemon=True).start()
