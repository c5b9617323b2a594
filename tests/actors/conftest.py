"""Fixtures of the actor tests."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _collect_garbage_before_leak_check() -> Iterator[None]:
    """Runs the cyclic garbage collector after each test, before the suite's leak check.

    An ``ActorGroup`` and its ``ActorRef``s refer to each other, and a shut-down group
    keeps its mailbox's shared-memory fd open until the group is collected (see
    ``test_shutdown_releases_the_mailbox_shared_memory`` in test_group.py, which checks
    that bug directly). Without this, every test would be blamed for that one fd and
    the leak check would hide everything else it can find. This fixture is set up
    after the root conftest's leak check, so it is torn down (and collects) before it.
    """
    yield
    gc.collect()
