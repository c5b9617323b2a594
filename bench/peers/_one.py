"""Measures one peer (``python -m bench.peers._one PEER --out FILE [--quick]``).

Run by ``python -m bench.peers``, one fresh process per peer. Writes its results as
JSON to FILE after every workload, so a peer that crashes or hangs part way still
leaves what it measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import psutil
import torch

from bench.common import say
from bench.common import timed_us as common_timed_us
from bench.peers.peers import PEERS, Peer

MIB = 1 << 20
TENSOR_MIB = (1, 16, 256)
WIDTHS = (1, 2, 4, 8)
READY_WORKERS = 4
IDLE_S = 2.0


def counts(quick: bool) -> dict[str, Any]:
    return {
        "calls": 300 if quick else 2000,
        "broadcasts": 100 if quick else 500,
        "tensor": {1: 10, 16: 5, 256: 2} if quick else {1: 30, 16: 15, 256: 5},
        "ready": 1 if quick else 4,
        "kills": 2 if quick else 5,
    }


def timed_us(n: int, once: Callable[[], object]) -> list[float]:
    """``n`` timed calls of ``once`` after ``n // 10`` warm-up ones, in µs."""
    return common_timed_us(n, max(1, n // 10), once)


def make_peer(key: str) -> Peer:
    if key == "ray":
        from bench.peers.external import RayActors

        return RayActors()
    if key == "monarch":
        from bench.peers.external import MonarchActors

        return MonarchActors()
    return PEERS[key]()


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            out[pid] = times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return out


def idle_cpu(peer: Peer) -> dict[str, float]:
    """% of one core used over IDLE_S with no calls: workers, the caller, other helpers."""
    workers = peer.pids()
    me = os.getpid()
    helpers = [p.pid for p in psutil.Process(me).children(recursive=True) if p.pid not in workers]
    groups = {"workers": workers, "caller": [me], "helpers": helpers}
    before = {name: cpu_seconds(pids) for name, pids in groups.items()}
    begin = time.perf_counter()
    threading.Event().wait(IDLE_S)
    window = time.perf_counter() - begin
    after = {name: cpu_seconds(pids) for name, pids in groups.items()}
    result = {}
    for name in groups:
        used = sum(
            after[name][pid] - before[name][pid] for pid in after[name] if pid in before[name]
        )
        result[name] = 100.0 * used / window
    result["helper_processes"] = float(len(helpers))
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("peer")
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = counts(args.quick)
    torch.set_num_threads(1)
    results: dict[str, Any] = {"key": args.peer, "errors": []}

    def save() -> None:
        with open(args.out, "w", encoding="utf-8") as file:
            json.dump(results, file)

    def step(name: str, body: Callable[[], None]) -> None:
        say(f"  {args.peer}: {name}")
        try:
            body()
        except Exception as error:
            results["errors"].append(f"{name}: {type(error).__name__}: {error}")
            traceback.print_exc()
        save()

    try:
        peer = make_peer(args.peer)
    except Exception as error:
        results["unavailable"] = f"{type(error).__name__}: {error}"
        save()
        return
    results["name"] = peer.name
    results["restart"] = peer.restart
    if hasattr(peer, "init_s"):
        results["init_s"] = peer.init_s
    save()

    def call_and_tensors() -> None:
        peer.start(1)
        try:
            results["call_us"] = timed_us(n["calls"], lambda: peer.call("noop"))
            save()
            results["tensor_s"] = {}
            for mib in TENSOR_MIB:
                base = torch.rand(mib * MIB // 4)
                expected = float(base[-1])
                samples = []
                for i in range(n["tensor"][mib] + 1):  # the first is a warm-up
                    source = base.clone()
                    begin = time.perf_counter()
                    value = peer.call("consume", source)
                    elapsed = time.perf_counter() - begin
                    if value != expected:
                        raise AssertionError(f"consume returned {value}, not {expected}")
                    del source
                    gc.collect()
                    if i:
                        samples.append(elapsed)
                results["tensor_s"][str(mib)] = samples
                save()
        finally:
            peer.stop()

    def broadcasts() -> None:
        results["broadcast_us"] = {}
        for width in WIDTHS:
            peer.start(width)
            try:
                if len(peer.broadcast("pid")) != width:
                    raise AssertionError("broadcast returned a wrong number of results")
                results["broadcast_us"][str(width)] = timed_us(
                    n["broadcasts"], lambda: peer.broadcast("noop")
                )
            finally:
                peer.stop()
            save()

    def ready() -> None:
        peer.start(READY_WORKERS)  # warm-up (forkserver, Ray's worker pool, ...)
        peer.stop()
        times = []
        for repeat in range(n["ready"]):
            begin = time.perf_counter()
            peer.start(READY_WORKERS)
            times.append(time.perf_counter() - begin)
            try:
                if repeat == n["ready"] - 1:
                    peer.broadcast("noop")
                    results["idle_cpu"] = idle_cpu(peer)
            finally:
                peer.stop()
        results["ready_s"] = times

    def kills() -> None:
        to_error: list[float] = []
        to_serving: list[float] = []
        results["kill_error_s"], results["kill_serving_s"] = to_error, to_serving
        results["kill_errors"] = []
        peer.start(1, restartable=bool(peer.restart))
        try:
            for _ in range(n["kills"]):
                peer.call("pid")
                wait = peer.block_then_error()
                time.sleep(0.05)  # let the call reach the worker before the kill
                begin = time.perf_counter()
                peer.kill0()
                error = wait()
                if error is None:
                    results["kill_errors"].append(
                        f"no error at the caller in {time.perf_counter() - begin:.1f} s"
                    )
                    save()
                    break
                to_error.append(time.perf_counter() - begin)
                results["kill_errors"].append(type(error).__name__)
                save()
                if peer.restart:
                    peer.recover()
                    to_serving.append(time.perf_counter() - begin)
                else:
                    peer.stop()
                    peer.start(1)
                save()
        finally:
            peer.stop()

    try:
        step("no-op call and tensors", call_and_tensors)
        step("broadcast", broadcasts)
        step("4 workers ready and idle CPU", ready)
        step("SIGKILL", kills)
    finally:
        close = getattr(peer, "close", None)
        if close is not None:
            close()
        save()


if __name__ == "__main__":
    main()
