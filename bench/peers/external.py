"""The peers that are other frameworks: Ray actors and Monarch actors.

Imported only by the child process that measures them, so that the other peers'
processes never load these frameworks.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from bench.peers.peers import TIMEOUT_S, Peer, Work


class RayActors(Peer):
    """Ray actors (``num_cpus=0`` each, so that 8 fit on 2 cores), driven with ``ray.get``."""

    name = "Ray actors"
    restart = "`max_restarts=-1` actor"

    def __init__(self) -> None:
        import ray

        self.ray = ray
        begin = time.perf_counter()
        ray.init(
            include_dashboard=False,
            num_cpus=os.cpu_count(),
            log_to_driver=False,
            configure_logging=False,
        )
        self.init_s = time.perf_counter() - begin
        self.remote_class = ray.remote(Work)

    def start(self, n: int, restartable: bool = False) -> None:
        options: dict[str, Any] = {"num_cpus": 0}
        if restartable:
            options["max_restarts"] = -1
        self.actors = [self.remote_class.options(**options).remote(rank) for rank in range(n)]
        self._pids = self.broadcast("pid")

    def call(self, method: str, *args: Any) -> Any:
        return self.ray.get(getattr(self.actors[0], method).remote(*args), timeout=TIMEOUT_S)

    def broadcast(self, method: str) -> list[Any]:
        refs = [getattr(actor, method).remote() for actor in self.actors]
        return list(self.ray.get(refs, timeout=TIMEOUT_S))

    def pids(self) -> list[int]:
        return list(self._pids)

    def block_then_error(self) -> Any:
        ref = self.actors[0].block.remote()

        def wait() -> BaseException | None:
            try:
                self.ray.get(ref, timeout=TIMEOUT_S)
            except self.ray.exceptions.RayActorError as error:
                return error
            return None

        return wait

    def recover(self) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                self._pids[0] = self.call("pid")
                return
            except (self.ray.exceptions.RayActorError, self.ray.exceptions.ActorUnavailableError):
                time.sleep(0.001)
        raise TimeoutError("Ray actor did not come back")

    def stop(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        # ray.kill is asynchronous: wait for the worker processes to go.
        import psutil

        deadline = time.monotonic() + 10
        for pid in self._pids:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
                psutil.Process(pid).wait(max(0.0, deadline - time.monotonic()))
        self.actors = []

    def close(self) -> None:
        self.ray.shutdown()


class MonarchActors(Peer):
    """Monarch (``torchmonarch``) actors in a proc mesh of ``this_host()``."""

    name = "Monarch actors"

    def __init__(self) -> None:
        from monarch.actor import Actor, endpoint, this_host

        self.this_host = this_host
        work = Work()

        class MonarchWork(Actor):  # type: ignore[misc]
            @endpoint  # type: ignore[misc]
            def noop(self) -> None:
                return None

            @endpoint  # type: ignore[misc]
            def pid(self) -> int:
                return os.getpid()

            @endpoint  # type: ignore[misc]
            def consume(self, tensor: Any) -> float:
                return work.consume(tensor)

            @endpoint  # type: ignore[misc]
            def block(self) -> None:
                work.block()

        self.actor_class = MonarchWork

    @staticmethod
    def _values(mesh: Any) -> list[Any]:
        return [value for _, value in mesh.items()]

    def start(self, n: int, restartable: bool = False) -> None:
        self.procs = self.this_host().spawn_procs(per_host={"procs": n})
        self.actors = self.procs.spawn("work", self.actor_class)
        self.first = self.actors.slice(procs=0)
        self._pids = self.broadcast("pid")

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.first, method).call_one(*args).get(timeout=TIMEOUT_S)

    def broadcast(self, method: str) -> list[Any]:
        return self._values(getattr(self.actors, method).call().get(timeout=TIMEOUT_S))

    def pids(self) -> list[int]:
        return list(self._pids)

    def block_then_error(self) -> Any:
        pending = self.first.block.call_one()

        def wait() -> BaseException | None:
            try:
                pending.get(timeout=20.0)
            except TimeoutError:
                return None
            except BaseException as error:  # Monarch interrupts its own caller (SIGINT)
                return error
            return None

        return wait

    def stop(self) -> None:
        self.procs.stop().get(timeout=TIMEOUT_S)
