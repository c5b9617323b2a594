"""Actors for the tensor-arena tests (module level, so ranks import them)."""

from __future__ import annotations

import gc
import os
import signal

import torch

import torchtroupe as tt
from torchtroupe.transport.arena_views import mapped_segments


def _inside(address: int, spans: list[tuple[int, int]]) -> bool:
    return any(start <= address < start + nbytes for start, nbytes in spans)


class ArenaUser(tt.Actor):
    """Receives and returns large tensors, and says where their memory is."""

    def __init__(self) -> None:
        self.kept: list[torch.Tensor] = []

    @tt.endpoint
    def echo(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    @tt.endpoint
    def total(self, tensor: torch.Tensor) -> float:
        return float(tensor.double().sum())

    @tt.endpoint
    def make(self, numel: int, value: float) -> torch.Tensor:
        return torch.full((numel,), value)

    @tt.endpoint
    def where(self, tensor: torch.Tensor) -> tuple[int, bool]:
        """The tensor's address, and whether it lies in a mapped arena segment."""
        address = tensor.data_ptr()
        return address, _inside(address, mapped_segments())

    @tt.endpoint
    def keep(self, tensor: torch.Tensor) -> int:
        self.kept.append(tensor)
        return len(self.kept)

    @tt.endpoint
    def drop_all(self) -> None:
        self.kept.clear()
        gc.collect()

    @tt.endpoint
    def die(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)
