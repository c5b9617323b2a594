"""The demo that ``make demo`` runs: what torchtroupe does, in thirty seconds.

Runs in the caller; the ``Worker`` class below is what each rank runs.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
import traceback

import torch

from .actors import Actor, endpoint
from .errors import ActorDiedError
from .supervision import spawn


class Worker(Actor):
    """A toy rank: scales tensors, fails on request, and does nothing fast."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    @endpoint
    def step(self, x: torch.Tensor) -> torch.Tensor:
        """Scales ``x`` on this rank's device and brings it back to the CPU."""
        return (x.to(self.device) * self.scale + self.rank).cpu()

    @endpoint
    def fail(self, reason: str) -> None:
        """Raises, to show a remote traceback."""
        raise ValueError(f"rank {self.rank} refuses: {reason}")

    @endpoint
    def noop(self) -> None:
        """Does nothing (for latency)."""

    @endpoint
    def hang(self) -> None:
        """Blocks until the rank is killed."""
        time.sleep(3600)


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def run_demo(world_size: int = 4) -> None:
    """Prints a tour: broadcast, scatter, a remote traceback, a death, latencies."""
    devices = "cuda" if torch.cuda.is_available() else None
    where = f"{torch.cuda.device_count()} GPU(s)" if devices else "CPU"
    print(f"torchtroupe demo: {world_size} ranks on {where}\n")
    started = time.perf_counter()
    with spawn(Worker, args=(2.0,), world_size=world_size, devices=devices, name="demo") as group:
        print(
            f"spawned {world_size} ranks in {time.perf_counter() - started:.2f} s, "
            f"pids {group.pids}"
        )

        print("\nbroadcast('step', ones(3)) -> one result per rank:")
        for rank, result in enumerate(group.broadcast("step", torch.ones(3), timeout=30)):
            print(f"  rank {rank}: {result.tolist()}")

        chunks = torch.arange(world_size * 2, dtype=torch.float32).chunk(world_size)
        scattered = group.scatter("step", [(chunk,) for chunk in chunks], timeout=30)
        print("\nscatter('step', chunk i to rank i):")
        for rank, result in enumerate(scattered):
            print(f"  rank {rank}: {chunks[rank].tolist()} -> {result.tolist()}")

        print("\nan endpoint raises; the caller gets the same type, with the rank's frames:")
        try:
            group[1].call("fail", "demo input", timeout=30)
        except ValueError as error:
            print("".join("  " + line for line in traceback.format_exception(error)))

        calls = []
        for _ in range(2000):
            begin = time.perf_counter()
            group[0].call("noop", timeout=30)
            calls.append(time.perf_counter() - begin)
        broadcasts = []
        for _ in range(1000):
            begin = time.perf_counter()
            group.broadcast("noop", timeout=30)
            broadcasts.append(time.perf_counter() - begin)
        rows = [
            ("no-op call, one rank", _median_us(calls)),
            (f"no-op broadcast, {world_size} ranks", _median_us(broadcasts)),
        ]
        print("latency (median):")
        print(f"  | {'what':<28} | {'µs':>7} |")
        print(f"  | {'-' * 28} | {'-' * 7} |")
        for what, micros in rows:
            print(f"  | {what:<28} | {micros:7.1f} |")
        print(f"  (on {os.cpu_count()} cores; see docs/benchmarks.md for baselines)")

        victim = group.pids[world_size - 1]
        print(f"\nrank {world_size - 1} (pid {victim}) is busy in a call; we SIGKILL it:")
        pending = group[world_size - 1].call_async("hang")
        assert victim is not None
        killed_at = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        try:
            pending.result(timeout=30)
        except ActorDiedError as error:
            elapsed_ms = (time.perf_counter() - killed_at) * 1e3
            print(f"  the caller got ActorDiedError after {elapsed_ms:.1f} ms: {error}")
        print(
            "\nother ranks still answer:",
            group[0].call("step", torch.zeros(1), timeout=30).tolist(),
        )
    print("\nshut down: every rank reaped, nothing left in /dev/shm.")
