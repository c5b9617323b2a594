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
remote frame's file name, function name and line.
"""

from __future__ import annotations

import collections
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
    """One frame of a remote traceback."""

    filename: str
    name: str
    module: str | None
    lineno: int


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
    module = tb.tb_frame.f_globals.get("__name__")
    return RemoteFrame(
        filename=clip(code.co_filename, MAX_NAME_CHARS),
        name=clip(code.co_name, MAX_NAME_CHARS),
        module=clip(module, MAX_NAME_CHARS) if isinstance(module, str) else None,
        lineno=tb.tb_lineno if isinstance(tb.tb_lineno, int) else 0,
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
        traceback.FrameSummary(frame.filename, frame.lineno, frame.name) for frame in frames
    ]
    return traceback.StackSummary.from_list(summaries).format()


# -- in the caller --------------------------------------------------------------------


class _FrameMarker(Exception):
    """Raised by a stub to make one frame of a rebuilt traceback."""


_MARKER_NAME = "_torchtroupe_remote_frame"
_STUB = compile(f"raise {_MARKER_NAME}", "<remote frame>", "exec")


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
    """The stub's code, renamed to ``frame``."""
    return _STUB.replace(
        co_filename=frame.filename,
        co_name=frame.name,
        co_qualname=frame.name,
        co_firstlineno=max(frame.lineno, 1),
    )
