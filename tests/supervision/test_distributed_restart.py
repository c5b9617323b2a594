"""A one_for_all restart of a DistributedDataParallel group over gloo (supervision/group_policy.py).

The whole process group dies with any rank, so one_for_all restarts every rank and
they form a new process group (a fresh store port); training then goes on.
"""

from __future__ import annotations

import math

import pytest
import torch

import torchtroupe as tt
from tests.supervision.actors_for_supervision import Trainer
from tests.supervision.events_for_tests import EventRecorder
from tests.timeouts import LONG_TIMEOUT
from torchtroupe.testing import kill_rank

WORLD_SIZE = 2


def batches(step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One (inputs, targets) batch per rank, fixed by ``step``."""
    generator = torch.Generator().manual_seed(step)
    weights = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    out = []
    for _ in range(WORLD_SIZE):
        inputs = torch.randn(8, 4, generator=generator)
        out.append((inputs, inputs @ weights))
    return out


def train(group: tt.ActorGroup, steps: range) -> list[list[float]]:
    return [group.scatter("train_step", batches(step), timeout=LONG_TIMEOUT) for step in steps]


def test_ddp_training_goes_on_after_one_for_all_restarts_a_killed_rank() -> None:
    recorder = EventRecorder()
    policy = tt.RestartPolicy(strategy="one_for_all", max_restarts=2)
    with tt.spawn(
        Trainer,
        args=(0,),
        world_size=WORLD_SIZE,
        distributed="gloo",
        restart=policy,
        on_event=recorder,
        timeout=LONG_TIMEOUT,
    ) as group:
        losses = train(group, range(3))
        assert all(math.isfinite(loss) for step in losses for loss in step)
        first, second = group.broadcast("weights_checksum", timeout=LONG_TIMEOUT)
        assert first == second  # DDP keeps the replicas identical
        before = list(group.pids)

        # Rank 0 alone enters a step: it blocks in DDP's all-reduce, waiting for rank 1.
        stuck = group[0].call_async("train_step", *batches(3)[0])
        mark = recorder.mark()
        kill_rank(group, 1)
        # Rank 0 is inside the all-reduce when rank 1 dies: either gloo notices first
        # (its error comes back as RuntimeError naming the peer), or the one_for_all
        # restart kills rank 0 first (ActorDiedError). Both fail the step; neither hangs.
        with pytest.raises((tt.ActorDiedError, RuntimeError)) as died:
            stuck.result(LONG_TIMEOUT)
        if isinstance(died.value, tt.ActorDiedError):
            assert died.value.rank == 0
        else:
            assert "Trainer rank 0" in "".join(getattr(died.value, "__notes__", []))
        recorder.wait_for("restarted", rank=0, since=mark)
        recorder.wait_for("restarted", rank=1, since=mark)

        after = list(group.pids)
        assert all(new is not None and new not in before for new in after)
        assert group.broadcast("process_group_info", timeout=LONG_TIMEOUT) == [
            (0, WORLD_SIZE, 0),
            (1, WORLD_SIZE, 0),
        ]
        losses = train(group, range(3, 6))
        assert all(math.isfinite(loss) for step in losses for loss in step)
        first, second = group.broadcast("weights_checksum", timeout=LONG_TIMEOUT)
        assert first == second
        assert group.broadcast("process_group_info", timeout=LONG_TIMEOUT) == [
            (0, WORLD_SIZE, 3),
            (1, WORLD_SIZE, 3),
        ]
