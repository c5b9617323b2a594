"""Actor benchmark: torchtroupe calls, broadcasts and starts against Pipe baselines.

Run with ``python -m bench.actors`` (``--quick`` for a short run, ``--ranks 1,2,4,8``
for the broadcast widths). It measures, in one run:

1. the round trip of a no-op ``call`` to one rank, against a ``multiprocessing.Pipe``
   echo child (a small pickled tuple sent and received back) and against a one-worker
   vLLM-style ``collective_rpc`` executor over Pipes;
2. a no-op ``broadcast`` (with the gather of the results) to 1, 2, 4, 8 ranks, against
   ``collective_rpc`` over Pipes with the same number of workers;
3. the time until 4 ranks are ready: ``tt.spawn`` from a warm forkserver, ``tt.spawn``
   with ``start_method="spawn"``, and the bare baseline of 4 processes started from
   the same forkserver (and, in a full run, with ``spawn``) that import torch and
   report back over a Pipe.

It prints Markdown and rewrites the "actors" section of ``docs/benchmarks.md``.
Nothing is pinned to a core.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.multiprocessing

import torchtroupe as tt
from bench.common import (
    machine_markdown,
    markdown_table,
    median,
    percentile,
    replace_section,
    say,
    shm_entries,
    target_status,
    timed_us,
)
from bench.peers.executor import PipeExecutor

TIMEOUT_S = 60.0  # no single wait of this benchmark should come near this
JOIN_TIMEOUT_S = 10.0
STARTUP_RANKS = 4

# Targets (DESIGN.md "Performance").
TARGET_CALL_US = 5.0
TARGET_PIPE_RATIO = 4.0
TARGET_READY_S = 0.5
TARGET_BROADCAST8_US = 15.0
BROADCAST_TARGET_CORES = 16


# --- the actor ------------------------------------------------------------------------


class Noop(tt.Actor):
    """The benchmarked actor: a no-op endpoint and one that names its rank."""

    @tt.endpoint
    def noop(self) -> None:
        return None

    @tt.endpoint
    def whoami(self) -> int:
        return int(self.rank)


# --- baselines (module-level so that forkserver/spawn children find them by name) ------


def pipe_echo_child(connection: Any) -> None:
    """Echoes every object it receives over a duplex Pipe; ``None`` stops it."""
    while True:
        message = connection.recv()
        if message is None:
            return
        connection.send(message)


class RpcWorker:
    """The worker object of the collective_rpc baseline."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def noop(self) -> None:
        return None

    def whoami(self) -> int:
        return self.rank


def bare_child(connection: Any) -> None:
    """The bare start baseline: import torch, report the pid, exit."""
    import torch as _torch  # noqa: F401  (already imported in a preloaded forkserver)

    connection.send(os.getpid())
    connection.close()


def _reap(processes: Sequence[Any], graceful: bool) -> None:
    """Joins, else terminates, else kills every process; raises on a bad exit code."""
    for process in processes:
        process.join(JOIN_TIMEOUT_S if graceful else 0.5)
        if process.is_alive():
            process.terminate()
            process.join(JOIN_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join()
    if graceful:
        bad = [p.exitcode for p in processes if p.exitcode != 0]
        if bad:
            raise RuntimeError(f"baseline workers exited with codes {bad}")


# --- timing ---------------------------------------------------------------------------


def tt_call(iterations: int, warmup: int) -> list[float]:
    group = tt.spawn(Noop, world_size=1, timeout=TIMEOUT_S)
    try:
        ref = group[0]
        if ref.call("whoami", timeout=TIMEOUT_S) != 0 or ref.call("noop", timeout=TIMEOUT_S):
            raise AssertionError("torchtroupe call returned a wrong result")
        return timed_us(iterations, warmup, lambda: ref.call("noop", timeout=TIMEOUT_S))
    finally:
        group.shutdown()


def pipe_echo(context: Any, iterations: int, warmup: int) -> list[float]:
    ours, theirs = context.Pipe(duplex=True)
    process = context.Process(target=pipe_echo_child, args=(theirs,), daemon=True)
    process.start()
    theirs.close()
    message = ("noop", (), {})
    graceful = False
    try:

        def once() -> None:
            ours.send(message)
            if not ours.poll(TIMEOUT_S):
                raise TimeoutError("the Pipe echo child did not answer")
            ours.recv()

        ours.send(message)
        if ours.recv() != message:
            raise AssertionError("the Pipe echo changed the message")
        samples = timed_us(iterations, warmup, once)
        ours.send(None)
        graceful = True
        return samples
    finally:
        _reap([process], graceful)
        ours.close()


def executor_rpc(context: Any, world_size: int, iterations: int, warmup: int) -> list[float]:
    """The vLLM-style executor of bench/peers, with :class:`RpcWorker` workers."""
    executor = PipeExecutor(context, world_size, RpcWorker)
    try:
        if executor.collective_rpc("whoami", timeout=TIMEOUT_S) != list(range(world_size)):
            raise AssertionError("collective_rpc returned wrong results")
        return timed_us(
            iterations, warmup, lambda: executor.collective_rpc("noop", timeout=TIMEOUT_S)
        )
    finally:
        executor.shutdown()


def tt_broadcast(world_size: int, iterations: int, warmup: int) -> list[float]:
    group = tt.spawn(Noop, world_size=world_size, timeout=TIMEOUT_S)
    try:
        if group.broadcast("whoami", timeout=TIMEOUT_S) != list(range(world_size)):
            raise AssertionError("torchtroupe broadcast returned wrong results")
        return timed_us(iterations, warmup, lambda: group.broadcast("noop", timeout=TIMEOUT_S))
    finally:
        group.shutdown()


# --- startup ---------------------------------------------------------------------------


def tt_ready_s(start_method: str, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds from ``tt.spawn`` to its return (every rank ready), and to shut down."""
    ready, stopped = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        group = tt.spawn(
            Noop, world_size=STARTUP_RANKS, start_method=start_method, timeout=TIMEOUT_S
        )
        middle = time.perf_counter()
        try:
            if group.broadcast("whoami", timeout=TIMEOUT_S) != list(range(STARTUP_RANKS)):
                raise AssertionError("a freshly spawned group answered wrongly")
        finally:
            before_stop = time.perf_counter()
            group.shutdown()
        ready.append(middle - start)
        stopped.append(time.perf_counter() - before_stop)
    return ready, stopped


def bare_ready_s(context: Any, repeats: int) -> list[float]:
    """Seconds until 4 processes of ``context`` imported torch and reported their pid."""
    times = []
    for _ in range(repeats):
        processes, connections = [], []
        graceful = False
        start = time.perf_counter()
        try:
            for _rank in range(STARTUP_RANKS):
                ours, theirs = context.Pipe(duplex=False)
                process = context.Process(target=bare_child, args=(theirs,), daemon=True)
                process.start()
                theirs.close()
                processes.append(process)
                connections.append(ours)
            for process, connection in zip(processes, connections, strict=True):
                if not connection.poll(TIMEOUT_S) or connection.recv() != process.pid:
                    raise RuntimeError("a bare baseline child did not report its pid")
            times.append(time.perf_counter() - start)
            graceful = True
        finally:
            _reap(processes, graceful)
            for connection in connections:
                connection.close()
    return times


# --- report ----------------------------------------------------------------------------


def _ranks(text: str) -> list[int]:
    ranks = sorted({int(part) for part in text.split(",") if part.strip()})
    if not ranks or ranks[0] < 1:
        raise argparse.ArgumentTypeError("--ranks wants positive integers, e.g. 1,2,4,8")
    return ranks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a short run (under 60 s), noisier numbers"
    )
    parser.add_argument(
        "--ranks", type=_ranks, default=[1, 2, 4, 8], help="broadcast widths (default 1,2,4,8)"
    )
    parser.add_argument(
        "--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    call_iterations = 2_000 if quick else 20_000
    bcast_iterations = 500 if quick else 5_000
    fork_repeats = 5 if quick else 15
    spawn_repeats = 1 if quick else 3

    torch.set_num_threads(1)
    context = torch.multiprocessing.get_context("forkserver")
    spawn_context = torch.multiprocessing.get_context("spawn")
    shm_before = shm_entries()
    load_before = os.getloadavg()[0]
    started = time.perf_counter()

    # 1. call round trip. The first tt.spawn starts the (torch-preloaded) forkserver
    # that the baselines then share.
    say(f"call round trip: {call_iterations} timed after {call_iterations // 10} warm-up each")
    calls: dict[str, list[float]] = {}
    warm = call_iterations // 10
    say("  torchtroupe call")
    calls['torchtroupe `group[0].call("noop")`'] = tt_call(call_iterations, warm)
    say("  Pipe echo")
    calls["`multiprocessing.Pipe` echo (send/recv a pickled tuple)"] = pipe_echo(
        context, call_iterations, warm
    )
    say("  collective_rpc, 1 worker")
    calls["`collective_rpc` over Pipes, 1 worker"] = executor_rpc(context, 1, call_iterations, warm)
    call_names = list(calls)
    call_median = {name: median(samples) for name, samples in calls.items()}
    tt_call_median = call_median[call_names[0]]
    pipe_median = call_median[call_names[1]]

    # 2. broadcast + gather.
    say(f"broadcast to {args.ranks}: {bcast_iterations} timed after {bcast_iterations // 10}")
    bcast: dict[int, tuple[list[float], list[float]]] = {}
    for n in args.ranks:
        say(f"  {n} rank(s)")
        ours = tt_broadcast(n, bcast_iterations, bcast_iterations // 10)
        theirs = executor_rpc(context, n, bcast_iterations, bcast_iterations // 10)
        bcast[n] = (ours, theirs)

    # 3. startup.
    say(f"{STARTUP_RANKS} ranks ready: warm-up spawn, then {fork_repeats} from the forkserver")
    tt_ready_s("forkserver", 1)  # the forkserver is warm already; this warms the rest
    fork_ready, fork_stop = tt_ready_s("forkserver", fork_repeats)
    bare_fork = bare_ready_s(context, fork_repeats)
    say(f"  start_method='spawn' x{spawn_repeats}")
    spawn_ready, spawn_stop = tt_ready_s("spawn", spawn_repeats)
    bare_spawn = [] if quick else bare_ready_s(spawn_context, spawn_repeats)

    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()[0]
    leaked = sorted(shm_entries() - shm_before)
    children = multiprocessing.active_children()

    # --- tables
    call_rows = [
        [
            name,
            call_median[name],
            percentile(calls[name], 99),
            call_median[name] / tt_call_median,
        ]
        for name in call_names
    ]
    call_table = markdown_table(
        ["method", "median µs", "p99 µs", "this median / torchtroupe median"], call_rows
    )
    bcast_rows = []
    for n, (ours, theirs) in bcast.items():
        bcast_rows.append(
            [
                n,
                median(ours),
                percentile(ours, 99),
                median(theirs),
                percentile(theirs, 99),
                median(theirs) / median(ours),
            ]
        )
    bcast_table = markdown_table(
        [
            "ranks",
            "torchtroupe median µs",
            "torchtroupe p99 µs",
            "collective_rpc median µs",
            "collective_rpc p99 µs",
            "collective_rpc / torchtroupe",
        ],
        bcast_rows,
    )

    def ready_row(label: str, times: list[float], stops: list[float] | None) -> list[object]:
        if not times:
            return [label, 0, "—", "—", "—", "—"]
        return [
            label,
            len(times),
            f"{median(times):.3f}",
            f"{min(times):.3f}",
            f"{max(times):.3f}",
            f"{median(stops):.3f}" if stops else "—",
        ]

    ready_table = markdown_table(
        ["how", "runs", "median s", "min s", "max s", "shutdown median s"],
        [
            ready_row("`tt.spawn`, warm forkserver", fork_ready, fork_stop),
            ready_row("bare: 4 forkserver processes import torch, report", bare_fork, None),
            ready_row('`tt.spawn(start_method="spawn")`', spawn_ready, spawn_stop),
            ready_row("bare: 4 `spawn` processes import torch, report", bare_spawn, None),
        ],
    )

    cores = os.cpu_count() or 1
    targets = [
        [
            f"no-op call ≤ {TARGET_CALL_US:g} µs median",
            f"{tt_call_median:.1f} µs",
            target_status(tt_call_median <= TARGET_CALL_US),
        ],
        [
            f"call ≥ {TARGET_PIPE_RATIO:g}x faster than the Pipe echo",
            f"{pipe_median / tt_call_median:.2f}x",
            target_status(pipe_median / tt_call_median >= TARGET_PIPE_RATIO),
        ],
        [
            f"{STARTUP_RANKS} ranks ready from a warm forkserver < {TARGET_READY_S:g} s",
            f"{median(fork_ready):.3f} s",
            target_status(median(fork_ready) < TARGET_READY_S),
        ],
    ]
    if 8 in bcast:
        b8 = median(bcast[8][0])
        status = target_status(b8 <= TARGET_BROADCAST8_US)
        if cores < BROADCAST_TARGET_CORES:
            status += f" (target only meaningful on ≥ {BROADCAST_TARGET_CORES} cores; here {cores})"
        targets.append(
            [f"broadcast to 8 ranks ≤ {TARGET_BROADCAST8_US:g} µs median", f"{b8:.1f} µs", status]
        )
    target_table = markdown_table(["target", "measured", "status"], targets)

    mode = "`--quick`" if quick else "full"
    oversubscribed = [n for n in bcast if n + 1 > cores]
    over_note = (
        f" With {cores} cores, the runs with {', '.join(map(str, oversubscribed))} ranks have more "
        "processes than cores (the caller counts too), so they measure scheduling as much as "
        "the transport."
        if oversubscribed
        else ""
    )
    body = f"""\
## Actors

`python -m bench.actors` ({mode} run, {elapsed:.0f} s). Machine: {machine_markdown()}.

**This is a noisy {cores}-core VM** that other jobs share: medians move by up to about
2x between runs, p99s more. Compare the ratios of one run, and rerun before reading much
into one number. One-minute load average {load_before:.1f} at the start of this run and
{load_after:.1f} at its end (this run's own processes included). Nothing is pinned to a
core; the garbage collector is on; each operation is timed one by one with
`time.perf_counter_ns`, and every call passes a `timeout=`.
All workers (ranks and baselines) come from the same torch-preloaded `forkserver`, except
the `spawn` rows of the start-up table.{over_note}

Baselines, written in `bench/actors.py`:

- **Pipe echo**: one child echoing over a duplex `multiprocessing.Pipe`; the caller
  `send`s the pickled tuple `("noop", (), {{}})` and `recv`s it back.
- **`collective_rpc` over Pipes**, in the manner of vLLM's multiprocessing executor:
  one worker process per rank, each with its own Pipe; the driver sends
  `("noop", ())` to every worker, and each runs the method on its worker object and
  sends back `(ok, result)`; the driver collects every reply in rank order.

### No-op call to one rank

{call_iterations} timed round trips each after {warm} warm-up ones.

{call_table}

### No-op broadcast and gather

`group.broadcast("noop")` (returns the list of results) against `collective_rpc("noop")`
with as many workers; {bcast_iterations} timed after {bcast_iterations // 10} warm-up ones,
a fresh group and executor per width.

{bcast_table}

### {STARTUP_RANKS} ranks ready

From the call to `tt.spawn(Noop, world_size={STARTUP_RANKS})` to its return (every rank
has built its actor and reported ready). One spawn and shutdown first warms everything up
(the forkserver is already running, started by the earlier sections); then
{fork_repeats} timed spawns from it, and {spawn_repeats} with `start_method="spawn"`, which
imports torch afresh in every rank. The bare baselines start {STARTUP_RANKS} plain
`multiprocessing` processes (same forkserver, resp. `spawn`) whose target imports torch
and sends its pid back over a Pipe; the time is until all {STARTUP_RANKS} pids arrived.
Those children, unlike torchtroupe's ranks, also re-import the benchmark's `__main__`
module (cheap: its imports are preloaded in the forkserver).
{"The bare `spawn` baseline is left out of `--quick` runs." if quick else ""}

{ready_table}

### Targets

{target_table}
"""
    print(body)
    if leaked:
        say(f"WARNING: new entries in /dev/shm: {leaked}")
    else:
        say("nothing left in /dev/shm")
    if children:
        say(f"WARNING: child processes still alive: {children}")
    if not args.no_doc:
        replace_section("actors", body)
        say("updated docs/benchmarks.md")


if __name__ == "__main__":
    main()
