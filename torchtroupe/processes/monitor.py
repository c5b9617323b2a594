"""The monitor thread: sees every rank's death the moment it happens.

Runs its own thread in the supervising process. It blocks in ``wait()`` on every
watched process sentinel plus the read end of a self-pipe (never a poll-and-sleep
loop); ``watch``/``unwatch``/``poke`` write a byte to the pipe so the thread
re-reads its watch list. Signal handlers poke it too (SIGUSR1 from a dying rank).
Callbacks run on the monitor thread and must not block for long.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from multiprocessing.connection import wait

logger = logging.getLogger(__name__)


class Monitor:
    """Waits on process sentinels and calls back when one fires.

    Args:
        name: Thread name, for debugging.
        on_poke: Called on the monitor thread after each poke (e.g. to drain rings
            for FATAL reports after a SIGUSR1).
    """

    def __init__(self, name: str, on_poke: Callable[[], None] | None = None) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._watches: dict[int, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._on_poke = on_poke
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        """The monitor thread."""
        return self._thread

    def watch(self, sentinel: int, callback: Callable[[], None]) -> None:
        """Calls ``callback`` once, on the monitor thread, when ``sentinel`` fires."""
        with self._lock:
            self._watches[sentinel] = callback
        self.poke()

    def unwatch(self, sentinel: int) -> None:
        """Forgets ``sentinel`` (the process is being stopped on purpose)."""
        with self._lock:
            self._watches.pop(sentinel, None)
        self.poke()

    def poke(self) -> None:
        """Wakes the monitor thread. Safe in signal handlers."""
        # A full pipe means a wake-up is pending anyway; a closed one, that we stopped.
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write_fd, b"\0")

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                sentinels = list(self._watches)
            ready = wait([self._read_fd, *sentinels])
            for item in ready:
                if item == self._read_fd:
                    os.read(self._read_fd, 4096)
                    if self._on_poke is not None and not self._closed:
                        self._safely(self._on_poke)
                    continue
                with self._lock:
                    callback = self._watches.pop(item, None)  # type: ignore[arg-type]
                if callback is not None:
                    self._safely(callback)

    @staticmethod
    def _safely(callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            logger.exception("a torchtroupe monitor callback failed")

    def close(self) -> None:
        """Stops the thread and closes the pipe. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.poke()
        if self._thread is not threading.current_thread():
            self._thread.join()
        os.close(self._read_fd)
        os.close(self._write_fd)
