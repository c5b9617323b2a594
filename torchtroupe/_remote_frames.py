"""The frames of a traceback, carried from a rank and rebuilt in its caller.

Runs in ranks (:func:`capture_frames`, :func:`format_frames`, in the serve loop's
thread) and in callers (:func:`rebuild_traceback`, in whichever thread drains the
replies). ``_remote_errors.py`` carries the exception itself.

A traceback crosses as a flat tuple of :class:`RemoteFrame`, never as a linked
structure: a ``RecursionError`` brings as many frames as the recursion limit allows
(tens of thousands under a raised one), and walking or pickling a structure that
deep fails as the endpoint did, in the rank's serve loop. At most ``OUTER_FRAMES``
outermost and ``INNER_FRAMES`` innermost frames cross; those between are counted.

Note [Rebuilding remote frames]
-------------------------------
A traceback's frames must be real frame objects, so, as tblib does, each remote frame
is made by running a stub (``raise <marker>``) whose code object has been given the
remote frame's file name, function name and line. Python 3.11 also prints carets
under the expression that failed, from the code's position table (``co_positions``,
stored in ``co_linetable``) at the frame's last instruction; a stub that keeps its
own table points the carets at the columns of ``raise <marker>``, under unrelated
code (tblib 3.2 does this). So the rank records each frame's position (line, end
line, start and end column, as ``co_positions`` gives them) and the caller writes it
into the stub's table for every instruction of the stub (``_position_table``, in the
format of CPython's ``Objects/locations.md``). The rebuilt code is read back through
``co_positions``; where it does not match (another table format), the frame gets a
table with lines only, so no carets are printed rather than wrong ones.
"""

from __future__ import annotations

import collections
import itertools
import traceback
from dataclasses import dataclass
from types import CodeType, TracebackType
from typing import Any

OUTER_FRAMES = 25
INNER_FRAMES = 75
"""The frames of a longer traceback that are sent back: the outermost, the innermost."""

MAX_NAME_CHARS = 1_000


@dataclass(frozen=True, slots=True)
class RemoteFrame:
    """One frame of a remote traceback, and the span its last instruction covers.

    ``end_lineno``, ``colno`` and ``end_colno`` are those of ``co_positions`` (columns
    are UTF-8 byte offsets); None where the rank's Python had none.
    """

    filename: str
    name: str
    module: str | None
    lineno: int
    end_lineno: int | None = None
    colno: int | None = None
    end_colno: int | None = None


def clip(text: str, limit: int) -> str:
    """``text``, or its head and tail with a marker between if it is longer than ``limit``."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half:,} characters dropped ...]\n{text[-half:]}"


# -- in the rank ----------------------------------------------------------------------


def capture_frames(tb: TracebackType | None) -> tuple[tuple[RemoteFrame, ...], int, int]:
    """Records the frames of ``tb`` that are sent back.

    Runs in the rank.

    Returns:
        The outermost and innermost frames, outermost first; how many of them are the
        outermost (where the gap is, 0 if there is none); how many frames were dropped.
    """
    outer: list[TracebackType] = []
    inner: collections.deque[TracebackType] = collections.deque(maxlen=INNER_FRAMES)
    total = 0
    while tb is not None:
        if len(outer) < OUTER_FRAMES:
            outer.append(tb)
        else:
            inner.append(tb)
        total += 1
        tb = tb.tb_next
    kept = [*outer, *inner]
    frames = tuple(_capture_frame(entry) for entry in kept)
    if total == len(kept):
        return frames, 0, 0
    return frames, len(outer), total - len(kept)


def _capture_frame(tb: TracebackType) -> RemoteFrame:
    code = tb.tb_frame.f_code
    # The position traceback.py prints: that of the frame's last instruction.
    position: tuple[int | None, int | None, int | None, int | None] = (None, None, None, None)
    if tb.tb_lasti >= 0:
        found = next(itertools.islice(code.co_positions(), tb.tb_lasti // 2, None), None)
        if found is not None:
            position = found
    lineno, end_lineno, colno, end_colno = position
    if lineno is None:
        lineno, end_lineno, colno, end_colno = tb.tb_lineno, None, None, None
    module = tb.tb_frame.f_globals.get("__name__")
    return RemoteFrame(
        filename=clip(code.co_filename, MAX_NAME_CHARS),
        name=clip(code.co_name, MAX_NAME_CHARS),
        module=clip(module, MAX_NAME_CHARS) if isinstance(module, str) else None,
        lineno=lineno if isinstance(lineno, int) else 0,
        end_lineno=end_lineno,
        colno=colno,
        end_colno=end_colno,
    )


def format_frames(frames: tuple[RemoteFrame, ...], gap: int, dropped: int) -> str:
    """The traceback part of a formatted exception, as Python prints it, with a line
    where frames were dropped; empty if there are no frames.

    Runs in the rank.
    """
    if not frames:
        return ""
    lines = ["Traceback (most recent call last):\n"]
    if gap:
        lines += _format_stack(frames[:gap])
        lines.append(f"  [... {dropped:,} frames dropped ...]\n")
        lines += _format_stack(frames[gap:])
    else:
        lines += _format_stack(frames)
    return "".join(lines)


def _format_stack(frames: tuple[RemoteFrame, ...]) -> list[str]:
    summaries = [
        traceback.FrameSummary(
            frame.filename,
            frame.lineno,
            frame.name,
            end_lineno=frame.end_lineno,
            colno=frame.colno,
            end_colno=frame.end_colno,
        )
        for frame in frames
    ]
    return traceback.StackSummary.from_list(summaries).format()


# -- in the caller --------------------------------------------------------------------


class _FrameMarker(Exception):
    """Raised by a stub to make one frame of a rebuilt traceback."""


_MARKER_NAME = "_torchtroupe_remote_frame"
_STUB = compile(f"raise {_MARKER_NAME}", "<remote frame>", "exec")
_STUB_UNITS = len(_STUB.co_code) // 2  # code units (instructions, caches): each has a position

_LONG_FORM = 14  # Objects/locations.md: line delta, end line delta, column + 1, end column + 1
_NO_COLUMNS = 13  # line delta only


def rebuild_traceback(frames: tuple[RemoteFrame, ...]) -> TracebackType | None:
    """Real traceback entries for ``frames``, outermost first (see Note [Rebuilding
    remote frames]); a frame that cannot be made is left out.

    Runs in the caller.
    """
    head: TracebackType | None = None
    tail: TracebackType | None = None
    for frame in frames:
        entry: TracebackType | None = None
        namespace: dict[str, Any] = {_MARKER_NAME: _FrameMarker}
        if frame.module is not None:
            namespace["__name__"] = frame.module
        try:
            exec(_frame_code(frame), namespace)
        except _FrameMarker as marker:
            entry = marker.__traceback__.tb_next if marker.__traceback__ else None
        except Exception:
            continue
        if entry is None:
            continue
        if tail is None:
            head = entry
        else:
            tail.tb_next = entry
        tail = entry
    return head


def _frame_code(frame: RemoteFrame) -> CodeType:
    """The stub's code, renamed to ``frame`` and pointing at its position."""
    lineno = max(frame.lineno, 1)
    span = _columns(frame)
    code = _STUB.replace(
        co_filename=frame.filename,
        co_name=frame.name,
        co_qualname=frame.name,
        co_firstlineno=lineno,
        co_linetable=_position_table(lineno, span),
    )
    expected = (lineno, lineno, None, None) if span is None else (lineno, *span)
    if all(position == expected for position in code.co_positions()):
        return code
    return code.replace(co_linetable=_position_table(lineno, None))


def _columns(frame: RemoteFrame) -> tuple[int, int, int] | None:
    """``frame``'s end line, start and end column, if it has a usable span."""
    end_lineno, colno, end_colno = frame.end_lineno, frame.colno, frame.end_colno
    if frame.lineno < 1 or end_lineno is None or colno is None or end_colno is None:
        return None
    if end_lineno < frame.lineno or colno < 0 or end_colno < 0:
        return None
    return end_lineno, colno, end_colno


def _position_table(lineno: int, span: tuple[int, int, int] | None) -> bytes:
    """A ``co_linetable`` giving every code unit of the stub the position ``lineno``
    and ``span`` (end line, start and end column), for a ``co_firstlineno`` of
    ``lineno``; the line alone if ``span`` is None."""
    if span is None:
        form, body = _NO_COLUMNS, _svarint(0)
    else:
        end_lineno, colno, end_colno = span
        form = _LONG_FORM
        body = _svarint(0) + _varint(end_lineno - lineno) + _varint(colno + 1)
        body += _varint(end_colno + 1)
    table = bytearray()
    left = _STUB_UNITS
    while left:  # an entry covers at most eight code units
        units = min(left, 8)
        table.append(0x80 | (form << 3) | (units - 1))
        table += body
        left -= units
    return bytes(table)


def _varint(value: int) -> bytes:
    encoded = bytearray()
    while value >= 64:
        encoded.append(0x40 | (value & 0x3F))
        value >>= 6
    encoded.append(value)
    return bytes(encoded)


def _svarint(value: int) -> bytes:
    return _varint((-value << 1) | 1 if value < 0 else value << 1)
