"""A pytest fixture that fails a test which leaves processes, threads, fds or shm behind.

Enable it in a ``conftest.py`` (it is not registered as an entry point)::

    pytest_plugins = ["torchtroupe.testing.pytest_plugin"]

and ask for it by name::

    def test_group_cleans_up(no_leaks):
        with tt.spawn(Worker, world_size=2) as group:
            group.broadcast("step", torch.ones(3))

Start long-lived helpers (a forkserver, say) before the first test that uses the fixture,
or they are reported as leaks of that test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .leaks import LeakSnapshot, assert_no_leaks, take_snapshot

__all__ = ["no_leaks"]


@pytest.fixture
def no_leaks() -> Iterator[LeakSnapshot]:
    """Snapshot before the test and fail its teardown if anything leaked.

    Runs in the test's process and thread, around the test body.

    Yields:
        The snapshot taken before the test.

    Raises:
        AssertionError: At teardown, listing every leak.
    """
    before = take_snapshot()
    yield before
    assert_no_leaks(before)
