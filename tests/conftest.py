"""Suite-wide fixtures: a leak check around every test, and GPU tests skipped without CUDA."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
import torch.multiprocessing

from tests.timeouts import LONG_TIMEOUT
from torchtroupe.actors.rank_main import RANK_MODULE
from torchtroupe.processes.launch import start_context
from torchtroupe.testing import find_leaks, take_snapshot


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session", autouse=True)
def _persistent_helpers() -> None:
    """Start the session-long helper processes before any leak baseline is taken.

    The torch-preloaded forkserver and the multiprocessing resource tracker (which the
    forkserver starts) live until the interpreter exits. Started here, they are part of
    every test's baseline; otherwise the first test to spawn a rank would be blamed for
    them. Running one trivial process proves the server works.
    """
    ctx = start_context("forkserver", (RANK_MODULE,))  # the library's own preload list
    process = ctx.Process(target=os.getpid)  # type: ignore[attr-defined]
    process.start()
    process.join(LONG_TIMEOUT)
    if process.exitcode != 0:
        process.kill()
        process.join(LONG_TIMEOUT)
        pytest.fail(f"warming the forkserver failed: exit code {process.exitcode}")
    if torch.cuda.is_available():
        # The CUDA context and the first CUDA IPC export open fds (a native pipe pair
        # among them) that live as long as the process: make them part of the baseline.
        from torch.multiprocessing.reductions import reduce_tensor

        reduce_tensor(torch.zeros(1, device="cuda"))
        torch.cuda.synchronize()


# What CUDA and torch's CUDA IPC keep for the life of the process, once a test first
# shares a CUDA tensor: driver fds and eventfds, the driver's /dev/shm/cuda.shm.* and
# torch's reference-counter segments /dev/shm/torch_* (owned and unlinked by torch's
# shm manager when the last process using them is gone). Only GPU tests skip them.
_CUDA_RUNTIME_RESOURCES = ("/dev/nvidia", "anon_inode:[eventfd]", "/dev/shm/torch_", "cuda.shm.")


def _is_cuda_runtime_resource(leak: str) -> bool:
    return not leak.startswith(("child process", "thread")) and any(
        marker in leak for marker in _CUDA_RUNTIME_RESOURCES
    )


@pytest.fixture(autouse=True)
def _check_leaks(_persistent_helpers: None, request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail any test that leaves a child process, thread, open fd or /dev/shm entry."""
    before = take_snapshot()
    yield
    leaks = find_leaks(before)
    if request.node.get_closest_marker("gpu") is not None:
        leaks = [leak for leak in leaks if not _is_cuda_runtime_resource(leak)]
    if leaks:
        pytest.fail("test leaked:\n" + "\n".join(f"  - {leak}" for leak in leaks))
