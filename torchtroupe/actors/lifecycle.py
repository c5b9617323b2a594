r"""The life of a group's ranks in the caller: start, death, stop. No restart decisions.

Runs in the caller: public calls arrive on user threads, deaths on the monitor
thread, restarts on restart threads that a ``RestartAuthority`` (``supervision/``)
asks for through :meth:`GroupLifecycle.in_background`.

Each rank is in one state at a time::

    STARTING --READY reply--> READY --process ended--> WAITING --authority: restart--> STARTING
                                                          |
                                                          +--no authority, or: stay dead--> DEAD

Calls to a STARTING or WAITING rank wait (within their timeout); calls to a DEAD
rank fail with its ActorDiedError at once; calls to a group that gave up or was shut
down fail as ``outcomes.py`` says. Who decides between restart and stay-dead is not
this module's business: the group's ``RestartAuthority`` (a group's own restart
policy, or a supervisor) is told of every death and answers with :meth:`restart`,
:meth:`stay_dead` or :meth:`give_up`. Until it answers, the rank is WAITING: a
caller that caught the death's ActorDiedError and calls again at once waits for the
verdict instead of racing it. Which calls of a dead rank fail and which wait for its
next incarnation: Note [Calls a dead rank never read] in ``deaths.py``.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial

from .._settings import SETTINGS
from ..errors import (
    ActorDiedError,
    ActorInitError,
    CallTimeoutError,
    ChannelBrokenError,
    SupervisionError,
    describe_exit,
)
from ..processes.background import BackgroundThreads
from ..processes.events import EventLog, SupervisionEvent
from ..processes.launch import RankProcess, stop
from ..processes.monitor import Monitor
from ..processes.signals import stopping_on_sigterm
from ..transport.arena_views import forget_arenas_of
from ..transport.fdpass import FdChannel
from ..transport.mailbox import CallerEnd, MailboxLayout
from ..transport.ring import BROKEN
from ..transport.waiting import WaitStrategy, spin_window_s
from .authority import RestartAuthority
from .deaths import calls_to_keep, requests_read
from .direct import DirectPath
from .launcher import RankLauncher
from .messages import Reply
from .options import GroupOptions
from .outcomes import (
    died_in_flight,
    shut_down,
    stopped_because,
    stopping_message,
)
from .pump import ReplyPump
from .rank_states import DEAD, READY, STARTING, WAITING, RankStates
from .requests import RequestWriter
from .slots import BOOT, CallSlot

_FD_TIMEOUT_S = 30.0  # fds are sent before their message is published: never long
_RESTART_TERM_S = 1.0
_QUIESCE_S = 5.0  # how long shutdown waits for a thread still inside the rings
_SHUTDOWN_TERM_S = 5.0
_group_numbers = itertools.count()


class GroupLifecycle(RankStates):
    """Processes, mailbox and rank states of one group.

    Args:
        actor_class: The actor class; ``args``/``kwargs`` go to its ``__init__``.
        options: How ranks start and stop.
        device_indices: One CUDA index (or None) per rank.
        monitor: The tree's monitor thread; None starts one for this group alone.
        events: The tree's event log.
        supervisor_pid: The process that ranks signal with SIGUSR1 (this one).
    """

    def __init__(
        self,
        actor_class: type,
        args: tuple[object, ...],
        kwargs: dict[str, object],
        options: GroupOptions,
        device_indices: Sequence[int | None],
        *,
        monitor: Monitor | None = None,
        events: EventLog | None = None,
        supervisor_pid: int | None = None,
    ) -> None:
        super().__init__(
            options.name or f"{actor_class.__name__}-{next(_group_numbers)}", options.world_size
        )
        self.actor_class = actor_class
        self.options = options
        self.events = events or EventLog()
        self.authority: RestartAuthority | None = None
        self.launcher = RankLauncher(
            self.name, actor_class, args, kwargs, options, device_indices, supervisor_pid
        )
        self.layout = MailboxLayout.create(self.world_size, SETTINGS.ring_bytes)
        self.end = CallerEnd(self.layout, WaitStrategy(spin_s=spin_window_s(self.world_size)))
        self.pump = ReplyPump(self.end, self.name, self.describe, self._on_control, self._claim_fds)
        self.writer = RequestWriter(self.end.requests, self.pump, self)
        self.direct = DirectPath(self.pump, self.writer, self)
        self.ranks: list[RankProcess | None] = [None] * self.world_size
        self._fatal_reasons: dict[int, str] = {}
        self._claimed: set[int] = set()  # pids whose end is being handled (once each)
        self._background = BackgroundThreads(f"torchtroupe-restart-{self.name}")
        self._stopping = threading.RLock()  # one thread stops processes at a time
        self.closing = threading.Event()
        self._owns_monitor = monitor is None
        self.monitor = monitor or Monitor(f"torchtroupe-monitor-{self.name}", self.drain_now)

    # -- naming ---------------------------------------------------------------------

    def describe(self, rank: int) -> str:
        """``"Worker rank 2 (pid 41) of group 'g'"``, for notes and messages."""
        process = self.ranks[rank]
        pid = process.pid if process is not None else None
        return f"{self.actor_class.__qualname__} rank {rank} (pid {pid}) of group {self.name!r}"

    def pids(self) -> list[int | None]:
        """Current pid of each rank (None while a rank has no serving process: dead,
        being stopped, or between incarnations)."""
        return [
            None if process is None or state in (WAITING, DEAD) else process.pid
            for process, state in zip(self.ranks, self.states, strict=True)
        ]

    # -- starting -------------------------------------------------------------------

    def start(self, ranks: Sequence[int], timeout: float | None) -> None:
        """Starts ``ranks`` and waits until every one is ready; then writes to them the
        calls their last incarnation never read (Note [Calls a dead rank never read]
        in ``deaths.py``).

        Raises:
            ActorInitError: A rank failed to start; the remote exception (or its
                ActorDiedError) is the ``__cause__``. The other new ranks are stopped.
            GroupClosedError: The group closed or gave up meanwhile.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        slots: list[CallSlot] = []
        launched: dict[int, RankProcess] = {}
        with self.writer.send_lock:
            for rank in ranks:
                self.raise_if_closed()
                self.layout.reset_rank(rank, self.end.requests.ring)
                self.writer.arena.forget_reader(rank)  # its next incarnation maps anew
                self.pump.open_rank(rank)
                slot = CallSlot(next(self.writer.sequence), rank, "__init__", position=BOOT)
                self.pump.register(slot)
                try:
                    process = self.launcher.launch(rank, self.layout, slot.seq)
                except Exception as error:  # no fd, no memory, the forkserver gone...
                    self.pump.forget([slot])
                    raise self._init_failed(
                        list(launched), rank, "could not be launched", error
                    ) from error
                with self._changed:
                    if self.closed:  # shutdown() has collected its processes already
                        stop([process], graceful_s=0.0)
                        process.fd_channel.close()
                        self.raise_if_closed()
                    self.ranks[rank] = process
                    self.states[rank] = STARTING
                launched[rank] = process
                self.monitor.watch(process.sentinel, partial(self._on_exit, rank, process))
                slots.append(slot)
        try:
            self.pump.wait(
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
        with self.writer.send_lock:
            unread = sorted(self.pump.pending_of(ranks), key=lambda slot: slot.seq)
            for slot in self.writer.write_again(unread, deadline):
                death = self.deaths[slot.rank]
                self.pump.fail(
                    [slot], died_in_flight(death, slot.name) if death else shut_down(self.name)
                )
            with self._changed:
                # A rank that answered READY and then died before all were ready is a
                # failed start; checked under the state lock that _on_exit takes too.
                lost = [r for r, p in launched.items() if self.ranks[r] is not p]
                lost += [r for r in launched if self.states[r] != STARTING and r not in lost]
                if not lost:
                    for rank in ranks:
                        self.states[rank] = READY
                        self.deaths[rank] = None
                    self._changed.notify_all()
        if lost:
            dead = launched[lost[0]]
            why = self.deaths[lost[0]] or ActorDiedError(
                rank=lost[0], pid=dead.pid, exitcode=dead.exitcode, group=self.name
            )
            raise self._init_failed(ranks, lost[0], "died while starting", why) from why
        for rank in ranks:
            started = self.ranks[rank]
            self.events.record(
                SupervisionEvent("started", self.name, rank, started.pid if started else None)
            )

    def restart(self, ranks: Sequence[int]) -> None:
        """Starts new incarnations of ``ranks`` (stopped or dead), with a new process
        group if the group is distributed; records ``restarted`` for each.

        Raises:
            ActorInitError: A rank failed to start again.
            GroupClosedError: The group closed or gave up meanwhile.
        """
        self.launcher.new_process_group()
        self.start(ranks, self.options.timeout)
        for rank in ranks:
            incarnation = self.ranks[rank]
            self.events.record(
                SupervisionEvent(
                    "restarted", self.name, rank, incarnation.pid if incarnation else None
                )
            )

    def _init_failed(
        self, ranks: Sequence[int], rank: int, what: str, cause: BaseException
    ) -> ActorInitError:
        self.stop_ranks(ranks, reason="another rank failed to start", graceful_s=0.0)
        return ActorInitError(
            f"{self.actor_class.__qualname__} rank {rank} of group {self.name!r} {what}: "
            f"{type(cause).__name__}: {cause}",
            rank=rank,
            actor_name=self.actor_class.__qualname__,
        )

    # -- fds and control replies --------------------------------------------------------

    def drain_now(self) -> None:
        """Reads waiting replies now (a rank sent SIGUSR1 after its FATAL report)."""
        if not self.closed:
            self.pump.drain_now()

    def _claim_fds(self, rank: int, tag: int, count: int) -> list[int]:
        process = self.ranks[rank]
        if process is None:
            raise ChannelBrokenError(f"rank {rank} has no process to receive fds from")
        return process.fd_channel.receive(tag, count, timeout=_FD_TIMEOUT_S)

    def fd_channel(self, rank: int) -> FdChannel | None:
        """The fd channel of ``rank``'s serving process, or None if it has none."""
        process = self.ranks[rank]
        if process is None or self.states[rank] in (WAITING, DEAD):
            return None
        return process.fd_channel

    def _on_control(self, rank: int, reply: Reply) -> None:
        self._fatal_reasons[rank] = str(reply.value)

    # -- deaths ---------------------------------------------------------------------

    def _on_exit(self, rank: int, process: RankProcess) -> None:
        """Monitor thread: ``process`` (rank ``rank``) has ended on its own."""
        with self._changed:
            if self.closed or self.ranks[rank] is not process or process.pid in self._claimed:
                return
            self._claimed.add(process.pid)
            starting = self.states[rank] == STARTING
            # New calls wait for the authority's verdict; with none, the rank is dead
            # for good before its calls fail, so a caller that catches the error sees it.
            self.states[rank] = WAITING if starting or self.authority is not None else DEAD
            self._changed.notify_all()
        exitcode = process.exitcode
        death = self._record_death(rank, process, exitcode, reason=None)
        self.events.record(
            SupervisionEvent(
                "exited", self.name, rank, process.pid, exitcode, describe_exit(exitcode)
            )
        )
        self._reap(rank, process)
        if starting:
            return  # its start fails; the thread running that start decides what next
        if self.authority is None:
            self.stay_dead(rank)
        else:
            self.authority.rank_died(self, rank, death)

    def _record_death(
        self, rank: int, process: RankProcess, exitcode: int | None, reason: str | None
    ) -> ActorDiedError:
        """Closes the dead rank's rings, drains its last replies and fails its calls in
        flight; some unread calls stay pending (``deaths.py``)."""
        self.layout.reply_ring(rank).set_state(BROKEN)
        read_up_to = requests_read(self.layout, rank)
        recorded: list[ActorDiedError] = []

        def outcome(pending: list[CallSlot]) -> tuple[ActorDiedError, list[CallSlot]]:
            # Called once the rank's last replies were drained, so a FATAL report it
            # sent before dying is known.
            error = ActorDiedError(
                rank=rank,
                pid=process.pid,
                exitcode=exitcode,
                group=self.name,
                reason=self._fatal_reasons.pop(rank, None) or reason,
            )
            with self._changed:
                self.deaths[rank] = error
            recorded.append(error)
            return error, calls_to_keep(pending, read_up_to)

        processed = self.pump.note_death(rank, outcome).wait(_QUIESCE_S)
        if not processed or not recorded:
            return outcome([])[0]  # the pump is closed (or stuck): record it here
        return recorded[0]

    def _reap(self, rank: int, process: RankProcess) -> None:
        """Reaps a rank that ended and forgets its process (its pid reads None)."""
        with self._stopping:  # shutdown() may be reaping it right now
            stop([process], graceful_s=0.0)
            process.fd_channel.close()  # after the drain: its last replies may carry fds
            # Its request-arena blocks are free; its reply arena is let go (tensors stay).
            self.writer.arena.forget_reader(rank)
            forget_arenas_of(process.pid)
            with self._changed:
                self._claimed.discard(process.pid)
                if self.ranks[rank] is process:
                    self.ranks[rank] = None

    # -- answers of the restart authority -----------------------------------------------

    def stay_dead(self, rank: int) -> None:
        """``rank`` will not come back: its calls, waiting and new, fail with its death."""
        with self._changed:
            if self.ranks[rank] is not None:
                return  # a new incarnation is already starting
            self.states[rank] = DEAD
            self._changed.notify_all()
        death = self.deaths[rank]
        if death is not None:
            self.pump.fail(self.pump.pending_of([rank]), death)

    def give_up(self, error: SupervisionError, *, record: bool = True) -> None:
        """Gives the group up: calls waiting or in flight get ``error``, later calls
        GroupClosedError; every rank is stopped.

        Args:
            error: Why (every failure, root cause first).
            record: Record a ``gave_up`` event for this group (a supervisor that gives
                up records its own).
        """
        if not self.declare_given_up(error):
            return
        if record:
            self.events.record(SupervisionEvent("gave_up", self.name, detail=str(error)))
        self.stop_ranks(range(self.world_size), reason="the group gave up", graceful_s=0.0)

    def declare_given_up(self, error: SupervisionError) -> bool:
        """The quick half of :meth:`give_up`: from now on calls fail (waiting and in
        flight with ``error``, new ones with GroupClosedError); the ranks still run.

        Returns:
            False if the group had already given up or closed.
        """
        with self._changed:
            if self.gave_up is not None or self.closed:
                return False
            self.gave_up = error
            self._changed.notify_all()
        self.pump.fail_all(lambda slot: error)
        return True

    def in_background(self, function: Callable[..., None], *args: object) -> None:
        """Runs ``function(*args)`` on a restart thread that shutdown() joins."""
        self._background.start(function, *args)

    # -- stopping -------------------------------------------------------------------

    def stop_ranks(
        self,
        ranks: Sequence[int] | range,
        *,
        reason: str,
        graceful_s: float,
        cause: BaseException | None = None,
    ) -> None:
        """Stops ``ranks`` on purpose (for a restart, a give-up, a failed start): their
        calls in flight fail with ActorDiedError saying ``reason`` (and naming the
        rank whose death ``cause`` is); calls to them wait, as for a death."""
        why = stopped_because(cause, reason)
        with self._stopping:
            victims = []
            with self._changed:
                for rank in ranks:
                    process = self.ranks[rank]
                    if self.states[rank] != DEAD:
                        self.states[rank] = WAITING
                    if process is not None and process.pid not in self._claimed:
                        self._claimed.add(process.pid)
                        victims.append((rank, process))
            for _, process in victims:
                self.monitor.unwatch(process.sentinel)
            if graceful_s > 0 and victims:
                self.writer.send_stop(graceful_s, [rank for rank, _ in victims], self.world_size)
            died_first = [(rank, p) for rank, p in victims if p.exitcode is not None]
            term_s = _RESTART_TERM_S if graceful_s == 0 else _SHUTDOWN_TERM_S
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
                self._record_death(rank, process, process.exitcode, why)
                self._reap(rank, process)

    def poke(self) -> None:
        """Wakes the monitor thread (a rank sent SIGUSR1)."""
        self.monitor.poke()

    def stop_on_signal(self) -> None:
        """Shuts the group down (this process got SIGTERM)."""
        self.shutdown(self.options.shutdown_s)

    def shutdown(self, timeout: float, *, interrupted: bool = False) -> None:
        """Graceful stop (STOP request), then SIGTERM, SIGKILL; reaps everything.

        Args:
            timeout: Seconds the ranks get to finish before SIGTERM.
            interrupted: A Ctrl-C started this stop: say on stderr what it waits for.
        """
        with self._changed:
            if self.closed:
                return
            self.closed = True
            self.closing.set()
            self._changed.notify_all()
        self._background.close()
        in_flight = self.pump.pending_of(range(self.world_size))
        closed = shut_down(self.name)
        # Waiting calls fail now; a restart in progress sees its ranks' start fail and
        # stops what it started, so joining it below does not wait for an __init__.
        # A Ctrl-C anywhere below stops at once, and the stop still finishes: it is
        # re-raised at the end (a closed group cannot be shut down a second time).
        interrupted_by: KeyboardInterrupt | None = None
        try:
            self.pump.fail_all(lambda slot: closed)
            self._background.join()
        except KeyboardInterrupt as error:
            interrupted_by, timeout = error, 0.0
        with self._stopping:
            live = [r for r in range(self.world_size) if self.ranks[r] is not None]
            try:
                if interrupted and live and timeout > 0:
                    busy = [(s.rank, self.describe(s.rank), s.name) for s in in_flight]
                    sys.stderr.write(stopping_message(self.name, busy, self.world_size, timeout))
                    sys.stderr.flush()
                if live and timeout > 0:
                    self.writer.send_stop(timeout, live, self.world_size)
            except KeyboardInterrupt as error:
                interrupted_by, timeout = error, 0.0
            # A caller parked on a full request ring raises instead of writing on.
            self.layout.request_ring().set_state(BROKEN)
            processes = [p for p in self.ranks if p is not None]
            for process in processes:
                self.monitor.unwatch(process.sentinel)
            try:
                stop(processes, graceful_s=timeout)  # a second Ctrl-C: killed and reaped
            except KeyboardInterrupt as error:
                interrupted_by = error
            finally:
                for process in processes:
                    process.fd_channel.close()
                    forget_arenas_of(process.pid)
                self.ranks = [None] * self.world_size
        self.pump.fail_all(lambda slot: closed)
        # Under our SIGTERM handler the interrupted main thread may hold the pump and
        # cannot let go until we are done: do not wait for it (the process is ending).
        # Nor after a second Ctrl-C: the user asked to stop at once.
        quiesce_s = 0.0 if stopping_on_sigterm() or interrupted_by else _QUIESCE_S
        quiet = self.pump.close(timeout=quiesce_s)
        if self._owns_monitor:
            self.monitor.close()
        # The memory goes only once no thread can be inside a ring: the pump is quiet
        # and no sender holds the send lock. Otherwise it goes with the group object.
        if quiet and self.writer.send_lock.acquire(timeout=quiesce_s):
            try:
                self.layout.region.release()
            finally:
                self.writer.send_lock.release()
        # Safe with a sender still copying into it: that sender holds the segment.
        self.writer.arena.close()
        if interrupted_by is not None:
            raise interrupted_by
