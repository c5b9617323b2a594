"""A caller that stops groups while their ranks are parked, for the quiet-stop test.

Run as ``python -m tests.actors.quiet_stop_driver`` from the repository root, with
``TORCHTROUPE_SPIN_US=0`` so that a rank parks as soon as it has answered. The ranks
inherit this process's stderr; the test reads it. Prints ``stopped N groups`` at the
end.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import torchtroupe as tt
from tests.actors.rank_error_actors import Raiser
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT
from torchtroupe.testing import kill_rank

WORLD_SIZE = 3


def _main_thread_state(pid: int) -> tuple[str, str]:
    """The scheduler state of ``pid``'s main thread, and where it sleeps in the kernel
    (``"0"`` where the kernel does not say)."""
    with open(f"/proc/{pid}/task/{pid}/stat") as stat:
        state = stat.read().rpartition(")")[2].split()[0]
    try:
        with open(f"/proc/{pid}/task/{pid}/wchan") as wchan:
            where = wchan.read().strip()
    except OSError:
        where = "0"
    return state, where


def _is_parked(pid: int) -> bool:
    state, where = _main_thread_state(pid)
    return state == "S" and (where == "0" or "futex" in where)


def wait_until_parked(pids: list[int | None]) -> None:
    """Yields the CPU until the main thread of every rank sleeps on a futex (its
    doorbell); nothing else offers a way to block until then."""
    deadline = time.monotonic() + SHORT_TIMEOUT
    for pid in pids:
        if pid is None:
            raise RuntimeError("a rank has no process")
        while not _is_parked(pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"rank pid {pid} did not park within {SHORT_TIMEOUT} s")
            os.sched_yield()


def _parked_group() -> tt.ActorGroup:
    group = tt.spawn(Raiser, world_size=WORLD_SIZE, timeout=LONG_TIMEOUT)
    group.broadcast("ping", timeout=SHORT_TIMEOUT)
    wait_until_parked(group.pids)
    return group


def shut_down_at_once() -> None:
    """No grace: the request ring is broken with no STOP request before it."""
    _parked_group().shutdown(0.0)


def shut_down_gracefully() -> None:
    """A STOP request first, then the broken ring."""
    _parked_group().shutdown(SHORT_TIMEOUT)


def stop_a_supervised_tree() -> None:
    """A supervisor stops its groups without grace."""
    children = [
        tt.ChildSpec(name=f"child{index}", actor=Raiser, world_size=WORLD_SIZE, shutdown_s=0.0)
        for index in range(2)
    ]
    supervisor = tt.Supervisor(
        strategy="one_for_all", max_restarts=1, within_s=60.0, children=children
    )
    try:
        for group in supervisor.groups():
            group.broadcast("ping", timeout=SHORT_TIMEOUT)
            wait_until_parked(group.pids)
    finally:
        supervisor.shutdown()


def restart_a_supervised_tree() -> None:
    """A rank of one group dies; its supervisor stops and restarts both groups, the
    other one's ranks parked."""
    restarted: list[tt.SupervisionEvent] = []
    all_restarted = threading.Event()

    def on_event(event: tt.SupervisionEvent) -> None:
        if event.kind == "restarted":
            restarted.append(event)
            if len(restarted) == 2 * WORLD_SIZE:
                all_restarted.set()

    children = [
        tt.ChildSpec(name=f"child{index}", actor=Raiser, world_size=WORLD_SIZE, shutdown_s=0.0)
        for index in range(2)
    ]
    supervisor = tt.Supervisor(
        strategy="one_for_all",
        max_restarts=1,
        within_s=60.0,
        children=children,
        on_event=on_event,
    )
    try:
        for group in supervisor.groups():
            group.broadcast("ping", timeout=SHORT_TIMEOUT)
            wait_until_parked(group.pids)
        kill_rank(supervisor.groups()[0], 0)
        if not all_restarted.wait(LONG_TIMEOUT):
            raise RuntimeError(f"the tree did not restart: {restarted}")
    finally:
        supervisor.shutdown()


ROUNDS: list[Callable[[], None]] = [
    shut_down_at_once,
    shut_down_gracefully,
    shut_down_at_once,
    stop_a_supervised_tree,
    restart_a_supervised_tree,
    shut_down_at_once,
]


def main() -> None:
    for stop in ROUNDS:
        stop()
    print(f"stopped {len(ROUNDS)} groups", flush=True)


if __name__ == "__main__":
    main()
