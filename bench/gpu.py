"""GPU benchmark: calls to GPU ranks, CUDA tensors by handle, NCCL group restarts.

Run on a machine with CUDA (``bench/gpu_suite.sh`` runs it on the lent GPU
machines): ``python -m bench.gpu [--quick] [--markdown-out FILE] [--no-doc]``.
Every number is measured beside its baseline in the same run.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

import torchtroupe as tt
from bench.actors import pipe_echo
from bench.common import (
    machine_markdown,
    markdown_table,
    median,
    percentile,
    replace_section,
    say,
    timed_us,
)
from tests.gpu.gpu_actors import CudaWorker
from torchtroupe.actors.rank_main import RANK_MODULE
from torchtroupe.processes.launch import start_context
from torchtroupe.testing import kill_rank


def time_calls(function: Callable[[], object], count: int) -> list[float]:
    """Microseconds per call of ``function``, after a warm-up."""
    return timed_us(count, max(10, count // 10), function)


def call_and_broadcast(world_sizes: list[int], count: int) -> list[list[object]]:
    rows: list[list[object]] = []
    pipe = median(
        pipe_echo(start_context("forkserver", (RANK_MODULE,)), count, max(10, count // 10))
    )
    rows.append(["multiprocessing.Pipe echo", 1, pipe, "—", "1.0"])
    for world_size in world_sizes:
        with tt.spawn(CudaWorker, world_size=world_size, devices="cuda") as group:
            if world_size == 1:
                calls = time_calls(lambda: group[0].call("pid"), count)
                rows.append(
                    [
                        "torchtroupe call",
                        1,
                        median(calls),
                        percentile(calls, 99),
                        f"{pipe / median(calls):.1f}",
                    ]
                )
            casts = time_calls(lambda: group.broadcast("pid"), count)
            rows.append(
                [
                    "torchtroupe broadcast",
                    world_size,
                    median(casts),
                    percentile(casts, 99),
                    f"{pipe / median(casts):.1f}",
                ]
            )
    return rows


def cuda_transfers(sizes_mib: list[int], count: int) -> list[list[object]]:
    """A CUDA tensor to a rank on the same GPU, and a rank's CUDA tensor back."""
    rows: list[list[object]] = []
    with tt.spawn(CudaWorker, world_size=1, devices="cuda") as group:
        for size in sizes_mib:
            n = size << 18  # float32: size MiB
            tensor = torch.ones(n, device="cuda:0")
            to_rank = time_calls(lambda t=tensor: group[0].call("shape", t), count)
            back = time_calls(lambda n=n: group[0].call("stored", n), count)
            copy = time_calls(lambda t=tensor: (t.clone(), torch.cuda.synchronize()), count)
            rows.append([f"{size} MiB", median(to_rank), median(back), median(copy)])
            del tensor
            group[0].call("stored", 1)
            torch.cuda.empty_cache()
    return rows


def nccl_all_reduces(world_size: int, count: int) -> list[float]:
    """Microseconds per broadcast of an endpoint that all-reduces 4 floats over NCCL."""
    with tt.spawn(CudaWorker, world_size=world_size, devices="cuda", distributed="nccl") as group:
        expected = [float(world_size)] * world_size
        assert group.broadcast("all_reduce", 1.0, timeout=120) == expected
        return time_calls(lambda: group.broadcast("all_reduce", 1.0, timeout=120), count)


def nccl_restarts(world_size: int, kills: int) -> list[float]:
    """Seconds from SIGKILL of one rank to a working all-reduce in the new NCCL group."""
    restarted = threading.Event()
    seen = [0]

    def on_event(event: tt.SupervisionEvent) -> None:
        if event.kind == "restarted":
            seen[0] += 1
            if seen[0] % world_size == 0:
                restarted.set()

    policy = tt.RestartPolicy(strategy="one_for_all", max_restarts=kills + 1, within_s=3600)
    samples = []
    with tt.spawn(
        CudaWorker,
        world_size=world_size,
        devices="cuda",
        distributed="nccl",
        restart=policy,
        on_event=on_event,
    ) as group:
        group.broadcast("all_reduce", 1.0, timeout=120)
        for _ in range(kills):
            restarted.clear()
            begin = time.perf_counter()
            kill_rank(group, world_size - 1)
            if not restarted.wait(120):
                raise RuntimeError("the NCCL group did not restart within 120 s")
            result = group.broadcast("all_reduce", 1.0, timeout=120)
            samples.append(time.perf_counter() - begin)
            assert result == [float(world_size)] * world_size
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--markdown-out", type=Path)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    gpus = torch.cuda.device_count()
    if gpus == 0:
        raise SystemExit("bench.gpu needs CUDA")
    count = 300 if args.quick else 3000
    world_sizes = sorted({1, *[n for n in (2, 4, 8) if n <= gpus], 2 * gpus if gpus >= 2 else 2})
    say(f"GPUs: {gpus} x {torch.cuda.get_device_name(0)}; cores: {os.cpu_count()}")
    calls = call_and_broadcast(world_sizes, count)
    sizes = [1, 16, 256] if args.quick else [1, 16, 256, 1024]
    tensors = cuda_transfers(sizes, 20 if args.quick else 100)
    restart_world = min(8, gpus) if gpus >= 2 else 1
    restarts = nccl_restarts(restart_world, 2 if args.quick else 5) if gpus >= 2 else []
    reduces = nccl_all_reduces(restart_world, 50 if args.quick else 500) if gpus >= 2 else []
    body = "\n\n".join(
        [
            "## GPU",
            f"Machine: {machine_markdown()}; {gpus} x {torch.cuda.get_device_name(0)}.",
            'No-op calls to ranks on GPUs (`devices="cuda"`; more ranks than GPUs share them), '
            "beside a `multiprocessing.Pipe` echo in the same run:",
            markdown_table(["what", "ranks", "median µs", "p99 µs", "Pipe / this"], calls),
            "A CUDA tensor sent to a rank on the same GPU (the rank answers its shape), and a "
            "CUDA tensor the rank holds returned to the caller: both travel as IPC handles, "
            "beside a device-to-device clone of the same size:",
            markdown_table(
                [
                    "tensor",
                    "to a rank, median µs",
                    "back from a rank, median µs",
                    "clone median µs",
                ],
                tensors,
            ),
            (
                f"NCCL all-reduce of 4 floats in a {restart_world}-rank group, one rank a GPU, "
                f"called by a broadcast: median {median(reduces):.0f} µs, "
                f"p99 {percentile(reduces, 99):.0f} µs."
            )
            if reduces
            else "NCCL all-reduce: needs 2 or more GPUs.",
            (
                f"Restart of a {restart_world}-rank NCCL group, `one_for_all` (SIGKILL of one rank "
                f"→ a new process group all-reduces correctly), over {len(restarts)} kills: "
                f"median {median(restarts):.2f} s, max {max(restarts):.2f} s."
            )
            if restarts
            else "NCCL restart: needs 2 or more GPUs.",
        ]
    )
    print(body)
    if args.markdown_out is not None:
        args.markdown_out.write_text(body + "\n", encoding="utf-8")
    if not args.no_doc:
        replace_section("gpu", body)


if __name__ == "__main__":
    main()
