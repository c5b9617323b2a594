r"""The life of a group's ranks in the caller: start, death, restart, stop.

Runs in the caller: public calls arrive on user threads, deaths on the monitor
thread, restarts on a short-lived restart thread.

Each rank is in one state at a time::

    STARTING --READY reply--> READY --process ended--> DEAD --policy--> STARTING ...
                                                         \--no policy / gave up--> (stays DEAD)

Calls to a STARTING rank wait (within their timeout) for it; calls to a DEAD rank
that will not come back fail with its ActorDiedError at once.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial

from .._settings import SETTINGS
from ..errors import (
    ActorDiedError,
    ActorInitError,
    CallTimeoutError,
    ChannelBrokenError,
    GroupClosedError,
    SupervisionError,
    describe_exit,
)
from ..processes.events import EventLog, SupervisionEvent
from ..processes.launch import RANK_PROCESS_PREFIX, RankProcess, launch, start_context, stop
from ..processes.monitor import Monitor
from ..processes.signals import handlers_installed, stopping_on_sigterm
from ..supervision.policy import RestartPolicy, SpawnOptions
from ..transport.codec import TARGET_ALL, Encoder, dumps_by_value
from ..transport.mailbox import CallerEnd, MailboxLayout
from ..transport.ring import BROKEN, detach_reader
from ..transport.waiting import WaitStrategy, spin_window_s
from .messages import STOP, Reply, Request
from .rank_main import RANK_MODULE, RankBoot, rank_main
from .router import CallSlot, ReplyRouter

STARTING, READY, DEAD = "starting", "ready", "dead"
_FD_TIMEOUT_S = 30.0  # fds are sent before their message is published: never long
_RESTART_TERM_S = 1.0
_QUIESCE_S = 5.0  # how long shutdown waits for a thread still inside the rings
_SHUTDOWN_TERM_S = 5.0
_group_numbers = itertools.count()


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class GroupRuntime:
    """Processes, mailbox and restart policy of one group."""

    def __init__(
        self,
        actor_class: type,
        args: tuple[object, ...],
        kwargs: dict[str, object],
        options: SpawnOptions,
        device_indices: Sequence[int | None],
        *,
        monitor: Monitor | None = None,
        events: EventLog | None = None,
        on_failure: Callable[[BaseException, bool], None] | None = None,
        supervisor_pid: int | None = None,
    ) -> None:
        import os

        self.actor_class = actor_class
        self.options = options
        self.world_size = options.world_size
        self.name = options.name or f"{actor_class.__name__}-{next(_group_numbers)}"
        self.device_indices = list(device_indices)
        self.events = events or EventLog()
        self.on_failure = on_failure
        self._supervisor_pid = supervisor_pid or os.getpid()
        self._payload = dumps_by_value((actor_class, args, kwargs))
        self._context = start_context(options.start_method, (RANK_MODULE, *options.preload))
        self.layout = MailboxLayout.create(self.world_size, SETTINGS.ring_bytes)
        self.end = CallerEnd(self.layout, WaitStrategy(spin_s=spin_window_s(self.world_size)))
        self.router = ReplyRouter(self.end, self.describe, self._on_control, self._claim_fds)
        self.send_lock = threading.Lock()
        self.encoder = Encoder(share_fds=True)
        self.sequence = itertools.count(1)
        self.ranks: list[RankProcess | None] = [None] * self.world_size
        self.states = [STARTING] * self.world_size
        self.deaths: list[ActorDiedError | None] = [None] * self.world_size
        self._fatal_reasons: dict[int, str] = {}
        self._changed = threading.Condition()
        self._restart_times: deque[float] = deque()
        self._failures: list[BaseException] = []
        self._restart_threads: list[threading.Thread] = []
        self.closed = False
        self._stopping = threading.RLock()  # one thread stops processes at a time
        self._deciding = False
        self._closing = threading.Event()
        self.gave_up: SupervisionError | None = None
        self._owns_monitor = monitor is None
        self.monitor = monitor or Monitor(f"torchtroupe-monitor-{self.name}", self.router_poke)
        self.master_port = _free_port()

    # -- naming ---------------------------------------------------------------------

    def describe(self, rank: int) -> str:
        """``"Worker rank 2 (pid 41)"``, for notes and messages."""
        process = self.ranks[rank]
        pid = process.pid if process is not None else None
        return f"{self.actor_class.__qualname__} rank {rank} (pid {pid}) of group {self.name!r}"

    def pids(self) -> list[int | None]:
        """Current pid of each rank (None while a rank has no process)."""
        return [None if p is None else p.pid for p in self.ranks]

    # -- starting -------------------------------------------------------------------

    def start(self, ranks: Sequence[int], timeout: float | None) -> None:
        """Starts ``ranks`` and waits until every one is ready.

        Raises:
            ActorInitError: A rank failed to start; the remote exception (or its
                ActorDiedError) is the ``__cause__``. The other new ranks are stopped.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        slots: list[CallSlot] = []
        with self.send_lock:
            for rank in ranks:
                if self.gave_up is not None:
                    raise GroupClosedError(f"group {self.name!r} gave up") from self.gave_up
                if self.closed:
                    raise GroupClosedError(f"group {self.name!r} was shut down while starting")
                self.layout.reset_rank(rank, self.end.requests.ring)
                self.router.open_rank(rank)
                slot = CallSlot(next(self.sequence), rank, "__init__")
                self.router.register(slot)
                boot = RankBoot(
                    group=self.name,
                    rank=rank,
                    world_size=self.world_size,
                    layout=self.layout,
                    actor=self._payload,
                    ready_seq=slot.seq,
                    device_index=self.device_indices[rank],
                    master_port=self.master_port,
                    distributed=self.options.distributed,
                    supervisor_pid=self._supervisor_pid,
                    signal_supervisor=handlers_installed(),
                    env=dict(self.options.env),
                )
                process = launch(
                    self._context,
                    rank,
                    f"{RANK_PROCESS_PREFIX}{self.name}:rank{rank}",
                    rank_main,
                    (boot,),
                )
                with self._changed:
                    self.ranks[rank] = process
                    self.states[rank] = STARTING
                    self.deaths[rank] = None
                self.monitor.watch(process.sentinel, partial(self._on_exit, rank, process))
                slots.append(slot)
        try:
            self.router.wait(
                slots, deadline, lambda: f"ranks of group {self.name!r} not ready in {timeout}s"
            )
        except CallTimeoutError as error:
            late = [slot.rank for slot in slots if not slot.done]
            raise self._init_failed(
                ranks, late[0], f"was not ready within {timeout}s", error
            ) from error
        for slot in slots:
            if slot.error is not None:
                raise self._init_failed(
                    ranks, slot.rank, "failed to start", slot.error
                ) from slot.error
        with self._changed:
            for rank in ranks:
                self.states[rank] = READY
            self._changed.notify_all()
        for rank in ranks:
            self.events.record(SupervisionEvent("started", self.name, rank, self.ranks[rank].pid))  # type: ignore[union-attr]

    def _init_failed(
        self, ranks: Sequence[int], rank: int, what: str, cause: BaseException
    ) -> ActorInitError:
        self._stop_ranks(ranks, graceful_s=0.0, reason="another rank failed to start")
        error = ActorInitError(
            f"{self.actor_class.__qualname__} rank {rank} of group {self.name!r} {what}: "
            f"{type(cause).__name__}: {cause}",
            rank=rank,
            actor_name=self.actor_class.__qualname__,
        )
        return error

    # -- waiting for ranks ----------------------------------------------------------

    def wait_ready(self, ranks: Sequence[int], deadline: float | None) -> None:
        """Returns once every rank in ``ranks`` is READY or DEAD for good.

        Raises:
            GroupClosedError: The group was shut down.
            SupervisionError: The group gave up while this call waited for a restart.
            CallTimeoutError: A restart did not finish before the deadline.
        """
        states = self.states
        if not self.closed and all(states[rank] == READY for rank in ranks):
            return
        self.raise_if_closed()
        with self._changed:
            while True:
                if self.gave_up is not None:
                    raise self.gave_up
                if self.closed:
                    raise GroupClosedError(f"group {self.name!r} was shut down")
                if all(
                    states[r] == READY or (states[r] == DEAD and not self._coming_back(r))
                    for r in ranks
                ):
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise CallTimeoutError(
                        f"ranks of group {self.name!r} were restarting past the deadline"
                    )
                self._changed.wait(remaining)

    def wait_changed(self, timeout: float) -> None:
        """Waits up to ``timeout`` for any rank to change state."""
        with self._changed:
            self._changed.wait(timeout)

    def _coming_back(self, rank: int) -> bool:
        if self._deciding:
            return True
        return self.options.restart is not None and self.deaths[rank] is not None

    def raise_if_closed(self) -> None:
        """Raises the error a new call to a closed group gets."""
        if self.gave_up is not None:
            raise GroupClosedError(
                f"group {self.name!r} gave up after too many restarts"
            ) from self.gave_up
        if self.closed:
            raise GroupClosedError(f"group {self.name!r} was shut down")

    # -- signals (see processes/signals.py) ------------------------------------------

    def poke(self) -> None:
        """Wakes the monitor thread (a rank sent SIGUSR1)."""
        self.monitor.poke()

    def stop_on_signal(self) -> None:
        """Shuts the group down (this process got SIGTERM)."""
        self.shutdown(self.options.shutdown_s)

    # -- deaths ---------------------------------------------------------------------

    def router_poke(self) -> None:
        """Monitor-thread hook after a poke (SIGUSR1): collect FATAL reports now."""
        self.router.drain_now()

    def _claim_fds(self, rank: int, tag: int, count: int) -> list[int]:
        process = self.ranks[rank]
        if process is None:
            raise ChannelBrokenError(f"rank {rank} has no process to receive fds from")
        return process.fd_channel.receive(tag, count, timeout=_FD_TIMEOUT_S)

    def send_fds(self, target: int, tag: int, fds: Sequence[int], deadline: float | None) -> None:
        """Passes ``fds`` for message ``tag`` to ``target`` (or every live rank).

        Call with the send lock held, before the message is published. A rank that
        is gone is skipped: its death fails the call anyway.
        """
        ranks = range(self.world_size) if target == TARGET_ALL else [target]
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        for rank in ranks:
            process = self.ranks[rank]
            if process is None or self.states[rank] == DEAD:
                continue
            try:
                process.fd_channel.send(tag, fds, timeout)
            except TimeoutError:
                raise  # the call fails: publishing without its fds would stall the rank
            except (ChannelBrokenError, OSError):
                continue

    def _on_control(self, rank: int, reply: Reply) -> None:
        self._fatal_reasons[rank] = str(reply.value)

    def _on_exit(self, rank: int, process: RankProcess) -> None:
        """Monitor thread: ``process`` (rank ``rank``) has ended."""
        exitcode = process.exitcode
        with self._changed:
            if self.closed or self.ranks[rank] is not process:
                return
            starting = self.states[rank] == STARTING
            self._deciding = True
        try:
            self._fail_rank(rank, process, exitcode, reason=None)
            death = self.deaths[rank]
            assert death is not None
            self.events.record(
                SupervisionEvent(
                    "exited", self.name, rank, process.pid, exitcode, describe_exit(exitcode)
                )
            )
            if starting:
                return  # its start fails; the thread running that start decides what next
            if self.options.restart is not None:
                self._apply_policy(rank, self.options.restart, death)
            elif self.on_failure is not None:
                self.on_failure(death, exitcode == 0)
        finally:
            with self._changed:
                self._deciding = False
                self._changed.notify_all()

    def _fail_rank(
        self, rank: int, process: RankProcess, exitcode: int | None, reason: str | None
    ) -> None:
        self.layout.reply_ring(rank).set_state(BROKEN)
        detach_reader(self.layout.request_ring(), rank)
        self.router.drain_now()

        def record_death() -> ActorDiedError:
            # Called once the rank's last replies were drained, so a FATAL report it
            # sent before dying is known; and before its calls fail, so a caller that
            # catches ActorDiedError already sees the rank dead.
            error = ActorDiedError(
                rank=rank,
                pid=process.pid,
                exitcode=exitcode,
                group=self.name,
                reason=self._fatal_reasons.pop(rank, None) or reason,
            )
            with self._changed:
                self.states[rank] = DEAD
                self.deaths[rank] = error
                self._changed.notify_all()
            return error

        processed = self.router.note_death(rank, record_death).wait(_QUIESCE_S)
        if not processed or self.states[rank] != DEAD:
            record_death()  # the router is closed (or stuck): record it here

    # -- restarts -------------------------------------------------------------------

    def _apply_policy(self, rank: int, policy: RestartPolicy, failure: BaseException) -> None:
        """Counts ``failure`` of ``rank`` against the policy: restart, or give up."""
        now = time.monotonic()
        self._failures.append(failure)
        self._restart_times.append(now)
        while self._restart_times and now - self._restart_times[0] > policy.within_s:
            self._restart_times.popleft()
        if len(self._restart_times) > policy.max_restarts:
            error = SupervisionError(
                f"group {self.name!r} gave up: more than {policy.max_restarts} restarts "
                f"within {policy.within_s}s; first failure: {self._failures[0]}",
                self._failures,
            )
            if self.on_failure is not None:
                self.stop_all(graceful_s=0.0, reason="the group's restart policy gave up")
                self.events.record(SupervisionEvent("gave_up", self.name, detail=str(error)))
                self.on_failure(error, False)
            else:
                self.fail(error)
                self.events.record(SupervisionEvent("gave_up", self.name, detail=str(error)))
            return
        if policy.strategy == "one_for_one":
            targets = [rank]
        elif policy.strategy == "one_for_all":
            targets = list(range(self.world_size))
        else:
            targets = list(range(rank, self.world_size))
        with self._changed:
            for target in targets:
                self.states[target] = STARTING
        self.in_background(self._restart, rank, targets, policy)

    def in_background(self, function: Callable[..., None], *args: object) -> None:
        """Runs ``function(*args)`` on a restart thread that shutdown() joins.

        Under the state lock, so a thread is either started and listed before
        shutdown() looks, or not started at all.
        """
        with self._changed:
            if self.closed:
                return
            thread = threading.Thread(
                target=function, args=args, name=f"torchtroupe-restart-{self.name}", daemon=True
            )
            self._restart_threads = [t for t in self._restart_threads if t.is_alive()]
            thread.start()
            self._restart_threads.append(thread)

    def _restart(self, dead_rank: int, targets: list[int], policy: RestartPolicy) -> None:
        siblings = [r for r in targets if r != dead_rank]
        self._stop_ranks(
            siblings, graceful_s=0.0, reason=f"restarted with rank {dead_rank} ({policy.strategy})"
        )
        if policy.backoff_s and self._closing.wait(policy.backoff_s):
            return
        self.events.record(
            SupervisionEvent("restarting", self.name, dead_rank, detail=policy.strategy)
        )
        self._start_again(targets)

    def _start_again(self, targets: Sequence[int]) -> bool:
        if self.options.distributed is not None:
            self.master_port = _free_port()  # a new process group needs a fresh store
        try:
            self.start(targets, self.options.timeout)
        except (ActorInitError, GroupClosedError) as error:
            if self.closed or self.gave_up is not None:
                return False
            policy = self.options.restart
            if policy is not None and isinstance(error, ActorInitError):
                self._apply_policy(error.rank, policy, error)  # one more failed restart
            elif self.on_failure is not None:
                self.on_failure(
                    SupervisionError(f"group {self.name!r} could not restart: {error}", [error]),
                    False,
                )
            else:
                self.fail(
                    SupervisionError(
                        f"group {self.name!r} could not restart: {error}", [*self._failures, error]
                    )
                )
            return False
        for rank in targets:
            process = self.ranks[rank]
            self.events.record(
                SupervisionEvent("restarted", self.name, rank, process.pid if process else None)
            )
        return True

    def restart_all(self, graceful_s: float, reason: str) -> bool:
        """Stops every rank and starts them all again (a supervisor's restart).

        Returns:
            True if every rank is serving again.
        """
        self.stop_all(graceful_s, reason)
        self._restart_times.clear()
        return self._start_again(range(self.world_size))

    def mark_restarting(self) -> None:
        """Makes new calls wait: a supervisor is about to restart this group."""
        with self._changed:
            for rank in range(self.world_size):
                self.states[rank] = STARTING
            self._changed.notify_all()

    def stop_all(self, graceful_s: float, reason: str) -> None:
        """Stops every rank, failing their calls in flight; calls made meanwhile wait."""
        with self._changed:
            for rank in range(self.world_size):
                self.states[rank] = STARTING
            self._changed.notify_all()
        self._stop_ranks(range(self.world_size), graceful_s=graceful_s, reason=reason)
        with self._changed:
            for rank in range(self.world_size):
                self.states[rank] = STARTING

    def fail(self, error: SupervisionError) -> None:
        """Gives the group up: stops every rank; waiting calls get ``error``, later
        calls GroupClosedError."""
        with self._changed:
            if self.gave_up is not None or self.closed:
                return
            self.gave_up = error
            self._changed.notify_all()
        self._stop_ranks(range(self.world_size), graceful_s=0.0, reason="the group gave up")
        self.router.fail_all(lambda slot: error)

    # -- stopping -------------------------------------------------------------------

    def _stop_ranks(self, ranks: Sequence[int] | range, *, graceful_s: float, reason: str) -> None:
        with self._stopping:
            self._stop_ranks_locked(ranks, graceful_s=graceful_s, reason=reason)

    def _stop_ranks_locked(
        self, ranks: Sequence[int] | range, *, graceful_s: float, reason: str
    ) -> None:
        victims = []
        for rank in ranks:
            process = self.ranks[rank]
            if process is None:
                continue
            self.monitor.unwatch(process.sentinel)
            victims.append((rank, process))
        if graceful_s > 0 and victims:
            self._send_stop(graceful_s, [rank for rank, _ in victims])
        # Ranks stopped without grace (a restart, a give-up) get a short SIGTERM window:
        # a CUDA/NCCL process can take seconds to tear down, and its state is discarded.
        term_s = _RESTART_TERM_S if graceful_s == 0 else _SHUTDOWN_TERM_S
        died_first = [  # dead on their own, and their exit not yet seen by the monitor
            (rank, p) for rank, p in victims if p.exitcode is not None and self.states[rank] != DEAD
        ]
        stop([process for _, process in victims], graceful_s=graceful_s, term_s=term_s)
        for rank, process in died_first:  # dead before we stopped it: still an exit
            self.events.record(
                SupervisionEvent(
                    "exited",
                    self.name,
                    rank,
                    process.pid,
                    process.exitcode,
                    describe_exit(process.exitcode),
                )
            )
        for rank, process in victims:
            if self.states[rank] != DEAD:
                self._fail_rank(rank, process, process.exitcode, reason)
            process.fd_channel.close()  # after the drain: its last replies may carry fds
            with self._changed:
                if self.ranks[rank] is process:
                    self.ranks[rank] = None

    def _send_stop(self, timeout: float, ranks: Sequence[int]) -> None:
        # A signal handler may run this while the interrupted thread holds the lock.
        if not self.send_lock.acquire(timeout=min(timeout, 1.0)):
            return
        try:
            targets = [TARGET_ALL] if len(ranks) == self.world_size else list(ranks)
            for target in targets:
                self.encoder.send(
                    self.end.requests,
                    tuple(Request(0, STOP, "", (), {})),
                    target=target,
                    deadline=time.monotonic() + min(timeout, 1.0),
                )
        except Exception:
            pass  # the ranks are stopped by signal instead
        finally:
            self.send_lock.release()

    def shutdown(self, timeout: float) -> None:
        """Graceful stop (STOP request), then SIGTERM, SIGKILL; reaps everything."""
        with self._changed:
            if self.closed:
                return
            self.closed = True
            self._closing.set()
            self._changed.notify_all()
        closed = GroupClosedError(f"group {self.name!r} was shut down")
        # Waiting calls fail now; a restart in progress sees its ranks' start fail and
        # stops what it started, so joining it below does not wait for an __init__.
        self.router.fail_all(lambda slot: closed)
        with self._changed:
            restarts = list(self._restart_threads)
        for thread in restarts:
            if thread is not threading.current_thread():
                thread.join()
        with self._stopping:
            live = [r for r in range(self.world_size) if self.ranks[r] is not None]
            if live and timeout > 0:
                self._send_stop(timeout, live)
            # A caller parked on a full request ring raises instead of writing on.
            self.layout.request_ring().set_state(BROKEN)
            processes = [p for p in self.ranks if p is not None]
            for process in processes:
                self.monitor.unwatch(process.sentinel)
            stop(processes, graceful_s=timeout)
            for process in processes:
                process.fd_channel.close()
            self.ranks = [None] * self.world_size
        self.router.fail_all(lambda slot: closed)
        # Under our SIGTERM handler the interrupted main thread may hold the pump and
        # cannot let go until we are done: do not wait for it (the process is ending).
        quiesce_s = 0.0 if stopping_on_sigterm() else _QUIESCE_S
        quiet = self.router.close(timeout=quiesce_s)
        if self._owns_monitor:
            self.monitor.close()
        # The memory goes only once no thread can be inside a ring: the router is quiet
        # and no sender holds the send lock. Otherwise it goes with the group object.
        if quiet and self.send_lock.acquire(timeout=quiesce_s):
            try:
                self.layout.region.release()
            finally:
                self.send_lock.release()
