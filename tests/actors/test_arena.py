"""Large CPU tensors travel through the tensor arenas: written once, received in place
(Note [The tensor arena] in transport/arena.py), through the public API."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import torch

import torchtroupe as tt
from tests.actors.arena_actors import ArenaUser
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT
from tests.transport.rings import wait_for
from torchtroupe.transport.arena_views import mapped_segments

MiB = 1 << 20


@pytest.fixture
def group() -> Iterator[tt.ActorGroup]:
    with tt.spawn(ArenaUser, world_size=2, timeout=LONG_TIMEOUT) as group:
        yield group


def _in_an_arena(tensor: torch.Tensor) -> bool:
    address = tensor.data_ptr()
    return any(start <= address < start + n for start, n in mapped_segments())


@pytest.mark.parametrize("nbytes", [64 << 10, 1 * MiB, 16 * MiB])
def test_a_large_tensor_goes_to_a_rank_and_back_unchanged(
    group: tt.ActorGroup, nbytes: int
) -> None:
    sent = torch.randn(nbytes // 4)
    returned = group[1].call("echo", sent, timeout=SHORT_TIMEOUT)
    assert torch.equal(returned, sent)
    assert _in_an_arena(returned)


def test_a_rank_receives_a_large_argument_inside_the_callers_arena(
    group: tt.ActorGroup,
) -> None:
    _, inside = group[0].call("where", torch.randn(MiB), timeout=SHORT_TIMEOUT)
    assert inside


def test_a_broadcast_tensor_reaches_every_rank_in_place(group: tt.ActorGroup) -> None:
    sent = torch.randn(MiB)
    expected = float(sent.double().sum())
    assert group.broadcast("total", sent, timeout=SHORT_TIMEOUT) == [expected, expected]
    assert [inside for _, inside in group.broadcast("where", sent, timeout=SHORT_TIMEOUT)] == [
        True,
        True,
    ]


def test_a_block_the_rank_dropped_is_used_again(group: tt.ActorGroup) -> None:
    # A rank keeps its last request until the next one arrives (Note [A rank keeps
    # its last request]): the first block is free again by the third call.
    first, _ = group[0].call("where", torch.randn(MiB), timeout=SHORT_TIMEOUT)
    second, _ = group[0].call("where", torch.randn(MiB), timeout=SHORT_TIMEOUT)
    third, _ = group[0].call("where", torch.randn(MiB), timeout=SHORT_TIMEOUT)
    assert second != first
    assert third == first


def test_a_result_the_caller_dropped_frees_its_block_in_the_rank(group: tt.ActorGroup) -> None:
    first = group[0].call("make", MiB, 1.0, timeout=SHORT_TIMEOUT)
    address = first.data_ptr()
    del first
    gc.collect()
    again = group[0].call("make", MiB, 2.0, timeout=SHORT_TIMEOUT)
    assert again.data_ptr() == address
    assert float(again[0]) == 2.0


def test_the_callers_later_writes_do_not_change_what_the_rank_keeps(
    group: tt.ActorGroup,
) -> None:
    sent = torch.zeros(MiB)
    group[0].call("keep", sent, timeout=SHORT_TIMEOUT)
    sent.fill_(1.0)
    assert group[0].call("total", sent, timeout=SHORT_TIMEOUT) == float(MiB)
    kept = group[0].call("echo", torch.zeros(1), timeout=SHORT_TIMEOUT)
    assert float(kept.sum()) == 0.0
    group[0].call("drop_all", timeout=SHORT_TIMEOUT)


def test_a_result_kept_after_shutdown_still_reads_right() -> None:
    with tt.spawn(ArenaUser, world_size=1, timeout=LONG_TIMEOUT) as group:
        result = group[0].call("make", 4 * MiB, 3.0, timeout=SHORT_TIMEOUT)
        assert _in_an_arena(result)
    gc.collect()
    assert torch.equal(result, torch.full((4 * MiB,), 3.0))
    del result


def test_a_killed_rank_holding_blocks_leaks_nothing_and_its_results_stay_valid() -> None:
    with tt.spawn(ArenaUser, world_size=2, timeout=LONG_TIMEOUT) as group:
        result = group[1].call("make", MiB, 5.0, timeout=SHORT_TIMEOUT)
        for _ in range(3):
            group[1].call("keep", torch.randn(MiB), timeout=SHORT_TIMEOUT)
        group.broadcast("keep", torch.randn(MiB), timeout=SHORT_TIMEOUT)
        arena = group._lifecycle.writer.arena
        assert arena.busy_blocks() == 4  # three kept by rank 1, one by both ranks
        with pytest.raises(tt.ActorDiedError):
            group[1].call("die", timeout=SHORT_TIMEOUT)
        # Its blocks are freed once its process is reaped, right after its death.
        wait_for(lambda: arena.busy_blocks() == 1)  # rank 0 holds the broadcast block
        assert torch.equal(result, torch.full((MiB,), 5.0))
        assert group[0].call("total", torch.ones(MiB), timeout=SHORT_TIMEOUT) == float(MiB)
    assert torch.equal(result, torch.full((MiB,), 5.0))
