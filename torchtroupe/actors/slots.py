"""``CallSlot``: where one rank's answer to one request lands, in the caller.

Runs in the caller's threads. A broadcast's slots share its sequence number; a slot
is keyed by (seq, rank).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Outgoing = tuple[int, int, str, tuple[Any, ...], dict[str, Any]]
"""A request to write: (target, kind, name, args, kwargs); see ``messages.Request``."""
Request = tuple[int, int, str, tuple[Any, ...], dict[str, Any]]
"""A request as written: (seq, kind, name, args, kwargs), ``messages.Request``'s fields."""


UNSENT = -1
"""``CallSlot.position`` of a call whose request was not written by the direct path."""
CARRIED = -2
"""``CallSlot.position`` of a call a dead rank never read, kept for its next incarnation."""
BOOT = -3
"""``CallSlot.position`` of a rank's start (its READY reply)."""


def slot_key(seq: int, rank: int) -> int:
    """The pending-table key of rank ``rank``'s answer to request ``seq``."""
    return (seq << 20) | rank


def all_done(slots: list[CallSlot]) -> bool:
    """True once every slot is resolved."""
    # A loop, not all() over a generator: this runs several times per call.
    for slot in slots:  # noqa: SIM110
        if not slot.done:
            return False
    return True


class CallSlot:
    """Where one rank's answer to one request lands.

    Attributes:
        seq: The request's sequence number.
        rank: The rank that answers.
        name: The endpoint (or callable) name, for error notes.
        request: The request the direct path wrote for this rank, kept so that a request
            the rank never read can be written again to its next incarnation (Note
            [Calls a dead rank never read] in ``deaths.py``); None otherwise.
        position: Where that request starts in the request ring (the writer's cursor
            before it was written), or :data:`UNSENT`, :data:`CARRIED`, :data:`BOOT`.
    """

    __slots__ = (
        "callback",
        "done",
        "error",
        "key",
        "name",
        "position",
        "rank",
        "request",
        "seq",
        "value",
    )

    def __init__(
        self, seq: int, rank: int, name: str, request: Request | None = None, position: int = UNSENT
    ) -> None:
        self.seq = seq
        self.rank = rank
        self.key = slot_key(seq, rank)
        self.name = name
        self.request = request
        self.position = position
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.callback: Callable[[CallSlot], None] | None = None

    def resolve(self, value: Any, error: BaseException | None) -> None:
        """Records the outcome (first one wins) and runs the callback, if any."""
        if self.done:
            return
        self.value, self.error = value, error
        self.done = True
        self.request = None  # the arguments are not needed any more
        if self.callback is not None:
            self.callback(self)

    def outcome(self) -> Any:
        """Returns the value or raises the error."""
        if self.error is not None:
            raise self.error
        return self.value
