"""A tensor-parallel executor on torchtroupe, in the shape of vLLM's MultiprocExecutor.

An MLP ``y = W2 relu(W1 x + b1) + b2`` is split Megatron-style over the workers:
worker ``i`` holds a slice of ``W1``'s rows (column parallel) and the matching
slice of ``W2``'s columns (row parallel). Each worker returns a partial output; the
executor sums the partials (the all-reduce) and adds ``b2``. ``collective_rpc``
is the executor's one entry point to the workers, built on ``group.broadcast``
(an endpoint by name) and ``group.run`` (any function). The sharded result is
compared with the unsharded MLP.

Run: ``python examples/tp_executor.py --world-size 2 --hidden 256``
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

import torchtroupe as tt


class Worker(tt.Actor):
    """One tensor-parallel shard of the MLP."""

    def __init__(self) -> None:
        self.w1 = self.b1 = self.w2 = torch.empty(0)

    @tt.endpoint
    def load_shard(self, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor) -> None:
        self.w1, self.b1, self.w2 = w1, b1, w2

    @tt.endpoint
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """This shard's partial output; the partials of all shards sum to the output."""
        hidden = torch.relu(x @ self.w1.T + self.b1)
        return hidden @ self.w2.T


class Executor:
    """Drives ``world_size`` workers, like vLLM's ``MultiprocExecutor``.

    Args:
        mlp: The unsharded MLP (``Linear``, ``ReLU``, ``Linear``) to split.
        world_size: Number of tensor-parallel workers.
    """

    def __init__(self, mlp: torch.nn.Sequential, world_size: int) -> None:
        first, _, second = mlp
        self.bias = second.bias.detach()
        self.group = tt.spawn(Worker, world_size=world_size, name="tp")
        try:
            # Scatter: rank i is sent only its own slices. A view would carry its whole
            # storage (the codec sends storages), so each slice is cloned first.
            w1 = first.weight.detach().chunk(world_size, dim=0)
            b1 = first.bias.detach().chunk(world_size, dim=0)
            w2 = second.weight.detach().chunk(world_size, dim=1)
            shards = [tuple(t.clone() for t in shard) for shard in zip(w1, b1, w2, strict=True)]
            self.group.scatter("load_shard", shards, timeout=60)
        except BaseException:
            self.group.shutdown()
            raise

    def collective_rpc(
        self,
        method: str | Callable[..., Any],
        *args: Any,
        timeout: float | None = 60,
        **kwargs: Any,
    ) -> list[Any]:
        """Runs ``method`` on every worker and returns the results in rank order.

        ``method`` is an endpoint name (sent with ``group.broadcast``) or a function
        called as ``method(worker, *args, **kwargs)`` (sent with ``group.run``).
        """
        if isinstance(method, str):
            return self.group.broadcast(method, *args, timeout=timeout, **kwargs)
        return self.group.run(method, *args, timeout=timeout, **kwargs)

    def execute(self, x: torch.Tensor) -> torch.Tensor:
        partials = self.collective_rpc("forward", x)
        return torch.stack(partials).sum(dim=0) + self.bias

    def close(self) -> None:
        self.group.shutdown()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def shard_shapes(worker: Worker) -> tuple[int, list[int], list[int]]:
    """Runs inside each worker through ``collective_rpc``: what does it hold?"""
    return worker.rank, list(worker.w1.shape), list(worker.w2.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256, help="divisible by --world-size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="forward passes to check")
    args = parser.parse_args()

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(args.features, args.hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(args.hidden, args.features),
    )
    with Executor(mlp, args.world_size) as executor:
        for rank, w1_shape, w2_shape in executor.collective_rpc(shard_shapes):
            print(f"worker {rank}: W1 shard {w1_shape}, W2 shard {w2_shape}")
        worst = 0.0
        for step in range(args.steps):
            x = torch.randn(args.batch, args.features)
            with torch.no_grad():
                expected = mlp(x)
            got = executor.execute(x)
            error = (got - expected).abs().max().item()
            worst = max(worst, error)
            print(f"step {step}: max |sharded - unsharded| = {error:.2e}")
        matches = worst < 1e-5
        print(f"sharded output matches the unsharded MLP: {matches}")
        if not matches:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
