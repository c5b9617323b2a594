"""Turning what a rank's reply ring holds into a reply, in the caller.

Runs on whichever caller thread holds the reply pump. A reply is the plain tuple
``(seq, kind, value)`` of ``messages.Reply``; one that carries tensors, fds or
fragments is decoded here the general way; an ERROR reply's exception is rebuilt as
its own type (``_remote_errors.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from .._remote_errors import RemoteFailure, rebuild
from ..errors import ChannelBrokenError, ChannelClosedError
from ..transport.codec import FdSource, decode, peek_target
from ..transport.stream import IncomingMessage, MessageAbortedError
from .messages import ERROR

ABORTED_REPLY: Final = object()
"""The rank abandoned the message half-written (it died mid-reply): nothing to hand on."""
BROKEN_REPLY: Final = object()
"""The ring broke in the middle of the message."""


def decode_reply(message: IncomingMessage, fds: FdSource, describe: Callable[[], str]) -> Any:
    """Decodes one reply message; one that cannot be unpickled here becomes an ERROR
    reply carrying the unpickling error (noted with ``describe()``).

    Returns:
        The reply tuple, :data:`ABORTED_REPLY` or :data:`BROKEN_REPLY`.
    """
    _, tag = peek_target(message)
    try:
        return decode(message, fds)
    except MessageAbortedError:
        return ABORTED_REPLY
    except (ChannelBrokenError, ChannelClosedError):
        return BROKEN_REPLY
    except Exception as error:
        error.add_note(f"the reply from {describe()} could not be unpickled here")
        return (tag, ERROR, error)


def rebuild_remote_error(error: Any, note: str) -> BaseException:
    """The exception an ERROR reply carries, rebuilt as its own type, with ``note``."""
    if isinstance(error, RemoteFailure):
        error = rebuild(error)
        error.add_note(note)
    return error  # type: ignore[no-any-return]
