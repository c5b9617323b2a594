"""Tensors already in shared memory travel as handles: the rank uses the same memory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import torchtroupe as tt
from tests.actors.shared_tensor_actors import Toucher
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT


@pytest.fixture
def group() -> Iterator[tt.ActorGroup]:
    with tt.spawn(Toucher, world_size=2, timeout=LONG_TIMEOUT) as group:
        yield group


def test_a_rank_writes_into_the_callers_shared_tensor(group: tt.ActorGroup) -> None:
    tensor = torch.zeros(1000).share_memory_()
    group[0].call("fill", tensor, 3.0, timeout=SHORT_TIMEOUT)
    assert torch.equal(tensor, torch.full((1000,), 3.0))


def test_sending_the_same_shared_tensor_again_reuses_the_ranks_mapping(
    group: tt.ActorGroup,
) -> None:
    tensor = torch.zeros(1000).share_memory_()
    first = group[0].call("fill", tensor, 1.0, timeout=SHORT_TIMEOUT)
    second = group[0].call("fill", tensor, 2.0, timeout=SHORT_TIMEOUT)
    assert first == second
    assert tensor[0].item() == 2.0


def test_a_broadcast_shares_the_tensor_with_every_rank(group: tt.ActorGroup) -> None:
    tensor = torch.zeros(10).share_memory_()
    assert group.broadcast("is_shared", tensor, timeout=SHORT_TIMEOUT) == [True, True]


def test_a_shared_view_keeps_its_offset_and_shape(group: tt.ActorGroup) -> None:
    base = torch.zeros(4, 5).share_memory_()
    group[1].call("fill", base[1:3, 2:], 7.0, timeout=SHORT_TIMEOUT)
    expected = torch.zeros(4, 5)
    expected[1:3, 2:] = 7.0
    assert torch.equal(base, expected)


def test_a_shared_tensor_sent_back_is_the_callers_memory(group: tt.ActorGroup) -> None:
    tensor = torch.zeros(8).share_memory_()
    returned = group[0].call("give_back", tensor, timeout=SHORT_TIMEOUT)
    returned[3] = 5.0
    assert tensor[3].item() == 5.0


def test_a_shared_tensor_made_by_a_rank_arrives_shared(group: tt.ActorGroup) -> None:
    made = group[0].call("make_shared", 6, 2.5, timeout=SHORT_TIMEOUT)
    assert made.is_shared()
    assert torch.equal(made, torch.full((6,), 2.5))


def test_a_plain_tensor_is_still_copied(group: tt.ActorGroup) -> None:
    tensor = torch.zeros(10)
    group[0].call("fill", tensor, 4.0, timeout=SHORT_TIMEOUT)
    assert tensor.sum().item() == 0.0  # the rank wrote into its own copy
