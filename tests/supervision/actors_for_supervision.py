"""Actor classes used by the tests of ``torchtroupe/supervision``.

They live at module level in an importable module so that every rank can load them.
Each fault is deterministic: the test names the rank, the exit code or the pid at
which an endpoint misbehaves.
"""

from __future__ import annotations

import multiprocessing.util
import os
import sys
import threading

import torch
import torch.distributed as dist

import torchtroupe as tt


class Counter(tt.Actor):
    """Remembers its ``__init__`` arguments and counts the calls it ran."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.invocations = 0

    @tt.endpoint
    def identity(self) -> tuple[int, int, str]:
        """``(rank, pid, label)``: which incarnation answered, built with which args."""
        return self.rank, os.getpid(), self.label

    @tt.endpoint
    def count_and_hang_in(self, pid: int) -> int:
        """Counts this call, then hangs for ever if this process is ``pid``.

        A replay of the call into a new incarnation (another pid) would return and
        leave its mark in :meth:`invocation_count`.
        """
        self.invocations += 1
        if os.getpid() == pid:
            threading.Event().wait()
        return self.invocations

    @tt.endpoint
    def invocation_count(self) -> int:
        return self.invocations

    @tt.endpoint
    def fail_fatally(self, reason: str) -> None:
        tt.fatal(reason)

    @tt.endpoint
    def exit_normally(self) -> None:
        """``sys.exit(0)``: the rank ends with a normal exit."""
        sys.exit(0)

    @tt.endpoint
    def exit_abnormally(self, code: int) -> None:
        os._exit(code)


def _append_line(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as log:
        log.write(line + "\n")


class StopRecorder(Counter):
    """A Counter that appends ``"<label> <rank>"`` to ``log_path`` when it stops cleanly.

    The line is written by a multiprocessing finaliser, which the rank's process runs
    as it exits after a graceful STOP, so the file lists clean stops in order.
    """

    def __init__(self, label: str, log_path: str) -> None:
        super().__init__(label)
        multiprocessing.util.Finalize(
            self, _append_line, args=(log_path, f"{label} {self.rank}"), exitpriority=10
        )


class Trainer(tt.Actor):
    """A tiny linear model under DistributedDataParallel (gloo)."""

    def __init__(self, seed: int) -> None:
        torch.manual_seed(seed + self.rank)  # different per rank: DDP must sync them
        model = torch.nn.Linear(4, 1)
        self.model = torch.nn.parallel.DistributedDataParallel(model)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)
        self.steps = 0

    @tt.endpoint
    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        self.optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(self.model(inputs), targets)
        loss.backward()  # DDP all-reduces the gradients here
        self.optimizer.step()
        self.steps += 1
        return float(loss.item())

    @tt.endpoint
    def weights_checksum(self) -> list[float]:
        return [float(p.detach().double().sum()) for p in self.model.parameters()]

    @tt.endpoint
    def process_group_info(self) -> tuple[int, int, int]:
        """``(rank, world_size, steps)`` as torch.distributed and this actor see them."""
        return dist.get_rank(), dist.get_world_size(), self.steps


class CrashesOnSecondStart(tt.Actor):
    """Counts its incarnations in a file; the second one dies in ``__init__``."""

    def __init__(self, count_path: str) -> None:
        with open(count_path, "a+", encoding="utf-8") as counter:
            counter.seek(0)
            starts = len(counter.read())
            counter.write("x")
        if starts == 1:
            os._exit(3)

    @tt.endpoint
    def pid(self) -> int:
        return os.getpid()
