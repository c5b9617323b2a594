"""Replies to calls nobody waits on: the futures of ``*_async`` calls.

Runs in the caller: ``track`` on user threads, the serving on the group's
async-reply thread, which exists only once a future was made and pumps only while
such calls are outstanding (so an idle group costs no CPU). Past a future's deadline
its calls fail with CallTimeoutError, checked at least every slice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ..errors import CallTimeoutError
from .slots import CallSlot

if TYPE_CHECKING:
    from .pump import ReplyPump  # the pump owns this object: a sibling, not a floor above

_SLICE_S = 0.05


class AsyncReplies:
    """The async-reply thread of one group's pump.

    Args:
        pump: The group's reply pump.
    """

    def __init__(self, pump: ReplyPump) -> None:
        self._pump = pump
        self._lock = threading.Lock()
        self._outstanding = 0
        self._deadlines: list[tuple[float, list[CallSlot], Callable[[], str]]] = []
        self._thread: threading.Thread | None = None

    def track(self, slots: list[CallSlot], deadline: float | None, what: Callable[[], str]) -> None:
        """Makes sure ``slots`` resolve even if no thread ever waits on them, and fail
        with CallTimeoutError (``what()`` says which call) once ``deadline`` passes."""
        with self._lock:
            if deadline is not None:
                self._deadlines.append((deadline, slots, what))
            self._outstanding += len(slots)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="torchtroupe-replies", daemon=True
                )
                self._thread.start()
        self._pump.wake_idle()

    def future_of(
        self,
        slots: list[CallSlot],
        finish: Callable[[list[CallSlot]], Any],
        deadline: float | None,
        what: Callable[[list[CallSlot]], str],
    ) -> Future[Any]:
        """A future of ``finish(slots)``, resolved once every slot is (on whichever
        thread resolves the last one, never under the pump); past ``deadline`` the
        late slots fail with CallTimeoutError (``what(late)`` says which call)."""
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        pump = self._pump
        lock = threading.Lock()
        finished = [False]

        def try_complete() -> None:
            with lock:
                if finished[0] or not all(slot.done for slot in slots):
                    return
                finished[0] = True
            try:
                future.set_result(finish(slots))
            except BaseException as error:
                future.set_exception(error)

        def on_done(_: CallSlot) -> None:
            self.resolved()
            pump.after_pump(try_complete)  # user callbacks never run under the pump

        pending = [slot for slot in slots if not slot.done]
        for slot in pending:
            slot.callback = on_done
        if pending:
            self.track(pending, deadline, lambda: what(pending))
        try_complete()  # also covers slots that resolved before their callback was set
        return future

    def resolved(self, count: int = 1) -> None:
        """Called by tracked slots' callbacks as they resolve."""
        with self._lock:
            self._outstanding -= count

    def _has_outstanding(self) -> bool:
        return self._outstanding > 0

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [entry for entry in self._deadlines if entry[0] <= now]
            self._deadlines = [
                entry
                for entry in self._deadlines
                if entry[0] > now and not all(slot.done for slot in entry[1])
            ]
        for _, slots, what in due:
            late = [slot for slot in slots if not slot.done]
            if late:
                self._pump.forget(late)  # their replies, if they ever come, are dropped
                error = CallTimeoutError(what())
                for slot in late:
                    slot.resolve(None, error)

    def _serve(self) -> None:
        """The thread: pumps while tracked calls are outstanding, and expires those
        past their deadline."""
        pump = self._pump
        while not pump.closed:
            self._expire()
            if self._outstanding <= 0 or pump.busy:
                pump.idle_wait(_SLICE_S)
                continue
            pump.pump_while(self._has_outstanding, _SLICE_S)

    def join(self, timeout: float) -> None:
        """Waits up to ``timeout`` for the thread to end (call after the pump closed)."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
