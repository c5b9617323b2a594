"""Actors for the GPU tests (module level, so ranks can import them)."""

from __future__ import annotations

import os
import signal

import torch
import torch.distributed as dist

import torchtroupe as tt


class CudaWorker(tt.Actor):
    """A rank that reports its device, all-reduces, and touches tensors it is sent."""

    def __init__(self, tag: str = "") -> None:
        self.tag = tag
        self.kept: list[torch.Tensor] = []

    @tt.endpoint
    def where(self) -> tuple[str, int, str]:
        return (str(self.device), torch.cuda.current_device(), os.environ["LOCAL_RANK"])

    @tt.endpoint
    def all_reduce(self, value: float) -> float:
        tensor = torch.full((4,), value, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor[0].item())

    @tt.endpoint
    def add_in_place(self, tensor: torch.Tensor, amount: float) -> str:
        tensor.add_(amount)
        torch.cuda.synchronize()
        return str(tensor.device)

    @tt.endpoint
    def echo(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    @tt.endpoint
    def make(self, n: int, value: float) -> torch.Tensor:
        return torch.full((n,), value, device=self.device)

    @tt.endpoint
    def shape(self, tensor: torch.Tensor) -> tuple[int, ...]:
        return tuple(tensor.shape)

    @tt.endpoint
    def stored(self, n: int) -> torch.Tensor:
        """A tensor of ``n`` floats this rank allocated once and keeps."""
        if not self.kept or self.kept[0].numel() != n:
            self.kept = [torch.ones(n, device=self.device)]
        return self.kept[0]

    @tt.endpoint
    def checksum(self, tensor: torch.Tensor) -> float:
        return float(tensor.sum().item())

    @tt.endpoint
    def memory_allocated(self) -> int:
        torch.cuda.synchronize()
        return int(torch.cuda.memory_allocated(self.device))

    @tt.endpoint
    def device_side_assert(self) -> float:
        values = torch.ones(4, device=self.device)
        index = torch.tensor([40], device=self.device)
        return float(values[index].sum().item())  # out of bounds: a sticky CUDA error

    @tt.endpoint
    def pid(self) -> int:
        return os.getpid()

    @tt.endpoint
    def kill_self(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)
