"""Fixtures of the supervision tests."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _collect_garbage_before_leak_check() -> Iterator[None]:
    """Collects garbage after each test, before the suite's leak check runs.

    A group and its refs form a cycle, and a shut-down group holds its mailbox's
    shared-memory fd until it is collected (tests/actors/conftest.py has the same
    fixture and test_group.py checks that bug directly).
    """
    yield
    gc.collect()
