"""Tests for torchtroupe/testing/faults.py: each injector causes the fault it names."""

from __future__ import annotations

import gc
import signal
from collections.abc import Iterator

import pytest

import torchtroupe as tt
from tests.supervision.actors_for_supervision import Counter
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT
from torchtroupe.testing import exit_rank, hung_rank, kill_rank, segfault_rank


@pytest.fixture
def group() -> Iterator[tt.ActorGroup]:
    with tt.spawn(Counter, args=("faults",), world_size=2, timeout=LONG_TIMEOUT) as spawned:
        yield spawned
    del spawned
    # A shut-down group holds its mailbox's fd until collected (tests/actors/conftest.py).
    gc.collect()


def test_kill_rank_kills_that_rank_with_sigkill(group: tt.ActorGroup) -> None:
    pid = kill_rank(group, 1)

    assert pid is not None
    with pytest.raises(tt.ActorDiedError) as died:
        group[1].call("identity", timeout=SHORT_TIMEOUT)
    assert (died.value.rank, died.value.pid) == (1, pid)
    assert (died.value.exitcode, died.value.signal_name) == (-signal.SIGKILL, "SIGKILL")
    assert group[0].call("identity", timeout=SHORT_TIMEOUT)[0] == 0


def test_segfault_rank_ends_that_rank_with_sigsegv(group: tt.ActorGroup) -> None:
    pid = segfault_rank(group, 0)

    with pytest.raises(tt.ActorDiedError) as died:
        group[0].call("identity", timeout=SHORT_TIMEOUT)
    assert (died.value.rank, died.value.pid) == (0, pid)
    assert (died.value.exitcode, died.value.signal_name) == (-11, "SIGSEGV")


def test_exit_rank_fails_its_future_with_the_exit_code(group: tt.ActorGroup) -> None:
    pid = group[1].pid

    future = exit_rank(group, 1, code=7)

    with pytest.raises(tt.ActorDiedError) as died:
        future.result(SHORT_TIMEOUT)
    assert (died.value.rank, died.value.pid, died.value.exitcode) == (1, pid, 7)
    assert died.value.signal_name is None


def test_exit_rank_exits_with_code_3_by_default(group: tt.ActorGroup) -> None:
    with pytest.raises(tt.ActorDiedError) as died:
        exit_rank(group, 0).result(SHORT_TIMEOUT)
    assert died.value.exitcode == 3


def test_hung_rank_answers_nothing_until_the_block_ends(group: tt.ActorGroup) -> None:
    with hung_rank(group, 1) as pid:
        assert pid == group[1].pid
        with pytest.raises(tt.CallTimeoutError):
            group[1].call("identity", timeout=0.2)
        assert group[0].call("identity", timeout=SHORT_TIMEOUT)[0] == 0  # others serve on

    assert group[1].call("identity", timeout=SHORT_TIMEOUT) == (1, pid, "faults")
