"""A vLLM-style executor: ``collective_rpc`` over one ``multiprocessing`` Pipe per worker.

In the manner of vLLM's multiprocessing executor, but over Pipes: the driver sends
``(method, args)`` to every worker; each runs the method on its worker object and
sends back ``(ok, result)``; the driver collects the replies in rank order. A worker
that dies shows up as ``EOFError`` on its Pipe. Written for this benchmark.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any


def executor_worker(rank: int, connection: Any, make_worker: Callable[[int], Any]) -> None:
    """The worker loop: receive ``(method, args)``, run it, send ``(ok, result)``."""
    worker = make_worker(rank)
    while True:
        method, args = connection.recv()
        if method is None:
            return
        try:
            connection.send((True, getattr(worker, method)(*args)))
        except Exception as error:  # sent back, as vLLM's executor does
            connection.send((False, repr(error)))


class PipeExecutor:
    """``world_size`` worker processes of ``context``, one duplex Pipe each."""

    def __init__(self, context: Any, world_size: int, make_worker: Callable[[int], Any]) -> None:
        self.processes: list[Any] = []
        self.connections: list[Any] = []
        for rank in range(world_size):
            ours, theirs = context.Pipe(duplex=True)
            process = context.Process(
                target=executor_worker, args=(rank, theirs, make_worker), daemon=True
            )
            process.start()
            theirs.close()
            self.processes.append(process)
            self.connections.append(ours)

    def send(self, rank: int, method: str, *args: Any) -> None:
        self.connections[rank].send((method, args))

    def receive(self, rank: int, timeout: float) -> Any:
        connection = self.connections[rank]
        if not connection.poll(timeout):
            raise TimeoutError(f"worker {rank} did not answer in {timeout} s")
        ok, result = connection.recv()  # EOFError if the worker died
        if not ok:
            raise RuntimeError(f"worker {rank} failed: {result}")
        return result

    def collective_rpc(self, method: str, *args: Any, timeout: float = 60.0) -> list[Any]:
        for rank in range(len(self.connections)):
            self.send(rank, method, *args)
        return [self.receive(rank, timeout) for rank in range(len(self.connections))]

    def shutdown(self) -> None:
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.send((None, ()))
        for process in self.processes:
            process.join(5.0)
            if process.is_alive():
                process.kill()
                process.join()
        for connection in self.connections:
            connection.close()
        self.processes, self.connections = [], []
