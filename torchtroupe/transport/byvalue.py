"""Pickling functions and classes by value, for what a receiver cannot import by name.

Runs in the caller and in every rank, on the thread that encodes a message.
"""

from __future__ import annotations

import io
import types
from typing import Any

import cloudpickle

_PROTOCOL = 5


class _FilenameKeepingPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, except that code objects keep their real ``co_filename``.

    cloudpickle writes ``<dynamic-code>`` instead, for deterministic payloads; we
    want a rank's traceback to point at the file the user wrote the code in.
    """

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.CodeType):
            rebuild, arguments = cloudpickle.cloudpickle._code_reduce(obj)
            fixed = tuple(obj.co_filename if a == "<dynamic-code>" else a for a in arguments)
            return rebuild, fixed
        return super().reducer_override(obj)


def dumps_by_value(obj: Any) -> bytes:
    """Pickles ``obj`` with cloudpickle (functions and classes by value where needed),
    keeping source file names for tracebacks."""
    buffer = io.BytesIO()
    _FilenameKeepingPickler(buffer, protocol=_PROTOCOL).dump(obj)
    return buffer.getvalue()


def needs_value_pickling(obj: types.FunctionType | type) -> bool:
    """Whether ``obj`` cannot be imported by name in another process (defined in
    ``__main__``, a notebook, a function body, or a lambda)."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", "")
    return module in (None, "__main__") or "<locals>" in qualname or "<lambda>" in qualname
