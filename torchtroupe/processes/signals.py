"""SIGUSR1 and SIGTERM for processes that supervise ranks.

Runs in the supervising process; handlers run on its main thread.

* SIGUSR1 is how a rank that meets an unrecoverable fault (``tt.fatal``, a sticky
  CUDA error) tells its supervisor to look now: the handler pokes every monitor,
  which reads the rank's FATAL report before the process is even reaped.
* SIGTERM stops every tree of this process in reverse start order (graceful stop,
  ``shutdown_s``, SIGTERM, SIGKILL), then hands the signal on: to the handler the
  user had installed, or to the default action, so the process still ends.

Handlers chain to any handler installed before ours. They can only be installed
from the main thread; elsewhere nothing is installed and the monitors' sentinels
do the work (a rank is then told not to send SIGUSR1, whose default action would
kill this process).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import weakref
from types import FrameType
from typing import Any, Protocol

logger = logging.getLogger(__name__)

_STOP_ON_SIGTERM_S = 30.0


class SignalTarget(Protocol):
    """A tree root the handlers act on."""

    def poke(self) -> None:
        """Wakes the tree's monitor (SIGUSR1)."""

    def stop_on_signal(self) -> None:
        """Stops the tree (SIGTERM)."""


_roots: list[weakref.ref[Any]] = []
_in_sigterm = threading.Event()  # set while our SIGTERM handler stops the trees
_previous: dict[int, Any] = {}
_lock = threading.Lock()


def stopping_on_sigterm() -> bool:
    """True while our SIGTERM handler is stopping the trees: the interrupted main
    thread cannot let go of anything it holds until the stop is over."""
    return _in_sigterm.is_set()


def handlers_installed() -> bool:
    """True once our SIGUSR1 handler is in place in this process."""
    return signal.SIGUSR1 in _previous


def register(root: SignalTarget) -> bool:
    """Puts ``root`` under the handlers, installing them if this is the main thread.

    Returns:
        True if the handlers are installed (ranks may send SIGUSR1).
    """
    with _lock:
        _roots[:] = [ref for ref in _roots if ref() is not None]
        _roots.append(weakref.ref(root))
        if not handlers_installed() and threading.current_thread() is threading.main_thread():
            try:
                _previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, _on_sigusr1)
                _previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _on_sigterm)
            except (ValueError, OSError):
                _previous.clear()
        return handlers_installed()


def _live_roots() -> list[SignalTarget]:
    return [root for root in (ref() for ref in _roots) if root is not None]


def _chain(signum: int, frame: FrameType | None) -> bool:
    """Calls the handler installed before ours; True if it was the default action."""
    previous = _previous.get(signum)
    if callable(previous):
        previous(signum, frame)
        return False
    return previous in (None, signal.SIG_DFL)


def _on_sigusr1(signum: int, frame: FrameType | None) -> None:
    for root in _live_roots():
        root.poke()
    if _chain(signum, frame) and not _live_roots():
        logger.warning("SIGUSR1 received with no torchtroupe tree to notify")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    roots = _live_roots()
    logger.warning("SIGTERM: stopping %d torchtroupe tree(s)", len(roots))

    def stop_all() -> None:
        for root in reversed(roots):
            try:
                root.stop_on_signal()
            except Exception:
                logger.exception("stopping a tree on SIGTERM failed")

    # Stop on another thread: the interrupted main thread may hold a lock the stop
    # needs. If it does, the ranks still end through their death pipes when we exit.
    stopper = threading.Thread(target=stop_all, name="torchtroupe-sigterm")
    _in_sigterm.set()
    try:
        stopper.start()
        stopper.join(_STOP_ON_SIGTERM_S)
    finally:
        _in_sigterm.clear()
    if _chain(signum, frame):
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
