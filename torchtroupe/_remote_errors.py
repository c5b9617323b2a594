"""Carrying an exception from a rank back to its caller, real traceback and all.

Runs in ranks (:func:`capture`, in the serve loop's thread) and in callers
(:func:`rebuild`, in whichever thread drains the replies).

An exception crosses as its class, its ``args``, those of its attributes that can
be pickled, its frames, and the exceptions chained to it (``__cause__``, or
``__context__`` where Python would print it) the same way. The caller rebuilds it
with ``cls.__new__`` rather than ``cls(*args)``, so exceptions whose ``__init__``
takes keyword-only or differently shaped arguments come back intact; attributes
that could not be pickled are named in a note instead. Only if the class itself
cannot travel, or rebuilding fails, does the caller get :class:`RemoteError`,
which still carries the type name, message and formatted traceback.

What crosses is bounded, whatever was raised (see Note [A bounded failure record]),
and :func:`capture` never raises: a failure that cannot be recorded must not take
the rank down with it.

Note [A bounded failure record]
-------------------------------
A ``RecursionError`` carries as many frames as the recursion limit allows (tens of
thousands under a raised limit), and a chain of causes can be long or loop back on
itself. Walking either recursively, or pickling a structure as deep as either, fails
the same way the endpoint did, in the rank's serve loop, which then dies. So the
frames cross as a flat tuple, only the outermost and innermost of them
(``_remote_frames.py``; the caller gets a note saying how many were dropped); the
chain is followed iteratively, each exception once, at most ``_MAX_CHAIN`` links
after the one raised (a note counts the rest); and every string is clipped, the
formatted traceback too.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._remote_frames import (
    MAX_NAME_CHARS,
    RemoteFrame,
    capture_frames,
    clip,
    format_frames,
    rebuild_traceback,
)
from .errors import RemoteError
from .transport.codec import dumps_by_value

_MAX_CHAIN = 8
"""Exceptions sent back after the one raised: its cause, the cause's cause, ..."""

_MAX_MESSAGE_CHARS = 16_000
_MAX_FORMATTED_CHARS = 64_000
_COUNT_LIMIT = 100_000
"""How far a chain is walked just to count what was not sent."""

_CAUSE_SEPARATOR = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT_SEPARATOR = "\nDuring handling of the above exception, another exception occurred:\n\n"


@dataclass(frozen=True, slots=True)
class RemoteFailure:
    """A picklable, bounded record of an exception raised in a rank.

    ``frames_dropped`` frames were left out between ``frames[:gap]`` (the outermost)
    and ``frames[gap:]`` (the innermost). ``chained`` is the exception Python would
    print above this one: its ``__cause__`` if ``chained_is_cause``, else its
    ``__context__``. ``chain_cut`` counts the exceptions further down the chain that
    were not sent (-1: more than could be counted).
    """

    type_name: str
    message: str
    formatted: str
    exception_class: bytes | None
    args: bytes | None
    attributes: dict[str, bytes] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()
    frames: tuple[RemoteFrame, ...] = ()
    gap: int = 0
    frames_dropped: int = 0
    chained: RemoteFailure | None = None
    chained_is_cause: bool = True
    chain_cut: int = 0


# -- in the rank ----------------------------------------------------------------------


def capture(error: BaseException) -> RemoteFailure:
    """Records ``error``, its frames and its chain for the trip to the caller.

    Runs in the rank. Never raises: if even the bounded record cannot be made, the
    record holds the type's name and as much of the message as could be read.
    """
    try:
        chain, links, cut = _follow_chain(error)
        failure: RemoteFailure | None = None
        for position in range(len(chain) - 1, -1, -1):  # the oldest first: it is printed first
            failure = _capture_one(
                chain[position],
                chained=failure,
                chained_is_cause=links[position] if position < len(links) else True,
                chain_cut=cut if position == len(chain) - 1 else 0,
            )
        if failure is not None:
            return failure
    except Exception:
        pass
    name = clip(_qualified_name(type(error)), MAX_NAME_CHARS)
    message = clip(_safe_str(error), _MAX_MESSAGE_CHARS)
    return RemoteFailure(name, message, f"{name}: {message}\n", None, None)


def _follow_chain(error: BaseException) -> tuple[list[BaseException], list[bool], int]:
    """The exceptions Python would print for ``error``, newest first, at most
    ``_MAX_CHAIN`` after it; how each is linked to the next (True: as its cause);
    and how many further ones were not taken (-1: too many to count)."""
    chain = [error]
    links: list[bool] = []
    seen = {id(error)}
    link = _next_in_chain(error)
    while link is not None and id(link[0]) not in seen:  # a loop ends where it closes
        if len(chain) > _MAX_CHAIN:
            return chain, links, _count_rest(link[0], seen)
        chain.append(link[0])
        links.append(link[1])
        seen.add(id(link[0]))
        link = _next_in_chain(link[0])
    return chain, links, 0


def _count_rest(error: BaseException, seen: set[int]) -> int:
    count = 0
    link: tuple[BaseException, bool] | None = (error, True)
    while link is not None and id(link[0]) not in seen:
        if count == _COUNT_LIMIT:
            return -1
        count += 1
        seen.add(id(link[0]))
        link = _next_in_chain(link[0])
    return count


def _next_in_chain(error: BaseException) -> tuple[BaseException, bool] | None:
    """The exception printed above ``error``, and whether it is its cause."""
    if error.__cause__ is not None:
        return error.__cause__, True
    if error.__context__ is not None and not error.__suppress_context__:
        return error.__context__, False
    return None


def _capture_one(
    error: BaseException,
    *,
    chained: RemoteFailure | None,
    chained_is_cause: bool,
    chain_cut: int,
) -> RemoteFailure:
    cls = type(error)
    attributes: dict[str, bytes] = {}
    dropped: list[str] = []
    with contextlib.suppress(Exception):
        for name, value in vars(error).items() if hasattr(error, "__dict__") else ():
            data = _dumps_or_none(value)
            if data is None:
                dropped.append(clip(str(name), MAX_NAME_CHARS))
            else:
                attributes[name] = data
    frames, gap, frames_dropped = capture_frames(error.__traceback__)
    last = _format_exception_only(error)
    try:
        text = format_frames(frames, gap, frames_dropped) + last
    except Exception:
        text = last
    if chained is not None:  # printed above this one, as Python does
        separator = _CAUSE_SEPARATOR if chained_is_cause else _CONTEXT_SEPARATOR
        text = chained.formatted + separator + text
    return RemoteFailure(
        type_name=clip(_qualified_name(cls), MAX_NAME_CHARS),
        message=clip(_safe_str(error), _MAX_MESSAGE_CHARS),
        formatted=clip(text, _MAX_FORMATTED_CHARS),
        exception_class=_dumps_or_none(cls),
        args=_dumps_or_none(error.args),
        attributes=attributes,
        dropped=tuple(dropped),
        frames=frames,
        gap=gap,
        frames_dropped=frames_dropped,
        chained=chained,
        chained_is_cause=chained_is_cause,
        chain_cut=chain_cut,
    )


def _dumps_or_none(value: Any) -> bytes | None:
    try:
        data = dumps_by_value(value)
        pickle.loads(data)
    except Exception:
        return None
    return data


def _format_exception_only(error: BaseException) -> str:
    """The last lines Python prints for ``error``: its type, message and notes.

    Not ``traceback.format_exception_only``: that one builds a ``TracebackException``
    of the whole chain below ``error``, every frame of it, to print one line. A
    SyntaxError gets its ``str()``, without the source line and caret.
    """
    cls = type(error)
    name = getattr(cls, "__qualname__", "?")
    if getattr(cls, "__module__", None) not in ("__main__", "builtins"):
        name = _qualified_name(cls)
    message = _safe_str(error)
    lines = [f"{name}: {message}\n" if message else f"{name}\n"]
    try:
        notes = getattr(error, "__notes__", None)
        if isinstance(notes, Sequence) and not isinstance(notes, str | bytes):
            lines += [f"{_safe_text(note)}\n" for note in notes]
        elif notes is not None:
            lines.append(f"{_safe_text(notes, repr)}\n")
    except Exception:
        lines.append("<__notes__ could not be read>\n")
    return "".join(lines)


def _safe_text(value: object, convert: Callable[[object], str] = str) -> str:
    try:
        return convert(value)
    except Exception:
        return f"<{type(value).__name__} {convert.__name__}() failed>"


def _qualified_name(cls: type) -> str:
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', '?')}"


def _safe_str(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:
        return "<exception str() failed>"


# -- in the caller --------------------------------------------------------------------


def rebuild(failure: RemoteFailure) -> BaseException:
    """Rebuilds the rank's exception in the caller, with the remote frames attached.

    Runs in the caller. Never raises.

    Returns:
        The exception as its own type, or :class:`RemoteError` if it cannot be rebuilt;
        the exceptions chained to it rebuilt the same way.
    """
    try:
        chain = [failure]
        record = failure.chained
        while record is not None and len(chain) <= _MAX_CHAIN:
            chain.append(record)
            record = record.chained
        errors = [_rebuild_one(each) for each in chain]
        for newer, older, link in zip(errors, errors[1:], chain, strict=False):
            if link.chained_is_cause:
                newer.__cause__ = older
            else:
                newer.__context__ = older
        if chain[-1].chain_cut:
            cut = chain[-1].chain_cut
            more = "too many to count" if cut < 0 else f"{cut:,}"
            errors[-1].add_note(f"the exception chain goes on: {more} more were not sent back")
        return errors[0]
    except Exception:
        return RemoteError(failure.type_name, failure.message, failure.formatted)


def _rebuild_one(failure: RemoteFailure) -> BaseException:
    error = _rebuild_exact(failure)
    if error is None:
        error = RemoteError(failure.type_name, failure.message, failure.formatted)
    elif failure.dropped:
        error.add_note(f"attributes not sent back (unpicklable): {', '.join(failure.dropped)}")
    if failure.frames:
        error = error.with_traceback(rebuild_traceback(failure.frames))
    if failure.frames_dropped:
        inner = len(failure.frames) - failure.gap
        error.add_note(
            f"traceback truncated: {failure.frames_dropped:,} frames dropped between the "
            f"outermost {failure.gap} and the innermost {inner}"
        )
    return error


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
