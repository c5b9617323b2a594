"""How each peer is driven: start workers, call, broadcast, kill, recover, stop.

Every peer's workers do the same work (:class:`Work`): ``noop``, ``pid``,
``consume(tensor)`` (returns one element as a float: the tensor was received, not
summed) and ``block`` (waits forever: the call that is in flight when the worker is
killed). Workers of the ``multiprocessing`` peers come from a forkserver with torch
preloaded, as torchtroupe's ranks do.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import threading
import time
from typing import Any

import torch
import torch.multiprocessing

import torchtroupe as tt

TIMEOUT_S = 60.0


class Work:
    """What every peer's worker does."""

    def __init__(self, rank: int = 0) -> None:
        self.rank = rank

    def noop(self) -> None:
        return None

    def pid(self) -> int:
        return os.getpid()

    def consume(self, tensor: torch.Tensor) -> float:
        return float(tensor.view(-1)[-1])

    def block(self) -> None:
        threading.Event().wait()


def _context() -> Any:
    context = torch.multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "bench.peers.peers"])
    return context


class Peer:
    """One way of running workers. ``start(n)`` returns once all n answered a call."""

    name = ""
    restart = ""  # how a killed worker comes back, for the report ("" = it does not)

    def start(self, n: int, restartable: bool = False) -> None:
        raise NotImplementedError

    def call(self, method: str, *args: Any) -> Any:
        raise NotImplementedError

    def broadcast(self, method: str) -> list[Any]:
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def block_then_error(self) -> Any:
        """Starts ``block`` on worker 0; returns a function that waits for the error."""
        raise NotImplementedError

    def recover(self) -> None:
        """After worker 0 was killed: returns once it serves again."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def kill0(self) -> None:
        os.kill(self.pids()[0], signal.SIGKILL)


# --- torchtroupe -----------------------------------------------------------------------


class TTWork(tt.Actor):
    """The torchtroupe actor: :class:`Work` as endpoints."""

    def __init__(self) -> None:
        self.work = Work()

    @tt.endpoint
    def noop(self) -> None:
        return None

    @tt.endpoint
    def pid(self) -> int:
        return os.getpid()

    @tt.endpoint
    def consume(self, tensor: torch.Tensor) -> float:
        return self.work.consume(tensor)

    @tt.endpoint
    def block(self) -> None:
        self.work.block()


class Troupe(Peer):
    name = "torchtroupe"
    restart = '`RestartPolicy(strategy="one_for_one")`'

    def start(self, n: int, restartable: bool = False) -> None:
        self.restarted = threading.Event()

        def on_event(event: Any) -> None:
            if event.kind == "restarted":
                self.restarted.set()

        policy = (
            tt.RestartPolicy(strategy="one_for_one", max_restarts=100, within_s=3600)
            if restartable
            else None
        )
        self.group = tt.spawn(
            TTWork, world_size=n, restart=policy, on_event=on_event, timeout=TIMEOUT_S
        )
        self.group.broadcast("pid", timeout=TIMEOUT_S)

    def call(self, method: str, *args: Any) -> Any:
        return self.group[0].call(method, *args, timeout=TIMEOUT_S)

    def broadcast(self, method: str) -> list[Any]:
        return self.group.broadcast(method, timeout=TIMEOUT_S)

    def pids(self) -> list[int]:
        return [int(pid) for pid in self.group.pids if pid is not None]

    def block_then_error(self) -> Any:
        self.restarted.clear()
        pending = self.group[0].call_async("block")

        def wait() -> BaseException | None:
            try:
                pending.result(TIMEOUT_S)
            except tt.ActorDiedError as error:
                return error
            return None

        return wait

    def recover(self) -> None:
        if not self.restarted.wait(TIMEOUT_S):
            raise RuntimeError("torchtroupe: no restart event")
        self.group[0].call("pid", timeout=TIMEOUT_S)

    def stop(self) -> None:
        self.group.shutdown()


# --- a plain Pipe worker (standard pickle, bytes through the pipe) -----------------------


def pipe_worker(connection: Any) -> None:
    work = Work()
    while True:
        method, args = pickle.loads(connection.recv_bytes())
        if method is None:
            return
        connection.send_bytes(pickle.dumps(getattr(work, method)(*args), protocol=5))


class PlainPipe(Peer):
    name = "`multiprocessing.Pipe` worker"
    restart = "respawned by hand"

    def _one(self) -> tuple[Any, Any]:
        ours, theirs = self.context.Pipe(duplex=True)
        process = self.context.Process(target=pipe_worker, args=(theirs,), daemon=True)
        process.start()
        theirs.close()
        return process, ours

    def start(self, n: int, restartable: bool = False) -> None:
        self.context = _context()
        self.workers = [self._one() for _ in range(n)]
        self.broadcast("pid")

    def _send(self, rank: int, method: str, *args: Any) -> None:
        self.workers[rank][1].send_bytes(pickle.dumps((method, args), protocol=5))

    def _receive(self, rank: int) -> Any:
        connection = self.workers[rank][1]
        if not connection.poll(TIMEOUT_S):
            raise TimeoutError("Pipe worker did not answer")
        return pickle.loads(connection.recv_bytes())

    def call(self, method: str, *args: Any) -> Any:
        self._send(0, method, *args)
        return self._receive(0)

    def broadcast(self, method: str) -> list[Any]:
        for rank in range(len(self.workers)):
            self._send(rank, method)
        return [self._receive(rank) for rank in range(len(self.workers))]

    def pids(self) -> list[int]:
        return [process.pid for process, _ in self.workers]

    def block_then_error(self) -> Any:
        self._send(0, "block")

        def wait() -> BaseException | None:
            try:
                self._receive(0)
            except (EOFError, OSError) as error:  # EOF, or a reset if the block was unread
                return error
            return None

        return wait

    def recover(self) -> None:
        process, connection = self.workers[0]
        process.join()
        connection.close()
        self.workers[0] = self._one()
        self.call("pid")

    def stop(self) -> None:
        for _process, connection in self.workers:
            with contextlib.suppress(OSError):
                connection.send_bytes(pickle.dumps((None, ())))
        for process, connection in self.workers:
            process.join(5.0)
            if process.is_alive():
                process.kill()
                process.join()
            connection.close()


# --- torch.multiprocessing.Queue worker --------------------------------------------------


def queue_worker(requests: Any, replies: Any) -> None:
    work = Work()
    while True:
        method, args = requests.get()
        if method is None:
            return
        replies.put(getattr(work, method)(*args))


class TorchQueue(Peer):
    name = "`torch.multiprocessing.Queue` worker"

    def start(self, n: int, restartable: bool = False) -> None:
        context = _context()
        self.workers = []
        for _ in range(n):
            requests, replies = context.Queue(), context.Queue()
            process = context.Process(target=queue_worker, args=(requests, replies), daemon=True)
            process.start()
            self.workers.append((process, requests, replies))
        self.broadcast("pid")

    def _receive(self, rank: int, poll_s: float | None = None) -> Any:
        process, _, replies = self.workers[rank]
        if poll_s is None:
            return replies.get(timeout=TIMEOUT_S)
        # A Queue never reports a dead writer: poll it and the process.
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                return replies.get(timeout=poll_s)
            except queue.Empty:
                if not process.is_alive():
                    raise EOFError("Queue worker died") from None
        raise TimeoutError("Queue worker did not answer")

    def call(self, method: str, *args: Any) -> Any:
        self.workers[0][1].put((method, args))
        return self._receive(0)

    def broadcast(self, method: str) -> list[Any]:
        for _, requests, _ in self.workers:
            requests.put((method, ()))
        return [self._receive(rank) for rank in range(len(self.workers))]

    def pids(self) -> list[int]:
        return [process.pid for process, _, _ in self.workers]

    def block_then_error(self) -> Any:
        self.workers[0][1].put(("block", ()))

        def wait() -> BaseException | None:
            try:
                self._receive(0, poll_s=0.01)
            except EOFError as error:
                return error
            return None

        return wait

    def stop(self) -> None:
        for process, requests, _replies in self.workers:
            if process.is_alive():
                requests.put((None, ()))
        for process, requests, replies in self.workers:
            process.join(5.0)
            if process.is_alive():
                process.kill()
                process.join()
            for q in (requests, replies):
                q.close()
                q.join_thread()


# --- vLLM-style collective_rpc executor ----------------------------------------------------


class Executor(Peer):
    name = "vLLM-style `collective_rpc` over Pipes"

    def start(self, n: int, restartable: bool = False) -> None:
        from bench.peers.executor import PipeExecutor

        self.executor = PipeExecutor(_context(), n, Work)
        self.executor.collective_rpc("pid", timeout=TIMEOUT_S)

    def call(self, method: str, *args: Any) -> Any:
        self.executor.send(0, method, *args)
        return self.executor.receive(0, TIMEOUT_S)

    def broadcast(self, method: str) -> list[Any]:
        return self.executor.collective_rpc(method, timeout=TIMEOUT_S)

    def pids(self) -> list[int]:
        return [process.pid for process in self.executor.processes]

    def block_then_error(self) -> Any:
        self.executor.send(0, "block")

        def wait() -> BaseException | None:
            try:
                self.executor.receive(0, TIMEOUT_S)
            except (EOFError, OSError) as error:  # EOF, or a reset if the block was unread
                return error
            return None

        return wait

    def stop(self) -> None:
        self.executor.shutdown()


PEERS: dict[str, type[Peer]] = {
    "torchtroupe": Troupe,
    "pipe": PlainPipe,
    "queue": TorchQueue,
    "executor": Executor,
}
