"""Every environment variable torchtroupe reads, read in this one place.

Runs in any process: the caller, the forkserver and every rank read the same
variables, so a rank inherits the tuning of the program that started it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def _float_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"{name}={raw!r} is not a number; unset it or give seconds/microseconds as a float"
        ) from None
    if value < 0:
        raise ValueError(f"{name}={raw!r} must not be negative")
    return value


def _flag_from_env(name: str, *, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={raw!r} is not a flag; unset it or give 1 or 0")


@dataclass(frozen=True, slots=True)
class Settings:
    """Tunables read from the environment once per process.

    Attributes:
        spin_us: How long a waiter spins before it parks (``TORCHTROUPE_SPIN_US``);
            None (unset) picks it per group, see ``waiting.spin_window_s``.
        park_slice_s: The longest a parked waiter sleeps before it rechecks its
            peer's liveness and its deadline (``TORCHTROUPE_PARK_SLICE_S``).
        ring_bytes: Data capacity of each ring in a mailbox (``TORCHTROUPE_RING_BYTES``).
        native: Whether to use the compiled ring core when it is built
            (``TORCHTROUPE_NATIVE``, ``1`` by default; ``0`` selects the pure-Python
            core, for debugging or comparison).
        arena_bytes: The most shared memory each sender's tensor arena may grow to
            (``TORCHTROUPE_ARENA_BYTES``, 1 GiB by default; 0 turns arenas off, so
            every tensor travels through the ring). Note [The tensor arena] in
            ``transport/arena.py``.
        arena_min_bytes: The smallest span of a CPU tensor that goes through the
            arena (``TORCHTROUPE_ARENA_MIN_BYTES``, 64 KiB by default).
    """

    spin_us: float | None
    park_slice_s: float
    ring_bytes: int
    native: bool
    arena_bytes: int
    arena_min_bytes: int


def load_settings() -> Settings:
    """Reads the ``TORCHTROUPE_*`` variables, falling back to the defaults."""
    ring_bytes = int(_float_from_env("TORCHTROUPE_RING_BYTES", float(4 << 20)))
    return Settings(
        spin_us=(
            _float_from_env("TORCHTROUPE_SPIN_US", 0.0)
            if os.environ.get("TORCHTROUPE_SPIN_US", "") != ""
            else None
        ),
        park_slice_s=_float_from_env("TORCHTROUPE_PARK_SLICE_S", 0.05),
        ring_bytes=ring_bytes,
        native=_flag_from_env("TORCHTROUPE_NATIVE", default=True),
        arena_bytes=int(_float_from_env("TORCHTROUPE_ARENA_BYTES", float(1 << 30))),
        arena_min_bytes=int(_float_from_env("TORCHTROUPE_ARENA_MIN_BYTES", float(64 << 10))),
    )


SETTINGS = load_settings()
