"""What crosses the mailbox between a caller and its ranks.

Requests flow caller → rank on the request ring; replies flow rank → caller on the
rank's reply ring. Each request carries a sequence number, and each reply names
the request it answers, so a late reply (to a call that timed out) can never be
taken for the answer to another::

    Request(seq, kind, name, args, kwargs)   kind: CALL (name is an endpoint),
                                                   RUN (name unused, args[0] is a callable),
                                                   STOP (graceful stop)
    Reply(seq, kind, value)                  kind: RESULT, ERROR (value is a RemoteFailure),
                                                   READY (value is the pid), FATAL (value is
                                                   the reason), STOPPED
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CALL, RUN, STOP = 1, 2, 3
RESULT, ERROR, READY, FATAL, STOPPED = 1, 2, 3, 4, 5
NO_SEQ = -1


@dataclass(frozen=True, slots=True)
class Request:
    """One request to a rank (or to all ranks)."""

    seq: int
    kind: int
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def __reduce__(self) -> tuple[Any, ...]:
        return (Request, (self.seq, self.kind, self.name, self.args, self.kwargs))


@dataclass(frozen=True, slots=True)
class Reply:
    """A rank's answer to the request numbered ``seq``."""

    seq: int
    kind: int
    value: Any

    def __reduce__(self) -> tuple[Any, ...]:
        return (Reply, (self.seq, self.kind, self.value))
