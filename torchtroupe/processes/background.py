"""Short-lived threads that stop and start processes (restarts, give-ups), joined at
shutdown.

Runs in the supervising process. A decision is taken on the monitor thread, which
must never wait; the slow part (stopping ranks, starting new ones) runs on one of
these threads. ``close`` and ``start`` share a lock, so a thread is either started
and listed before ``close`` returns, or not started at all: ``join`` then waits for
every one of them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class BackgroundThreads:
    """The restart threads of one group or supervisor.

    Args:
        name: The threads' name, for debugging (``torchtroupe-restart-<group>``).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def start(self, function: Callable[..., None], *args: object) -> None:
        """Runs ``function(*args)`` on a new thread, unless :meth:`close` was called."""
        with self._lock:
            if self._closed:
                return
            thread = threading.Thread(target=function, args=args, name=self._name, daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()]
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Starts no more threads."""
        with self._lock:
            self._closed = True

    def join(self) -> None:
        """Waits for every thread started (but the calling one, if it is one of them)."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join()
