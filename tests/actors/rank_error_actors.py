"""An actor whose endpoints raise what is hard to send back, and the exceptions it raises.

They live at module level in an importable module so that every rank can load them.
Each failure is deterministic. ``DIVIDE_LINE`` must stay the source line of
:meth:`Raiser.divide_ten_by`'s ``return``: the caret tests look for it.
"""

from __future__ import annotations

import sys

import torchtroupe as tt

DIVIDE_LINE = "return 10 // x"


class Unprintable(Exception):
    """An exception whose ``str()`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be printed")


class NotRebuildable(Exception):
    """An exception the caller cannot rebuild: ``cls.__new__(cls, *args)`` rejects its
    ``args``."""

    def __new__(cls, first: str, second: str) -> NotRebuildable:
        return super().__new__(cls)

    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first} and {second}")


def recurse_forever(depth: int) -> int:
    """Recurses until the recursion limit stops it."""
    return recurse_forever(depth + 1)


def recurse_then_raise(depth: int, error: BaseException) -> int:
    """Recurses ``depth`` levels, then raises ``error``."""
    if depth == 0:
        raise error
    return recurse_then_raise(depth - 1, error)


def chain_of(length: int) -> ValueError:
    """A ValueError at the end of a chain of ``length`` exceptions, each the cause of
    the next, each raised so that it has a traceback."""
    error: ValueError | None = None
    for link in range(length):
        try:
            raise ValueError(f"link {link}") from error
        except ValueError as raised:
            error = raised
    if error is None:
        raise ValueError("a chain has one exception at least")
    return error


class Raiser(tt.Actor):
    """Raises on request; answers ``ping`` to show it is still alive."""

    @tt.endpoint
    def ping(self) -> str:
        return "pong"

    @tt.endpoint
    def recursion_limit(self) -> int:
        return sys.getrecursionlimit()

    @tt.endpoint
    def recurse_forever(self) -> int:
        return recurse_forever(0)

    @tt.endpoint
    def recurse_under_raised_limit(self, limit: int, *, restore: bool) -> int:
        """Raises the recursion limit to ``limit`` and recurses until it is reached;
        puts the old limit back only if ``restore``."""
        old = sys.getrecursionlimit()
        sys.setrecursionlimit(limit)
        try:
            return recurse_forever(0)
        finally:
            if restore:
                sys.setrecursionlimit(old)

    @tt.endpoint
    def divide_ten_by(self, x: int) -> int:
        return 10 // x

    @tt.endpoint
    def fail_with_a_chain(self, length: int) -> None:
        raise chain_of(length)

    @tt.endpoint
    def fail_with_a_looping_chain(self) -> None:
        first, second = ValueError("first"), KeyError("second")
        first.__cause__ = second
        second.__cause__ = first
        raise first

    @tt.endpoint
    def fail_while_handling(self) -> None:
        try:
            raise KeyError("the first failure")
        except KeyError:
            raise ValueError("failed while handling it")  # noqa: B904 (the context is the point)

    @tt.endpoint
    def fail_unprintably(self) -> None:
        raise Unprintable()

    @tt.endpoint
    def fail_like_a_sticky_cuda_error(self) -> None:
        raise RuntimeError("CUDA error: device-side assert triggered")

    @tt.endpoint
    def fail_deep_and_not_rebuildable(self, depth: int) -> None:
        recurse_then_raise(depth, NotRebuildable("deep", "odd"))
