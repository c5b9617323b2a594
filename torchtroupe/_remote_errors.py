"""Carrying an exception from a rank back to its caller, real traceback and all.

Runs in ranks (:func:`capture`) and in callers (:func:`rebuild`).

An exception crosses as its class, its ``args``, those of its attributes that can
be pickled, its traceback as tblib data, and its ``__cause__`` the same way. The
caller rebuilds it with ``cls.__new__`` rather than ``cls(*args)``, so exceptions
whose ``__init__`` takes keyword-only or differently shaped arguments come back
intact; attributes that could not be pickled are named in a note instead. Only if
the class itself cannot travel, or rebuilding fails, does the caller get
:class:`RemoteError`, which still carries the type name, message and traceback.
"""

from __future__ import annotations

import pickle
import traceback
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from tblib import Traceback

from .errors import RemoteError
from .transport.codec import dumps_by_value

_MAX_CHAIN = 8


@dataclass(frozen=True, slots=True)
class RemoteFailure:
    """A picklable record of an exception raised in a rank."""

    type_name: str
    message: str
    formatted: str
    exception_class: bytes | None
    args: bytes | None
    attributes: dict[str, bytes] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()
    traceback: dict[str, Any] | None = None
    cause: RemoteFailure | None = None


def _dumps_or_none(value: Any) -> bytes | None:
    try:
        data = dumps_by_value(value)
        pickle.loads(data)
    except Exception:
        return None
    return data


def capture(error: BaseException, _depth: int = 0) -> RemoteFailure:
    """Records ``error`` for the trip to the caller. Runs in the rank."""
    cls = type(error)
    attributes: dict[str, bytes] = {}
    dropped: list[str] = []
    for name, value in vars(error).items() if hasattr(error, "__dict__") else ():
        data = _dumps_or_none(value)
        if data is None:
            dropped.append(name)
        else:
            attributes[name] = data
    tb_data = Traceback(error.__traceback__).to_dict() if error.__traceback__ else None
    cause = error.__cause__
    return RemoteFailure(
        type_name=f"{cls.__module__}.{cls.__qualname__}",
        message=str(error),
        formatted="".join(traceback.format_exception(error)),
        exception_class=_dumps_or_none(cls),
        args=_dumps_or_none(error.args),
        attributes=attributes,
        dropped=tuple(dropped),
        traceback=tb_data,
        cause=capture(cause, _depth + 1) if cause is not None and _depth < _MAX_CHAIN else None,
    )


def _remote_traceback(failure: RemoteFailure) -> TracebackType | None:
    if failure.traceback is None:
        return None
    try:
        rebuilt: TracebackType | None = Traceback.from_dict(failure.traceback).as_traceback()
        return rebuilt
    except Exception:
        return None


def _rebuild_exact(failure: RemoteFailure) -> BaseException | None:
    if failure.exception_class is None or failure.args is None:
        return None
    try:
        cls = pickle.loads(failure.exception_class)
        args = pickle.loads(failure.args)
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            return None
        error: BaseException = cls.__new__(cls, *args)
        error.args = args
        for name, data in failure.attributes.items():
            setattr(error, name, pickle.loads(data))
    except Exception:
        return None
    return error


def rebuild(failure: RemoteFailure) -> BaseException:
    """Rebuilds the rank's exception in the caller, with the remote frames attached.

    Returns:
        The exception as its own type, or :class:`RemoteError` if it cannot be rebuilt.
    """
    error = _rebuild_exact(failure)
    if error is None:
        error = RemoteError(failure.type_name, failure.message, failure.formatted)
    elif failure.dropped:
        error.add_note(f"attributes not sent back (unpicklable): {', '.join(failure.dropped)}")
    remote_tb = _remote_traceback(failure)
    if remote_tb is not None:
        error = error.with_traceback(remote_tb)
    if failure.cause is not None:
        error.__cause__ = rebuild(failure.cause)
    return error
