"""Makes the forkserver exit at once when the process that started it is gone.

Runs in the forkserver: ``start_context`` names this module in the server's preload
list, and importing it there registers an ``atexit`` hook. Imported anywhere else it
does nothing.

Note [The forkserver exits at once]
-----------------------------------
The server leaves its loop (``raise SystemExit``) when its "alive" pipe reaches
end-of-file, that is when the driver and every process holding that pipe are gone (see
Note [A rank dies with its driver] in lifeline.py). Finalising an interpreter that
imported torch then takes a quarter of a second on an idle machine, and several times
that on a loaded one: the server would be the last process of the driver still alive,
past the one second the driver's death is allowed. The server holds nothing that needs
finalising (no files; its children, the ranks, end by themselves as it goes), so its
exit hook flushes stdio and ends the process with ``os._exit``. It is registered
after torch's hooks, so it runs first. A rank forked from the server inherits the
registration; the pid check keeps it from acting there.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing.forkserver
import os
import sys
from types import FrameType

__all__: list[str] = []


def _imported_by_forkserver() -> bool:
    """True if this import runs inside ``multiprocessing.forkserver.main`` (its preload)."""
    server_main = multiprocessing.forkserver.main.__code__
    frame: FrameType | None = sys._getframe()
    while frame is not None:
        if frame.f_code is server_main:
            return True
        frame = frame.f_back
    return False


def _exit_at_once(server_pid: int) -> None:
    if os.getpid() != server_pid:
        return  # a process forked from the server
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()
    os._exit(0)


if _imported_by_forkserver():
    atexit.register(_exit_at_once, os.getpid())
