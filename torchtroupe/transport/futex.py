"""Linux futex wait and wake on a word of shared memory, through ctypes.

Runs in any process and thread. ctypes releases the GIL around the system call,
so a parked thread lets the rest of its process run.

The futex is not process-private (no ``FUTEX_PRIVATE_FLAG``): the word lives in
memory shared between processes, and the kernel keys it by the mapped page.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

_SYS_FUTEX = {"x86_64": 202, "AMD64": 202, "aarch64": 98, "arm64": 98}
_FUTEX_WAIT = 0
_FUTEX_WAKE = 1
_WAKE_ALL = 0x7FFFFFFF


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

try:
    _FUTEX_NR = _SYS_FUTEX[platform.machine()]
except KeyError:
    raise ImportError(
        "torchtroupe's transport needs Linux futexes; "
        f"no futex syscall number is known for {platform.machine()}"
    ) from None


def futex_wait(address: int, expected: int, timeout_s: float) -> None:
    """Sleeps while the 32-bit word at ``address`` equals ``expected``.

    Returns when woken, when the word differs, on a signal, or after ``timeout_s``;
    callers always recheck their condition, so the reason does not matter.

    Args:
        address: Address of a 4-byte aligned word in shared memory.
        expected: The value the caller last saw; the kernel sleeps only if unchanged.
        timeout_s: Longest sleep in seconds (relative).
    """
    seconds = int(timeout_s)
    spec = _Timespec(seconds, int((timeout_s - seconds) * 1e9))
    result = _syscall(
        _FUTEX_NR,
        ctypes.c_void_p(address),
        _FUTEX_WAIT,
        ctypes.c_uint32(expected),
        ctypes.byref(spec),
        None,
        0,
    )
    if result == -1:
        code = ctypes.get_errno()
        if code not in (errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR):
            raise OSError(code, f"futex wait failed: {os.strerror(code)}")


def futex_wake(address: int, count: int = _WAKE_ALL) -> int:
    """Wakes up to ``count`` threads sleeping on the word at ``address``.

    Returns:
        How many sleepers were woken.
    """
    result = int(_syscall(_FUTEX_NR, ctypes.c_void_p(address), _FUTEX_WAKE, count, None, None, 0))
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, f"futex wake failed: {os.strerror(code)}")
    return result
