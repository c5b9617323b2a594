"""A rank's ties to the process that launched it, set at boot: it ends when that one ends.

Runs in the rank's process: :func:`bind` on its main thread first thing at boot, before
any other thread exists; then one daemon thread blocked on the death pipe, and a keeper
process (a fork of the rank, see below) blocked in ``poll``. Neither wakes while the rank
lives, so an idle rank stays at 0 % CPU. Linux only where it says so; elsewhere only the
death pipe thread works.

Note [A rank dies with its driver]
----------------------------------
The driver's death, even by SIGKILL, must end every process it started within a second,
whatever a rank is doing: holding the GIL in C code, stopped by SIGSTOP, or idle.

* The death pipe. The rank holds the read end of a pipe whose only write end is in the
  driver, so the pipe reaches end-of-file when the driver dies, however it dies. A daemon
  thread of the rank blocks on it and calls ``os._exit``. That thread needs the GIL, so it
  cannot end a rank that holds the GIL in C code, nor a stopped one; hence the keeper
  (Note [Descendants end with their rank]) watches the same pipe from another process
  and SIGKILLs the rank's whole process group at end-of-file.
* The forkserver. CPython hands every child of the forkserver a copy of the driver's
  write end of the server's "alive" pipe (``multiprocessing.forkserver``:
  ``connect_to_new_process`` sends it, ``_serve_one`` stores it in the child as
  ``_forkserver._forkserver_alive_fd``), meant for a child that starts processes through
  the same server. So every rank kept the forkserver alive after the driver died: the
  server never saw end-of-file and never exited, and neither did the resource tracker
  while the ranks held its pipe. :func:`bind` closes that inherited fd and forgets the
  inherited server (under ``fork`` the child inherits the whole state, pid included), so
  the server exits with the driver, and a group started inside a rank starts a
  forkserver of its own, tied to that rank. ``forkserver_exit`` makes the server's exit
  quick.
* ``PR_SET_PDEATHSIG``, a second tie that needs no Python code of the rank's: the kernel
  SIGKILLs the rank when the *thread* that forked it ends. Under ``forkserver`` that is
  the server's only thread, which ends with the server, so the rank is set up for it.
  Under ``spawn`` and ``fork`` it is whichever thread of the driver started the rank (a
  restart thread, say), which may end long before the driver: there the rank must not
  ask for it, or a rank restarted by a short-lived thread is killed when that thread
  returns. The race (the server died before ``prctl`` ran) is closed by checking the
  death pipe right after: the server only exits once the driver is gone.

Note [Descendants end with their rank]
--------------------------------------
A rank's own children (``subprocess.Popen``, ``os.fork``, a DataLoader's workers) must
end with it, however the rank ends: a graceful stop, a crash, a restart, SIGKILL. The
kernel does not do that by itself, and a rank killed by SIGKILL has no last word. So:

* At boot the rank makes itself a process-group leader (``setpgid(0, 0)``: its pgid is
  its pid). Its children inherit the group.
* Then it forks a *keeper*: a copy of itself that keeps only two fds, a pidfd of the
  rank and the death pipe's read end, closing every other one it inherited (so it holds
  no pipe whose end-of-file someone waits for), ignores the usual termination signals,
  and blocks in ``poll`` on both. When the rank dies by any cause, or the driver dies,
  the keeper SIGKILLs its own process group: the rank if it still runs, every
  descendant still in the group, and itself. Killing one's own group (``killpg(0)``)
  cannot hit an unrelated process: while the keeper lives, the group id is in use.
* ``RankProcess.end_descendants()`` (processes/launch.py) lets the process that launched
  the rank kill the group itself, synchronously, as ``stop()`` does before it reaps a
  rank; from outside the group that is only safe while the rank's pid cannot have been
  reused, and that method says how it makes sure.

The keeper costs one fork at boot (before CUDA or any thread exists) and one sleeping
process per rank, named ``troupe-keeper``. Limits: a descendant that leaves the group
(``setsid()``, ``setpgid()``, a daemonising double fork) escapes, as it would escape a
terminal's job control; a keeper killed by hand leaves the rank's descendants to
``end_descendants``; without pidfds (Linux before 5.3) there is no keeper; and the rank's
code sees one child more than it made, which matters only to code that waits for *any*
child (``os.wait()``). Because ranks lead their own groups, a terminal's Ctrl-C reaches
the driver only, as intended: stopping ranks is the driver's business; and a rank is a
background job of the driver's terminal, so it ignores SIGTTOU (which ``stty tostop``
would send it for writing to the terminal), and so do its children.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing.forkserver
import os
import select
import signal
import threading
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["bind"]

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_KEEPER_NAME = b"troupe-keeper"
_KEEPER_IGNORES = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def bind(death_pipe: Connection, *, exit_code: int) -> None:
    """Ties this process to the one that launched it; call it first thing at boot.

    Runs in the rank's process, on its main thread, before any other thread is started
    (it forks the keeper). See Note [A rank dies with its driver] and Note [Descendants
    end with their rank].

    Args:
        death_pipe: The read end of the death pipe; only the launching process holds the
            write end.
        exit_code: The code this process exits with when the launching process is gone.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    forked_by_server = multiprocessing.forkserver.get_inherited_fds() is not None
    _forget_inherited_forkserver()
    if forked_by_server:
        _set_parent_death_signal(signal.SIGKILL)
    if _at_end_of_file(death_pipe):
        os._exit(exit_code)  # the launching process is gone already
    if _lead_own_process_group():
        _start_keeper(death_pipe.fileno())
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


def _lead_own_process_group() -> bool:
    try:
        os.setpgid(0, 0)
    except OSError:
        return False  # a session leader cannot; its descendants are then left alone
    # Now a background group of the driver's terminal: with `stty tostop`, writing to the
    # terminal would stop the rank (SIGTTOU) unless the signal is ignored.
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    return True


def _start_keeper(death_fd: int) -> None:
    """Forks the keeper of this process's group. See Note [Descendants end with their rank]."""
    try:
        rank_fd = os.pidfd_open(os.getpid())
    except (AttributeError, OSError):
        return  # no pidfds: no keeper; stop() still ends the group through end_descendants
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork
    try:
        pid = os.fork()
    except OSError:
        pid = -1
    if pid != 0:
        os.close(rank_fd)
        return
    try:
        _keep(rank_fd, death_fd, libc)
    finally:
        os._exit(0)


def _keep(rank_fd: int, death_fd: int, libc: ctypes.CDLL) -> None:
    """The keeper's whole life: wait for the rank's or the driver's end, then SIGKILL the
    group."""
    for signal_number in _KEEPER_IGNORES:
        signal.signal(signal_number, signal.SIG_IGN)
    low, high = sorted((rank_fd, death_fd))
    os.closerange(0, low)
    os.closerange(low + 1, high)
    os.closerange(high + 1, os.sysconf("SC_OPEN_MAX"))
    libc.prctl(_PR_SET_NAME, _KEEPER_NAME, 0, 0, 0)
    poller = select.poll()
    poller.register(rank_fd, select.POLLIN)  # readable once the rank has exited
    poller.register(death_fd, select.POLLIN)  # hung up once the launching process is gone
    poller.poll()
    os.killpg(0, signal.SIGKILL)


def _watch_death_pipe(connection: Connection, exit_code: int) -> None:
    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            connection.recv_bytes()
        os._exit(exit_code)  # the launching process is gone: nobody will read our replies

    threading.Thread(target=watch, name="torchtroupe-death-pipe", daemon=True).start()
