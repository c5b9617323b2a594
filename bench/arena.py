"""Tensor-arena benchmark: fresh CPU tensors through a group, both directions, in one run.

Run with ``python -m bench.arena`` (``--quick`` for a short run). For 1, 16 and 256
MiB float32 tensors (made once by their sender, never in shared memory) it times,
through the public API (``tt.spawn``, one rank):

* ``call(sink, x)`` (caller → rank) and ``call(give, n)`` (rank → caller), with the
  tensor arena (Note [The tensor arena], ``torchtroupe/transport/arena.py``) and
  with the arena turned off in that run (the ring path of before);
* ``x.clone()``, the fair single-copy baseline;
* a minimal vLLM-style shared-memory arena: the writer copies into a buffer both
  processes mapped beforehand and sends ``(offset, n)`` over a Pipe; the reader wraps
  the bytes with ``torch.frombuffer`` and acknowledges.

It prints a Markdown table (median and p99 GB/s, the p99 being the slow tail) and
writes it into the "arena" section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import multiprocessing
import os
from typing import Any

import torch

import torchtroupe as tt
from bench.common import machine_markdown, markdown_table, median, percentile, replace_section
from bench.common import say as log
from torchtroupe.transport.arena import SharedMapping, create_segment

MiB = 1 << 20
SIZES = (1 * MiB, 16 * MiB, 256 * MiB)


class Sink(tt.Actor):
    """Takes tensors and gives back tensors made once."""

    def __init__(self) -> None:
        self.made: dict[int, torch.Tensor] = {}

    @tt.endpoint
    def sink(self, tensor: torch.Tensor) -> int:
        return tensor.numel()

    @tt.endpoint
    def give(self, nbytes: int) -> torch.Tensor:
        if nbytes not in self.made:
            self.made[nbytes] = torch.randn(nbytes // 4)
        return self.made[nbytes]

    @tt.endpoint
    def use_arena(self, on: bool) -> None:
        """Turns this rank's reply arena off or back on (benchmark only)."""
        for obj in gc.get_objects():
            if type(obj).__name__ == "RankRuntime":
                if not hasattr(obj, "_bench_arena"):
                    obj._bench_arena = obj.encoder.arena
                obj.encoder.arena = obj._bench_arena if on else None


def _times(iterations: int, warmup: int, once: Any) -> list[float]:
    import time

    for _ in range(warmup):
        once()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        once()
        samples.append(time.perf_counter() - start)
    return samples


def vllm_style_reader(fd: int, nbytes: int, connection: Any) -> None:
    """The reader of the baseline arena: wraps each block with torch.frombuffer."""
    mapping = SharedMapping(fd, nbytes)
    import numpy as np

    buffer = np.asarray(mapping)
    while True:
        message = connection.recv()
        if message is None:
            return
        offset, count = message
        tensor = torch.frombuffer(buffer, dtype=torch.uint8, count=count, offset=offset)
        connection.send(tensor.numel())
        del tensor


def vllm_style(sizes: dict[int, tuple[int, int]]) -> dict[int, list[float]]:
    """Seconds per send through the baseline arena, per size."""
    capacity = max(sizes) + MiB
    fd, mapping = create_segment(capacity)
    parent, child = multiprocessing.Pipe()
    context = multiprocessing.get_context("fork")
    process = context.Process(target=vllm_style_reader, args=(fd, capacity, child))
    process.start()
    results = {}
    try:
        for nbytes, (iterations, warmup) in sizes.items():
            source = torch.randn(nbytes // 4)

            def once(source: torch.Tensor = source, nbytes: int = nbytes) -> None:
                ctypes.memmove(mapping.address, source.data_ptr(), nbytes)  # as the arena
                parent.send((0, nbytes))
                parent.recv()

            results[nbytes] = _times(iterations, warmup, once)
    finally:
        parent.send(None)
        process.join(30)
        os.close(fd)
    return results


def through_group(
    sizes: dict[int, tuple[int, int]], arena: bool
) -> dict[str, dict[int, list[float]]]:
    """Seconds per call, each direction, with the arenas on or off."""
    results: dict[str, dict[int, list[float]]] = {"to rank": {}, "from rank": {}}
    with tt.spawn(Sink, world_size=1, timeout=60) as group:
        rank = group[0]
        writer = group._lifecycle.writer
        saved = writer.encoder.arena
        if not arena:
            writer.encoder.arena = None
        rank.call("use_arena", arena)
        for nbytes, (iterations, warmup) in sizes.items():
            source = torch.randn(nbytes // 4)
            results["to rank"][nbytes] = _times(
                iterations, warmup, lambda source=source: rank.call("sink", source)
            )
            results["from rank"][nbytes] = _times(
                iterations, warmup, lambda nbytes=nbytes: rank.call("give", nbytes)
            )
        writer.encoder.arena = saved
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    options = parser.parse_args(argv)
    scale = 1 if options.quick else 3
    sizes = {1 * MiB: (100 * scale, 10), 16 * MiB: (20 * scale, 3), 256 * MiB: (4 * scale, 2)}
    load_before = os.getloadavg()
    log("arena on ...")
    on = through_group(sizes, arena=True)
    log("arena off (the ring) ...")
    off = through_group(sizes, arena=False)
    log("clone and the vLLM-style arena ...")
    clone: dict[int, list[float]] = {}
    for nbytes, (iterations, warmup) in sizes.items():
        source = torch.randn(nbytes // 4)
        clone[nbytes] = _times(iterations, warmup, lambda source=source: source.clone())
    baseline = vllm_style(sizes)
    load_after = os.getloadavg()

    def rate(samples: list[float], nbytes: int) -> str:
        return (
            f"{nbytes / median(samples) / 1e9:.1f} ({nbytes / percentile(samples, 99) / 1e9:.1f})"
        )

    rows = []
    for nbytes in sizes:
        for direction in ("to rank", "from rank"):
            arena_median = nbytes / median(on[direction][nbytes]) / 1e9
            vllm_median = nbytes / median(baseline[nbytes]) / 1e9
            rows.append(
                [
                    f"{nbytes // MiB} MiB",
                    direction,
                    rate(on[direction][nbytes], nbytes),
                    rate(off[direction][nbytes], nbytes),
                    rate(clone[nbytes], nbytes),
                    rate(baseline[nbytes], nbytes),
                    f"{arena_median / vllm_median:.2f}",
                ]
            )
    table = markdown_table(
        [
            "size",
            "direction",
            "arena GB/s median (p99)",
            "ring, arena off",
            "clone",
            "vLLM-style arena",
            "arena / vLLM-style",
        ],
        rows,
    )
    load = (
        f"Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; "
        f"after: {', '.join(f'{x:.2f}' for x in load_after)}."
    )
    body = (
        "## Tensor arena\n\n"
        "Fresh (unshared) float32 CPU tensors through `group[0].call(...)`, one rank, "
        "`python -m bench.arena`: caller → rank (`sink(x)`) and rank → caller "
        "(`give(n)` returns a tensor the rank made once). GB/s from the median time per "
        'call, the p99 (slow tail) in brackets. "ring, arena off" is the same group '
        "with the arena turned off in this run (the path before the arena); the "
        "vLLM-style arena is the minimal baseline in `bench/arena.py` (copy into a "
        "pre-mapped shared buffer, `(offset, n)` over a Pipe, `torch.frombuffer` in the "
        "reader).\n\n"
        f"{machine_markdown()}\n\n{load}\n\n{table}\n"
    )
    print(body)
    if not options.no_write:
        replace_section("arena", body)


if __name__ == "__main__":
    main()
