"""Supervision benchmark: how fast a death reaches the caller, and a restart serves.

Run with ``python -m bench.supervision`` (``--quick`` for fewer kills). In one run:

1. SIGKILL of a rank that is busy in a call → the caller's ``ActorDiedError``;
2. SIGKILL → the rank serving again under ``RestartPolicy("one_for_one")``;

beside the same for a plain ``multiprocessing`` worker over a Pipe, whose death the
caller sees through ``multiprocessing.connection.wait`` on its sentinel and the
Pipe, and which is respawned by hand from the same torch-preloaded forkserver.
It prints Markdown and rewrites the "supervision" section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any

import torchtroupe as tt
from bench.common import machine_markdown, markdown_table, median, percentile, replace_section, say
from torchtroupe.actors.rank_main import RANK_MODULE
from torchtroupe.processes.launch import start_context

TIMEOUT_S = 60.0


class Sleeper(tt.Actor):
    """Blocks in a call until killed; answers a ping."""

    @tt.endpoint
    def block(self) -> None:
        threading.Event().wait()

    @tt.endpoint
    def ping(self) -> int:
        return os.getpid()


def tt_kills(kills: int) -> tuple[list[float], list[float]]:
    """(SIGKILL → ActorDiedError, SIGKILL → serving again), in seconds."""
    restarted = threading.Event()

    def on_event(event: tt.SupervisionEvent) -> None:
        if event.kind == "restarted":
            restarted.set()

    to_error, to_serving = [], []
    policy = tt.RestartPolicy(strategy="one_for_one", max_restarts=kills + 1, within_s=3600)
    with tt.spawn(Sleeper, world_size=1, restart=policy, on_event=on_event) as group:
        for _ in range(kills):
            group[0].call("ping", timeout=TIMEOUT_S)
            restarted.clear()
            pending = group[0].call_async("block")
            pid = group.pids[0]
            assert pid is not None
            begin = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            try:
                pending.result(TIMEOUT_S)
            except tt.ActorDiedError:
                to_error.append(time.perf_counter() - begin)
            if not restarted.wait(TIMEOUT_S):
                raise RuntimeError("no restart")
            group[0].call("ping", timeout=TIMEOUT_S)
            to_serving.append(time.perf_counter() - begin)
    return to_error, to_serving


def _plain_worker(connection: Connection) -> None:
    while True:
        message = connection.recv()
        if message == "block":
            threading.Event().wait()
        connection.send(os.getpid())


def plain_kills(kills: int) -> tuple[list[float], list[float]]:
    """The baseline: a Pipe worker whose death is seen on its sentinel, respawned by hand."""
    context: Any = start_context("forkserver", (RANK_MODULE,))

    def start() -> tuple[Any, Connection]:
        parent, child = context.Pipe()
        process = context.Process(target=_plain_worker, args=(child,))
        process.start()
        child.close()
        parent.send("ping")
        parent.recv()
        return process, parent

    to_error, to_serving = [], []
    process, connection = start()
    try:
        for _ in range(kills):
            connection.send("block")
            begin = time.perf_counter()
            os.kill(process.pid, signal.SIGKILL)
            wait([process.sentinel, connection], TIMEOUT_S)
            to_error.append(time.perf_counter() - begin)
            process.join()
            connection.close()
            process, connection = start()
            to_serving.append(time.perf_counter() - begin)
    finally:
        connection.send("ping")
        process.kill()
        process.join()
        connection.close()
    return to_error, to_serving


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--kills", type=int)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    kills = args.kills or (8 if args.quick else 25)
    say(f"{kills} kills each")
    tt_error, tt_serving = tt_kills(kills)
    plain_error, plain_serving = plain_kills(kills)

    def row(name: str, samples: list[float], target: str) -> list[object]:
        return [name, median(samples) * 1e3, percentile(samples, 90) * 1e3, target]

    table = markdown_table(
        ["what", "median ms", "p90 ms", "target"],
        [
            row("torchtroupe: SIGKILL → caller's ActorDiedError", tt_error, "< 20 ms"),
            row("plain worker: SIGKILL → sentinel seen", plain_error, ""),
            row("torchtroupe: SIGKILL → rank serving again (one_for_one)", tt_serving, "< 100 ms"),
            row("plain worker: SIGKILL → respawned by hand, serving", plain_serving, ""),
        ],
    )
    body = "\n\n".join(
        [
            "## Supervision",
            f"`python -m bench.supervision`, {kills} kills of a rank busy in a call, medians. "
            f"Machine: {machine_markdown()}.",
            "Both start from the same torch-preloaded forkserver. The plain worker is the "
            "floor: it has no mailbox to fail, no policy and no `__init__` to re-run.",
            table,
        ]
    )
    print(body)
    if not args.no_doc:
        replace_section("supervision", body)


if __name__ == "__main__":
    main()
