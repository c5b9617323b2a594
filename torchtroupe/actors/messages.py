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

from typing import Any, NamedTuple

CALL, RUN, STOP = 1, 2, 3
RESULT, ERROR, READY, FATAL, STOPPED = 1, 2, 3, 4, 5
NO_SEQ = -1


class Request(NamedTuple):
    """One request to a rank (or to all ranks).

    A named tuple rather than a dataclass: it is built and read once per call on
    the hot path, and it crosses the ring as a plain tuple (``tuple(request)``), so
    pickling it looks up no class.
    """

    seq: int
    kind: int
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class Reply(NamedTuple):
    """A rank's answer to the request numbered ``seq`` (a plain tuple on the wire)."""

    seq: int
    kind: int
    value: Any
