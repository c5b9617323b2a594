"""Tests for torchtroupe/testing/leaks.py: each kind of leak is seen, a clean block is not.

Each test creates its leak on purpose, checks that find_leaks reports it, and removes it
again before returning so that the suite's own leak check passes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from tests.timeouts import SHORT_TIMEOUT
from torchtroupe.testing import assert_no_leaks, find_leaks, take_snapshot

# Short: the leaks below are meant to stay, so waiting for them to go only costs time.
SETTLE_S = 0.2


def test_find_leaks_reports_a_thread_that_is_still_running() -> None:
    before = take_snapshot()
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="leaky-thread-under-test")
    thread.start()
    try:
        leaks = find_leaks(before, settle_timeout=SETTLE_S)
    finally:
        release.set()
        thread.join(SHORT_TIMEOUT)
    assert any("leaky-thread-under-test" in leak for leak in leaks), leaks
    assert not thread.is_alive()


def test_find_leaks_reports_an_open_file_descriptor_and_its_target() -> None:
    before = take_snapshot()
    read_fd, write_fd = os.pipe()
    try:
        leaks = find_leaks(before, settle_timeout=SETTLE_S)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    for fd in (read_fd, write_fd):
        assert any(f"file descriptor {fd} " in leak and "pipe:" in leak for leak in leaks), leaks


def test_find_leaks_reports_a_running_child_process_with_its_pid() -> None:
    before = take_snapshot()
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        leaks = find_leaks(before, settle_timeout=SETTLE_S)
    finally:
        assert child.stdin is not None
        child.stdin.close()  # EOF: the child's read returns and it exits.
        child.wait(SHORT_TIMEOUT)
    assert any(f"pid {child.pid} still running" in leak for leak in leaks), leaks


def test_find_leaks_waits_for_a_child_that_is_exiting() -> None:
    before = take_snapshot()
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    assert child.stdin is not None
    child.stdin.close()
    # The child may not have exited yet; find_leaks waits for its exit (pidfd) and for
    # the reap, which this thread does next, so the wait must not reap it itself.
    reaper = threading.Thread(target=child.wait, name="reaper")
    reaper.start()
    try:
        leaks = find_leaks(before, settle_timeout=SHORT_TIMEOUT)
    finally:
        reaper.join(SHORT_TIMEOUT)
    assert leaks == []
    assert child.returncode == 0


def test_find_leaks_reports_nothing_for_a_block_that_cleans_up() -> None:
    before = take_snapshot()
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    os.close(write_fd)
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join(SHORT_TIMEOUT)
    assert find_leaks(before, settle_timeout=0) == []
    assert_no_leaks(before, settle_timeout=0)
