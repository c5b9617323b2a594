"""Ranks on real GPUs: devices, NCCL, CUDA tensors by IPC handle, restarts.

Skipped without CUDA (the ``gpu`` mark); run on the lent GPU machines through
``bench/gpu_suite.sh``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import torchtroupe as tt
from tests.gpu.gpu_actors import CudaWorker
from tests.supervision.events_for_tests import EventRecorder
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT
from torchtroupe.testing import kill_rank

pytestmark = pytest.mark.gpu


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def rank_counts() -> list[int]:
    return [n for n in (2, 4, 8) if n <= gpu_count()] or [1]


@pytest.fixture
def cuda_group() -> Iterator[tt.ActorGroup]:
    with tt.spawn(CudaWorker, world_size=1, devices="cuda") as group:
        yield group


@pytest.mark.parametrize("world_size", rank_counts())
def test_devices_cuda_puts_rank_i_on_cuda_i(world_size: int) -> None:
    with tt.spawn(CudaWorker, world_size=world_size, devices="cuda") as group:
        places = group.broadcast("where", timeout=LONG_TIMEOUT)
    count = gpu_count()
    assert places == [(f"cuda:{i % count}", i % count, str(i)) for i in range(world_size)]


@pytest.mark.parametrize("world_size", rank_counts())
def test_nccl_all_reduce_sums_over_every_rank(world_size: int) -> None:
    with tt.spawn(CudaWorker, world_size=world_size, devices="cuda", distributed="nccl") as group:
        sums = group.scatter(
            "all_reduce", [(float(i + 1),) for i in range(world_size)], timeout=LONG_TIMEOUT
        )
    expected = float(sum(range(1, world_size + 1)))
    assert sums == [expected] * world_size


def test_a_cuda_argument_is_shared_not_copied(cuda_group: tt.ActorGroup) -> None:
    tensor = torch.zeros(1 << 20, device="cuda:0")
    device = cuda_group[0].call("add_in_place", tensor, 3.0, timeout=LONG_TIMEOUT)
    torch.cuda.synchronize()
    assert device == "cuda:0"
    assert float(tensor.min().item()) == 3.0  # the rank wrote into our memory


def test_a_cuda_result_comes_back_on_the_gpu_with_its_values(cuda_group: tt.ActorGroup) -> None:
    result = cuda_group[0].call("make", 1000, 2.5, timeout=LONG_TIMEOUT)
    assert result.is_cuda
    assert float(result.sum().item()) == 2500.0


def test_a_cuda_tensor_a_rank_received_can_be_sent_back(cuda_group: tt.ActorGroup) -> None:
    # CUDA IPC cannot re-export imported memory: the rank clones it once on the device.
    tensor = torch.arange(1000, device="cuda:0", dtype=torch.float32)
    echoed = cuda_group[0].call("echo", tensor, timeout=LONG_TIMEOUT)
    assert echoed.is_cuda and echoed.device == tensor.device
    assert torch.equal(echoed, tensor)


def test_passing_cuda_tensors_a_thousand_times_does_not_grow_device_memory(
    cuda_group: tt.ActorGroup,
) -> None:
    def one_round() -> None:
        tensor = torch.ones(1 << 18, device="cuda:0")
        assert cuda_group[0].call("checksum", tensor, timeout=SHORT_TIMEOUT) == float(1 << 18)

    for _ in range(50):
        one_round()
    torch.cuda.synchronize()
    caller_before = torch.cuda.memory_allocated(0)
    rank_before = cuda_group[0].call("memory_allocated", timeout=SHORT_TIMEOUT)
    for _ in range(1000):
        one_round()
    torch.cuda.synchronize()
    torch.cuda.ipc_collect()
    assert torch.cuda.memory_allocated(0) <= caller_before + (4 << 20)
    assert cuda_group[0].call("memory_allocated", timeout=SHORT_TIMEOUT) <= rank_before + (4 << 20)


def test_a_killed_rank_restarts_a_nccl_group_that_all_reduces_again() -> None:
    world_size = max(rank_counts())
    watch = EventRecorder()
    policy = tt.RestartPolicy(strategy="one_for_all", max_restarts=3)
    with tt.spawn(
        CudaWorker,
        world_size=world_size,
        devices="cuda",
        distributed="nccl",
        restart=policy,
        on_event=watch,
    ) as group:
        assert (
            group.broadcast("all_reduce", 1.0, timeout=LONG_TIMEOUT)
            == [float(world_size)] * world_size
        )
        old_pids = group.pids
        kill_rank(group, world_size - 1)
        watch.wait_for("restarted", count=world_size)
        assert all(new != old for new, old in zip(group.pids, old_pids, strict=True))
        assert (
            group.broadcast("all_reduce", 2.0, timeout=LONG_TIMEOUT)
            == [2.0 * world_size] * world_size
        )


def test_a_sticky_cuda_error_escalates_and_the_group_restarts() -> None:
    watch = EventRecorder()
    policy = tt.RestartPolicy(strategy="one_for_all", max_restarts=3)
    with tt.spawn(
        CudaWorker, world_size=1, devices="cuda", restart=policy, on_event=watch
    ) as group:
        old_pid = group.pids[0]
        with pytest.raises(Exception, match=r"device-side assert|CUDA error") as raised:
            group[0].call("device_side_assert", timeout=LONG_TIMEOUT)
        assert not isinstance(raised.value, tt.CallTimeoutError)
        watch.wait_for("restarted")
        exits = [e for e in watch.events if e.kind == "exited"]
        assert exits and exits[0].exitcode == 70  # tt.fatal's exit code: escalated, not a crash
        assert group.pids[0] != old_pid
        assert group[0].call("make", 4, 1.0, timeout=LONG_TIMEOUT).sum().item() == 4.0
