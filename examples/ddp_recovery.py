"""Data-parallel training that survives a killed rank and resumes from a checkpoint.

Two ranks train a small model under ``DistributedDataParallel`` over gloo. Rank 0
saves a checkpoint every ``--checkpoint-every`` steps. Mid-training we SIGKILL rank 1
(``torchtroupe.testing.kill_rank``): the gloo process group dies with it, so the
group's ``one_for_all`` policy restarts *both* ranks, which form a new process group
and reload the checkpoint in ``__init__``. Training continues from the checkpointed
step, and at the end both ranks hold identical weights.

Run: ``python examples/ddp_recovery.py --steps 12 --kill-at 7``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

import torch
import torch.distributed as dist

import torchtroupe as tt
from torchtroupe.testing import kill_rank

WORLD_SIZE = 2
IN_FEATURES = 16


def batch(step: int, rank: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (inputs, targets) batch of ``rank`` at ``step``: the same after a restart."""
    generator = torch.Generator().manual_seed(step * WORLD_SIZE + rank)
    inputs = torch.randn(size, IN_FEATURES, generator=generator)
    targets = inputs.sum(dim=1, keepdim=True).sin()
    return inputs, targets


class DataParallelTrainer(tt.Actor):
    """One DDP replica. ``__init__`` runs again, in a new process, on every restart."""

    def __init__(self, checkpoint_path: str, checkpoint_every: int) -> None:
        self.checkpoint_path = checkpoint_path
        self.checkpoint_every = checkpoint_every
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(IN_FEATURES, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)
        )
        optimizer_state = None
        self.step = 0
        if os.path.exists(checkpoint_path):  # a restarted rank: resume
            checkpoint = torch.load(checkpoint_path)
            model.load_state_dict(checkpoint["model"])
            optimizer_state = checkpoint["optimizer"]
            self.step = checkpoint["step"]
        # torch.distributed is already initialised: spawn(distributed="gloo") did it.
        self.model = torch.nn.parallel.DistributedDataParallel(model)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)

    @tt.endpoint
    def resume_step(self) -> int:
        """The step this incarnation starts (or went on) from."""
        return self.step

    @tt.endpoint
    def train_step(self, step: int, batch_size: int) -> float:
        if step != self.step:
            raise ValueError(f"rank {self.rank} is at step {self.step}, asked for step {step}")
        inputs, targets = batch(step, self.rank, batch_size)
        self.optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(self.model(inputs), targets)
        loss.backward()  # DDP all-reduces the gradients across both ranks here
        self.optimizer.step()
        self.step += 1
        if self.rank == 0 and self.step % self.checkpoint_every == 0:
            self._save_checkpoint()
        return loss.item()

    def _save_checkpoint(self) -> None:
        partial = self.checkpoint_path + ".partial"
        torch.save(
            {
                "model": self.model.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "step": self.step,
            },
            partial,
        )
        os.replace(partial, self.checkpoint_path)  # never a half-written checkpoint

    @tt.endpoint
    def weights(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in self.model.parameters()])

    @tt.endpoint
    def process_group_size(self) -> int:
        return dist.get_world_size()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="training steps in all")
    parser.add_argument("--checkpoint-every", type=int, default=4)
    parser.add_argument("--kill-at", type=int, default=7, help="kill rank 1 after this step")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--checkpoint-dir", default=None, help="where to keep the checkpoint (default: a temp dir)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint_path = os.path.join(args.checkpoint_dir or scratch, "ddp_recovery.pt")
        if os.path.exists(checkpoint_path):
            os.remove(checkpoint_path)  # start from scratch, not from an older run
        train(args, checkpoint_path)


def train(args: argparse.Namespace, checkpoint_path: str) -> None:
    restarted_ranks: set[int] = set()
    all_restarted = threading.Event()

    def on_event(event: tt.SupervisionEvent) -> None:
        # Runs on torchtroupe's monitor or restart thread: keep it short.
        print(f"  event: {event.kind} rank={event.rank} pid={event.pid} t={event.time:.3f}")
        if event.kind == "restarted" and event.rank is not None:
            restarted_ranks.add(event.rank)
            if len(restarted_ranks) == WORLD_SIZE:
                all_restarted.set()

    with tt.spawn(
        DataParallelTrainer,
        args=(checkpoint_path, args.checkpoint_every),
        world_size=WORLD_SIZE,
        distributed="gloo",
        restart=tt.RestartPolicy(strategy="one_for_all", max_restarts=3),
        on_event=on_event,
        name="ddp",
    ) as group:
        step = 0
        while step < args.steps:
            losses = group.broadcast("train_step", step, args.batch_size, timeout=60)
            print(f"step {step:3d}  loss per rank {[round(x, 4) for x in losses]}")
            step += 1
            if step == args.kill_at and not all_restarted.is_set():
                print(f"killing rank 1 (pid {group[1].pid}) after step {step - 1}")
                killed_at = time.perf_counter()
                kill_rank(group, 1)
                if not all_restarted.wait(timeout=60):
                    raise RuntimeError("the ranks were not restarted within 60 s")
                print(f"both ranks restarted in {time.perf_counter() - killed_at:.2f} s")
                step = group[0].call("resume_step", timeout=60)
                print(f"resuming from the checkpoint at step {step}")
        final = group.broadcast("weights", timeout=60)
        same = torch.equal(final[0], final[1])
        print(f"final weights identical on both ranks: {same}")
        if not same:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
