"""A reader's side of tensor arenas: mapping their segments and wrapping blocks.

Runs in any process that receives messages (the caller, for its ranks' replies; a
rank, for its caller's requests), on the thread that decodes them; the registry is
guarded by a lock, and a block's release runs on whichever thread drops the
block's last tensor.

Note [Received tensors outlive the group]
-----------------------------------------
A tensor received through an arena (Note [The tensor arena], ``arena.py``) is
``torch.from_numpy`` of a numpy slice of the reader's :class:`SharedMapping` of the
segment: the tensor's storage holds the slice, the slice holds the mapping, and the
mapping is unmapped only when its last holder goes. The registry below holds each
mapping too, while its owner lives, so later messages find it; forgetting an arena
(:func:`forget_arenas_of`, when its owner ended, or the group shut down) drops only
the registry's reference. So a result kept after ``group.shutdown()``, or after the
rank that sent it was killed, stays valid: the memfd's pages live as long as some
process maps them, and this process does until the tensor dies.

When the slice dies, a ``weakref.finalize`` stores 0 into this reader's flag in the
block's header; that is the release. It happens once per block and reader (the
finalizer runs at most once), and after the owner died it writes into memory nobody
reads, which is harmless.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence

import numpy as np
import torch

from .arena import SharedMapping, arena_owner
from .fence import full_fence
from .region import raw_bytes

_registry: dict[int, dict[int, SharedMapping]] = {}
_lock = threading.Lock()


def _release(mapping: SharedMapping, flag: int) -> None:
    full_fence()  # this reader's last accesses to the block come before the release
    raw_bytes(mapping.address + flag, 1)[0] = 0


def block_storage(
    descriptor: tuple[int, ...],
    nbytes: int,
    fds: Sequence[int],
    reader: int,
) -> torch.UntypedStorage:
    """The storage of a span placed in an arena: the block itself, not a copy.

    Args:
        descriptor: ``(arena, segment, block, offset, segment_bytes, fd_index)``, as
            read from the wire.
        nbytes: The span's length.
        fds: The fds passed beside the message (``fd_index`` indexes them).
        reader: This process's reader index in that arena.

    Raises:
        ValueError: The message names a segment this process never received.
    """
    key, segment, start, offset, segment_bytes, fd_index = descriptor
    with _lock:
        segments = _registry.setdefault(key, {})
        mapping = segments.get(segment)
        if mapping is None or (fd_index >= 0 and mapping.nbytes != segment_bytes):
            if fd_index < 0:
                raise ValueError(
                    f"a message names segment {segment} of arena {key:#x} (process "
                    f"{arena_owner(key)}), which this process never received"
                )
            mapping = segments[segment] = SharedMapping(fds[fd_index], segment_bytes)
    whole: np.ndarray = np.asarray(mapping)
    block = whole[offset : offset + nbytes]
    weakref.finalize(block, _release, mapping, start + reader).atexit = False
    return torch.from_numpy(block).untyped_storage()


def forget_arenas_of(pid: int) -> None:
    """Drops the registry's mappings of every arena that process ``pid`` owns; tensors
    on them stay valid (Note [Received tensors outlive the group])."""
    with _lock:
        for key in [key for key in _registry if arena_owner(key) == pid]:
            del _registry[key]


def forget_arena(key: int) -> None:
    """Drops the registry's mappings of arena ``key`` (see :func:`forget_arenas_of`)."""
    with _lock:
        _registry.pop(key, None)


def mapped_segments() -> list[tuple[int, int]]:
    """``(address, nbytes)`` of every segment this process maps through the registry
    (for tests)."""
    with _lock:
        return [(m.address, m.nbytes) for s in _registry.values() for m in s.values()]
