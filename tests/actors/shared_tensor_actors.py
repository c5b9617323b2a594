"""Actors for the shared-memory tensor tests (module level, so ranks import them)."""

from __future__ import annotations

import torch

import torchtroupe as tt


class Toucher(tt.Actor):
    """Writes into tensors it is sent and reports where their memory is."""

    @tt.endpoint
    def fill(self, tensor: torch.Tensor, value: float) -> int:
        tensor.fill_(value)
        return tensor.untyped_storage().data_ptr()

    @tt.endpoint
    def give_back(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    @tt.endpoint
    def make_shared(self, numel: int, value: float) -> torch.Tensor:
        return torch.full((numel,), value).share_memory_()

    @tt.endpoint
    def is_shared(self, tensor: torch.Tensor) -> bool:
        return tensor.is_shared()
