"""Fixtures for the transport tests."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _collect_cycles_before_the_leak_check() -> Iterator[None]:
    """Frees reference cycles before the suite's leak check looks for open fds.

    An exception raised in a thread and re-raised by a future holds the frames it went
    through, and those frames hold the future: a cycle that keeps the test's shared
    regions (one fd each) alive until the garbage collector runs. Collecting here makes
    the leak check report only what is still reachable. (Teardown runs before the root
    conftest's leak check, which was set up first.)
    """
    yield
    gc.collect()
