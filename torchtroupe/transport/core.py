"""Which implementation of the ring's hot path this process uses.

Runs once per process, at import. The compiled extension ``_ringcore`` is used
when it was built and ``TORCHTROUPE_NATIVE`` is not ``0``; otherwise the
pure-Python ``_ringcore_py``, which behaves the same, only slower. Both sides of a
ring may use different implementations: they share the memory layout, not code.
"""

from __future__ import annotations

import logging
from types import ModuleType

from .._settings import SETTINGS
from ..errors import ChannelBrokenError, ChannelClosedError

logger = logging.getLogger(__name__)


def _load() -> tuple[ModuleType, str]:
    if SETTINGS.native:
        try:
            from . import _ringcore
        except ImportError as error:
            logger.warning(
                "torchtroupe's compiled ring core is not built (%s); using the slower "
                "pure-Python core. Reinstall torchtroupe with a C compiler to build it.",
                error,
            )
        else:
            return _ringcore, "native"
    from . import _ringcore_py

    return _ringcore_py, "python"


core, IMPLEMENTATION = _load()
"""The ring core module in use, and its name: ``"native"`` (C) or ``"python"``."""
core.set_errors(ChannelClosedError, ChannelBrokenError)
