"""A full hardware memory fence callable from Python.

Runs in any process and thread; it touches no Python state.

Note [Publication order and fences]
-----------------------------------
A ring record is published in two steps: the writer stores the payload and the
record header, then stores the new write cursor. A reader loads the cursor, then
the header and payload. Two orderings must hold on every CPU we run on:

* store→store on the writer (payload before cursor) and load→load on the reader
  (cursor before payload). x86-64 (TSO) never reorders stores with stores or loads
  with loads, so there the program order of CPython's own stores is enough: each
  ``memoryview`` item store is one aligned 8-byte ``mov`` inside a separate C call
  the compiler cannot move across. aarch64 may reorder both, so there the writer
  fences before it stores the cursor and the reader fences after it loads it.
* store→load for the doorbell protocol (the eventcount, see ``doorbell.py``): a
  waiter stores "parked" then loads the cursor; a writer stores the cursor then
  loads "parked". Both architectures may reorder a store with a later load (x86
  through its store buffer), so both sides fence between the two on every
  architecture; otherwise a wake-up could be lost.

The compiled ring core (``_ringcore.c``) uses C11 atomics: release stores and
acquire loads for the cursors and a sequentially consistent fence for the doorbell,
and exports that fence, which this module uses when the core is built. The rest of
this Note is about the pure-Python fallback.

Python has no fence primitive. On x86-64 every ``lock``-prefixed instruction is a
full barrier, and an uncontended ``threading.Lock`` acquire/release performs two
(CPython's lock is a compare-and-swap), so there the fence is a lock round trip:
the cheapest full barrier reachable from Python (about a third of a ctypes call).
On aarch64 a lock's acquire and release are one-way barriers, not a full fence, so
there we place two machine instructions, ``dmb ish`` and ``ret``, in an executable
anonymous page and call them through ctypes. Where the platform refuses an
executable mapping we fall back to the lock and log that ordering is best effort.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import platform
import threading
from collections.abc import Callable

from .._settings import SETTINGS

logger = logging.getLogger(__name__)

_FENCE_CODE = {
    "aarch64": bytes([0xBF, 0x3B, 0x03, 0xD5, 0xC0, 0x03, 0x5F, 0xD6]),  # dmb ish; ret
    "arm64": bytes([0xBF, 0x3B, 0x03, 0xD5, 0xC0, 0x03, 0x5F, 0xD6]),
}

# True where plain stores/loads keep program order among themselves (TSO), so the
# store→store and load→load fences of the ring can be skipped.
STORES_ARE_ORDERED = platform.machine() in ("x86_64", "AMD64", "i686", "i386")

_code_page: mmap.mmap | None = None


def _compile_fence() -> Callable[[], None] | None:
    global _code_page
    code = _FENCE_CODE.get(platform.machine())
    if code is None:
        return None
    try:
        page = mmap.mmap(
            -1,
            mmap.PAGESIZE,
            flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
            prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC,
        )
    except (OSError, ValueError, AttributeError):
        return None
    page.write(code)
    _code_page = page  # keep the mapping alive for the life of the process
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    function: Callable[[], None] = ctypes.CFUNCTYPE(None)(address)
    return function


def _lock_fence_factory() -> Callable[[], None]:
    lock = threading.Lock()

    def lock_fence() -> None:
        lock.acquire()
        lock.release()

    return lock_fence


def _make_fence() -> Callable[[], None]:
    if SETTINGS.native:
        try:
            from ._ringcore import full_fence as compiled_fence
        except ImportError:
            pass  # core.py says so, once
        else:
            fence: Callable[[], None] = compiled_fence
            return fence
    if STORES_ARE_ORDERED:
        return _lock_fence_factory()
    compiled = _compile_fence()
    if compiled is not None:
        return compiled
    logger.warning(
        "no executable page for a memory fence on %s; ring ordering is best effort",
        platform.machine(),
    )
    return _lock_fence_factory()


full_fence: Callable[[], None] = _make_fence()
"""Issues a full memory fence (see Note [Publication order and fences])."""
