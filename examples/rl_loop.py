"""An RL-style loop: rollout ranks act with the latest policy, a trainer learns from them.

Two groups under one ``tt.Supervisor``: ``rollout`` (2 ranks) and ``trainer`` (1 rank).
Each iteration the trainer's weights are broadcast to the rollouts as tensors, the
rollouts produce fake trajectories (random observations, noisy actions, rewards from
a hidden linear "environment"), and the trainer takes one reward-weighted regression
step on them. The mean reward should rise as the policy approaches the hidden map.

Run: ``python examples/rl_loop.py --steps 20``
"""

from __future__ import annotations

import argparse
import time

import torch

import torchtroupe as tt

OBS_DIM, ACT_DIM = 8, 2


class Rollout(tt.Actor):
    """Acts in a fake environment with the policy it was last sent."""

    def __init__(self, env_seed: int, batch: int) -> None:
        # Every rollout rank builds the same hidden environment from the shared seed,
        # and its own noise stream from its rank.
        hidden = torch.Generator().manual_seed(env_seed)
        self.true_map = torch.randn(ACT_DIM, OBS_DIM, generator=hidden)
        self.noise = torch.Generator().manual_seed(env_seed + 1 + self.rank)
        self.batch = batch
        self.policy = torch.nn.Linear(OBS_DIM, ACT_DIM)

    @tt.endpoint
    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.policy.load_state_dict(state_dict)

    @tt.endpoint
    def collect(self) -> dict[str, torch.Tensor]:
        """One batch of (observation, action, reward) from the current policy."""
        obs = torch.randn(self.batch, OBS_DIM, generator=self.noise)
        with torch.no_grad():
            actions = self.policy(obs) + 0.5 * torch.randn(
                self.batch, ACT_DIM, generator=self.noise
            )
        rewards = -((actions - obs @ self.true_map.T) ** 2).sum(dim=1)
        return {"obs": obs, "actions": actions, "rewards": rewards}


class Trainer(tt.Actor):
    """Holds the policy and improves it by reward-weighted regression."""

    def __init__(self, seed: int, lr: float) -> None:
        torch.manual_seed(seed)
        self.policy = torch.nn.Linear(OBS_DIM, ACT_DIM)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=lr)

    @tt.endpoint
    def weights(self) -> dict[str, torch.Tensor]:
        # state_dict() holds detached tensors; their bytes are copied into the reply
        # ring as the reply is sent, so later training steps do not change them.
        return dict(self.policy.state_dict())

    @tt.endpoint
    def train_step(self, batches: list[dict[str, torch.Tensor]]) -> float:
        obs = torch.cat([b["obs"] for b in batches])
        actions = torch.cat([b["actions"] for b in batches])
        rewards = torch.cat([b["rewards"] for b in batches])
        # Imitate the better actions more: weights are a softmax of the rewards.
        weights = torch.softmax(rewards / rewards.std().clamp_min(1e-6), dim=0)
        loss = (weights * ((self.policy(obs) - actions) ** 2).sum(dim=1)).sum()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="training iterations")
    parser.add_argument("--batch", type=int, default=256, help="samples per rollout rank")
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()

    children = [
        tt.ChildSpec(name="rollout", actor=Rollout, args=(1234, args.batch), world_size=2),
        tt.ChildSpec(name="trainer", actor=Trainer, args=(0, args.lr), world_size=1),
    ]
    # one_for_all: if either side dies, both restart together from a consistent state.
    started = time.perf_counter()
    with tt.Supervisor(strategy="one_for_all", max_restarts=2, children=children) as sup:
        print(f"3 ranks ready in {time.perf_counter() - started:.2f} s")
        rollouts, trainer = sup["rollout"], sup["trainer"][0]
        first_reward = last_reward = 0.0
        for step in range(args.steps):
            state_dict = trainer.call("weights", timeout=60)
            rollouts.broadcast("load_weights", state_dict, timeout=60)
            batches = rollouts.broadcast("collect", timeout=60)  # one batch per rank
            loss = trainer.call("train_step", batches, timeout=60)
            reward = float(torch.cat([b["rewards"] for b in batches]).mean())
            if step == 0:
                first_reward = reward
            last_reward = reward
            print(f"step {step:3d}  loss {loss:8.4f}  mean reward {reward:8.3f}")
        print(f"mean reward went from {first_reward:.3f} to {last_reward:.3f}")


if __name__ == "__main__":
    main()
