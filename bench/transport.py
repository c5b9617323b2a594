"""Transport benchmark: ring and codec against Pipe, Queue and memcpy, in one run.

Run with ``python -m bench.transport`` (``--quick`` for a short run). It measures,
between this process and one echo child started from a forkserver:

1. the round trip of a small message through a raw ring pair, through the message
   layer with the codec, through ``multiprocessing.Pipe`` and through a pair of
   ``torch.multiprocessing.Queue``;
2. the throughput of 1 MiB, 16 MiB and 256 MiB float32 CPU tensors sent through
   the codec to a child that rebuilds them and acknowledges, against a
   single-threaded memcpy measured in the same run.

It prints a Markdown table and rewrites the "transport" section of
``docs/benchmarks.md``. Nothing is pinned to a core.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.multiprocessing

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
from torchtroupe.transport.codec import Encoder, decode
from torchtroupe.transport.region import CACHE_LINE, SharedRegion, align_up
from torchtroupe.transport.ring import RingLayout, RingReader, RingWriter, ring_footprint
from torchtroupe.transport.stream import MessageReader, MessageWriter

SMALL_BYTES = 64
SMALL_RING = 1 << 16
BULK_RING = 4 << 20  # the mailbox default (TORCHTROUPE_RING_BYTES)
MiB = 1 << 20
JOIN_TIMEOUT_S = 10.0
TIMEOUT_S = 60.0  # no single wait in this benchmark should come near this

# Targets from the transport issue (DESIGN.md "Performance" has the call-level ones).
TARGET_RING_US = 3.0
TARGET_PIPE_RATIO = 8.0
TARGET_BULK_RATIO = 0.8


# --- shared memory layout ------------------------------------------------------------


@dataclass(frozen=True)
class RingPair:
    """Two rings in one region: ping (bench → child) and pong (child → bench).

    Four doorbells, each on its own cache line, then the two rings.
    """

    region: SharedRegion
    ping: int
    pong: int

    @staticmethod
    def create(capacity: int) -> RingPair:
        bells = [i * CACHE_LINE for i in range(4)]  # ping reader/writer, pong reader/writer
        ping = align_up(4 * CACHE_LINE, CACHE_LINE)
        pong = align_up(ping + ring_footprint(capacity, 1), CACHE_LINE)
        region = SharedRegion.allocate(pong + ring_footprint(capacity, 1))
        RingLayout.format(
            region,
            ping,
            capacity=capacity,
            reader_bell_offsets=[bells[0]],
            writer_bell_offset=bells[1],
        )
        RingLayout.format(
            region,
            pong,
            capacity=capacity,
            reader_bell_offsets=[bells[2]],
            writer_bell_offset=bells[3],
        )
        return RingPair(region, ping, pong)

    def writer(self, ring: int) -> RingWriter:
        return RingWriter(RingLayout(self.region, ring))

    def reader(self, ring: int) -> RingReader:
        return RingReader(RingLayout(self.region, ring), 0)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- children (run in forkserver children; module-level so they pickle by name) ------


def ring_child(region: SharedRegion, ping: int, pong: int, mode: str, parent: int) -> None:
    """Echo over a ring pair.

    ``raw``: copies each record back; a zero-length record stops it.
    ``codec``: decodes each message and encodes it back; ``None`` stops it.
    ``sink``: decodes each message (a tensor) and replies with a small ack.
    """

    def alive() -> bool:
        return _pid_alive(parent)

    pair = RingPair(region, ping, pong)
    reader, writer = pair.reader(ping), pair.writer(pong)
    if mode == "raw":
        while True:
            view = reader.receive(deadline=None, alive=alive)
            nbytes = len(view)
            if nbytes == 0:
                reader.consume()
                return
            out = writer.reserve(nbytes, deadline=None, alive=alive)
            out[:] = view
            writer.commit(nbytes)
            reader.consume()
    messages, replies, encoder = MessageReader(reader), MessageWriter(writer), Encoder()
    while True:
        obj = decode(messages.receive(deadline=None, alive=alive))
        if obj is None:
            return
        if mode == "codec":
            encoder.send(replies, obj, deadline=None, alive=alive)
        else:
            flat = obj.view(-1)
            ack = (obj.untyped_storage().nbytes(), flat[0].item(), flat[-1].item())
            encoder.send(replies, ack, deadline=None, alive=alive)


def pipe_child(connection: Any) -> None:
    """Echo over a duplex ``multiprocessing.Pipe``; an empty message stops it."""
    while True:
        data = connection.recv_bytes()
        if not data:
            return
        connection.send_bytes(data)


def queue_child(requests: Any, replies: Any) -> None:
    """Echo over a pair of queues; ``None`` stops it."""
    while True:
        item = requests.get()
        if item is None:
            return
        replies.put(item)


# --- running a child safely ------------------------------------------------------------


class Child:
    """A forkserver child that is always reaped: joined, else terminated, else killed."""

    def __init__(self, context: Any, target: Callable[..., None], *args: Any) -> None:
        self.process = context.Process(target=target, args=args, daemon=True)
        self.process.start()

    def alive(self) -> bool:
        return bool(self.process.is_alive())

    def reap(self, graceful: bool) -> None:
        process = self.process
        if graceful:
            process.join(JOIN_TIMEOUT_S)
        if process.is_alive():
            process.terminate()
            process.join(JOIN_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join()
        if graceful and process.exitcode != 0:
            raise RuntimeError(f"echo child exited with code {process.exitcode}")


def run_child(
    context: Any,
    target: Callable[..., None],
    args: tuple[Any, ...],
    body: Callable[[Child], Any],
    stop: Callable[[], None],
) -> Any:
    child = Child(context, target, *args)
    try:
        result = body(child)
        stop()
    except BaseException:
        child.reap(graceful=False)
        raise
    child.reap(graceful=True)
    return result


# --- round trips -------------------------------------------------------------------------


def ring_round_trip(context: Any, iterations: int, warmup: int) -> list[float]:
    pair = RingPair.create(SMALL_RING)
    writer, reader = pair.writer(pair.ping), pair.reader(pair.pong)
    payload = bytes(range(SMALL_BYTES))

    def body(child: Child) -> list[float]:
        alive = child.alive

        def once() -> None:
            view = writer.reserve(SMALL_BYTES, deadline=None, alive=alive)
            view[:] = payload
            writer.commit(SMALL_BYTES)
            echo = reader.receive(deadline=None, alive=alive)
            if len(echo) != SMALL_BYTES:
                raise AssertionError("ring echo returned a record of the wrong size")
            reader.consume()

        return timed_us(iterations, warmup, once)

    def check_and_stop() -> None:
        writer.reserve(0, deadline=time.monotonic() + TIMEOUT_S)
        writer.commit(0)

    # A correctness check of the echo before the timing: the bytes come back unchanged.
    def checked_body(child: Child) -> list[float]:
        view = writer.reserve(SMALL_BYTES, deadline=time.monotonic() + TIMEOUT_S)
        view[:] = payload
        writer.commit(SMALL_BYTES)
        echo = bytes(reader.receive(deadline=time.monotonic() + TIMEOUT_S, alive=child.alive))
        reader.consume()
        if echo != payload:
            raise AssertionError("ring echo changed the payload")
        return body(child)

    return run_child(
        context,
        ring_child,
        (pair.region, pair.ping, pair.pong, "raw", os.getpid()),
        checked_body,
        check_and_stop,
    )  # type: ignore[no-any-return]


def codec_round_trip(context: Any, iterations: int, warmup: int) -> list[float]:
    pair = RingPair.create(SMALL_RING)
    messages = MessageReader(pair.reader(pair.pong))
    requests = MessageWriter(pair.writer(pair.ping))
    encoder = Encoder()
    request = (7, "echo", b"x" * 32)

    def body(child: Child) -> list[float]:
        alive = child.alive

        def once() -> None:
            encoder.send(requests, request, deadline=None, alive=alive)
            decode(messages.receive(deadline=None, alive=alive))

        encoder.send(requests, request, deadline=time.monotonic() + TIMEOUT_S)
        if decode(messages.receive(deadline=time.monotonic() + TIMEOUT_S, alive=alive)) != request:
            raise AssertionError("codec echo changed the message")
        return timed_us(iterations, warmup, once)

    def stop() -> None:
        encoder.send(requests, None, deadline=time.monotonic() + TIMEOUT_S)

    return run_child(
        context, ring_child, (pair.region, pair.ping, pair.pong, "codec", os.getpid()), body, stop
    )  # type: ignore[no-any-return]


def pipe_round_trip(context: Any, iterations: int, warmup: int) -> list[float]:
    ours, theirs = context.Pipe(duplex=True)
    payload = bytes(range(SMALL_BYTES))

    def body(child: Child) -> list[float]:
        theirs.close()

        def once() -> None:
            ours.send_bytes(payload)
            if len(ours.recv_bytes()) != SMALL_BYTES:
                raise AssertionError("pipe echo returned the wrong size")

        return timed_us(iterations, warmup, once)

    try:
        return run_child(context, pipe_child, (theirs,), body, lambda: ours.send_bytes(b""))  # type: ignore[no-any-return]
    finally:
        ours.close()
        theirs.close()


def queue_round_trip(context: Any, iterations: int, warmup: int) -> list[float]:
    requests, replies = context.Queue(), context.Queue()
    payload = bytes(range(SMALL_BYTES))

    def body(child: Child) -> list[float]:
        def once() -> None:
            requests.put(payload)
            if len(replies.get(timeout=TIMEOUT_S)) != SMALL_BYTES:
                raise AssertionError("queue echo returned the wrong size")

        return timed_us(iterations, warmup, once)

    try:
        return run_child(
            context, queue_child, (requests, replies), body, lambda: requests.put(None)
        )  # type: ignore[no-any-return]
    finally:
        for queue in (requests, replies):
            queue.close()
            queue.join_thread()


# --- throughput ------------------------------------------------------------------------


def _median_seconds(repeats: int, once: Callable[[], None]) -> float:
    once()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return median(times)


def memcpy_seconds(tensor: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median seconds of a fresh-allocation copy (clone) and of a copy into a reused tensor."""
    fresh = _median_seconds(repeats, lambda: torch.empty_like(tensor).copy_(tensor))
    destination = torch.empty_like(tensor)
    reused = _median_seconds(repeats, lambda: destination.copy_(tensor))
    return fresh, reused


def codec_throughput(context: Any, tensors: list[tuple[torch.Tensor, int]]) -> list[float]:
    """Median seconds to send each tensor through the codec and get the child's ack."""
    pair = RingPair.create(BULK_RING)
    acks = MessageReader(pair.reader(pair.pong))
    requests = MessageWriter(pair.writer(pair.ping))
    encoder = Encoder()

    def body(child: Child) -> list[float]:
        alive = child.alive
        results = []
        for tensor, repeats in tensors:
            flat = tensor.view(-1)
            expected = (tensor.untyped_storage().nbytes(), flat[0].item(), flat[-1].item())

            def once(
                tensor: torch.Tensor = tensor, expected: tuple[int, float, float] = expected
            ) -> None:
                deadline = time.monotonic() + TIMEOUT_S
                encoder.send(requests, tensor, deadline=deadline, alive=alive)
                ack = decode(acks.receive(deadline=deadline, alive=alive))
                if ack != expected:
                    raise AssertionError(
                        f"the child rebuilt a different tensor: {ack} != {expected}"
                    )

            results.append(_median_seconds(repeats, once))
        return results

    def stop() -> None:
        encoder.send(requests, None, deadline=time.monotonic() + TIMEOUT_S)

    return run_child(
        context, ring_child, (pair.region, pair.ping, pair.pong, "sink", os.getpid()), body, stop
    )  # type: ignore[no-any-return]


# --- report ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a short run (under 40 s), noisier numbers"
    )
    parser.add_argument("--iterations", type=int, default=None, help="timed round trips per method")
    parser.add_argument(
        "--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone"
    )
    args = parser.parse_args(argv)
    iterations = args.iterations or (2_000 if args.quick else 20_000)
    warmup = max(200, iterations // 10)
    repeats = {1: 50, 16: 10, 256: 3} if args.quick else {1: 200, 16: 30, 256: 8}

    torch.multiprocessing.set_sharing_strategy("file_descriptor")
    torch.set_num_threads(1)
    context = torch.multiprocessing.get_context("forkserver")
    # Not bench.transport itself: the child imports it as __mp_main__ (runpy warns if preloaded).
    context.set_forkserver_preload(["torch", "torchtroupe.transport.codec", "bench.common"])
    shm_before = shm_entries()
    started = time.perf_counter()

    say(f"round trips of {SMALL_BYTES} B: {iterations} timed after {warmup} warm-up each")
    round_trips: dict[str, list[float]] = {}
    for name, function in (
        ("raw ring (reserve/commit/receive/consume)", ring_round_trip),
        ("message layer + codec (small tuple)", codec_round_trip),
        ("multiprocessing.Pipe (send_bytes/recv_bytes)", pipe_round_trip),
        ("torch.multiprocessing.Queue pair (put/get)", queue_round_trip),
    ):
        say(f"  {name}")
        round_trips[name] = function(context, iterations, warmup)
    names = list(round_trips)
    medians = {name: median(samples) for name, samples in round_trips.items()}
    pipe_median = medians[names[2]]

    sizes = [1, 16, 256]
    say("throughput: " + ", ".join(f"{size} MiB x{repeats[size]}" for size in sizes))
    tensors = [(torch.rand(size * MiB // 4, dtype=torch.float32), repeats[size]) for size in sizes]
    baselines = [
        memcpy_seconds(tensor, repeats[size])
        for (tensor, _), size in zip(tensors, sizes, strict=True)
    ]
    codec_times = codec_throughput(context, tensors)
    del tensors
    elapsed = time.perf_counter() - started
    leaked = sorted(shm_entries() - shm_before)

    rt_rows = [
        [name, medians[name], percentile(round_trips[name], 99), pipe_median / medians[name]]
        for name in names
    ]
    rt_table = markdown_table(["method", "median µs", "p99 µs", "Pipe median / this"], rt_rows)
    bw_rows = []
    for size, seconds, (fresh, reused) in zip(sizes, codec_times, baselines, strict=True):
        nbytes = size * MiB
        bw_rows.append(
            [
                f"{size} MiB",
                nbytes / seconds / 1e9,
                nbytes / fresh / 1e9,
                nbytes / reused / 1e9,
                fresh / seconds,
                reused / seconds,
            ]
        )
    bw_table = markdown_table(
        [
            "float32 tensor",
            "codec GB/s",
            "clone GB/s (baseline)",
            "copy into reused GB/s",
            "codec / clone",
            "codec / reused copy",
        ],
        bw_rows,
    )
    ring_median = medians[names[0]]
    bulk_ratio = baselines[-1][0] / codec_times[-1]
    target_table = markdown_table(
        ["target", "measured", "status"],
        [
            [
                f"raw ring round trip ≤ {TARGET_RING_US:g} µs median",
                f"{ring_median:.2f} µs",
                target_status(ring_median <= TARGET_RING_US),
            ],
            [
                f"raw ring ≥ {TARGET_PIPE_RATIO:g}x faster than Pipe",
                f"{pipe_median / ring_median:.1f}x",
                target_status(pipe_median / ring_median >= TARGET_PIPE_RATIO),
            ],
            [
                f"256 MiB through the codec ≥ {TARGET_BULK_RATIO:g}x memcpy (clone)",
                f"{bulk_ratio:.2f}x",
                target_status(bulk_ratio >= TARGET_BULK_RATIO),
            ],
        ],
    )
    mode = "`--quick`" if args.quick else "full"
    body = f"""\
## Transport

`python -m bench.transport` ({mode} run, {elapsed:.0f} s). Machine: {machine_markdown()}.

Two processes: the benchmark and one echo child started from a torch-preloaded
`forkserver`. Nothing is pinned to a core; on a 2-core machine the two processes
each have one core only if nothing else runs, so the spinning waits of the ring
are at their best here and a busier machine would see more parked (futex) waits.
On a small shared VM, medians move by up to about 2x between runs (the Pipe baseline
and the 256 MiB ratio most): rerun before reading much into one run.

### Round trip of a {SMALL_BYTES}-byte message

{iterations} timed round trips per method after {warmup} warm-up ones, garbage collector
on, timed one by one with `time.perf_counter_ns`. The raw ring is two single-reader rings
(ping and pong) of {SMALL_RING // 1024} KiB in one `SharedRegion`, echoed with
`reserve`/`commit`/`receive`/`consume`; the codec row sends a small tuple with
`Encoder.send` and rebuilds it with `decode` on both sides.

{rt_table}

### CPU tensor throughput

A float32 tensor sent with `Encoder.send` through a {BULK_RING // MiB} MiB ring (the
mailbox default) to a child that rebuilds it with `decode` and replies with a tiny
ack; the time is from the start of the send to the ack, median of
{repeats[1]}/{repeats[16]}/{repeats[256]} transfers for 1/16/256 MiB. The baseline is a
single-threaded (`torch.set_num_threads(1)`) copy in one process, measured in the same run:
**clone** (`torch.empty_like(x).copy_(x)`) is the fair one, since the receiver must
allocate (and fault in) a fresh tensor too; **copy into reused** (`dst.copy_(x)` into
a preallocated, already faulted-in `dst`) is the upper bound of a plain copy. The
codec copies twice (into the ring, out of it) but the two copies overlap in two
processes.

{bw_table}

### Targets

{target_table}
"""
    print(body)
    if leaked:
        say(f"WARNING: new entries in /dev/shm: {leaked}")
    else:
        say("nothing left in /dev/shm")
    if not args.no_doc:
        replace_section("transport", body)
        say("updated docs/benchmarks.md")


if __name__ == "__main__":
    main()
