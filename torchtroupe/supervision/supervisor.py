"""``Supervisor``: an Erlang/OTP supervisor whose children are groups or supervisors.

Runs in the supervising process: decisions are taken on the tree's monitor thread,
and restarts run on a restart thread, so the monitor keeps watching meanwhile.

The rules, as in OTP:

* Children start in order and stop in reverse order, each given its
  ``shutdown_s`` between the graceful stop and SIGTERM (then SIGKILL).
* A child that fails is handled by its restart type: ``permanent`` is always
  restarted, ``transient`` only after an abnormal exit (a rank exiting with code 0
  is normal), ``temporary`` never.
* Strategy: ``one_for_one`` restarts the failed child; ``one_for_all`` stops the
  others (reverse order) and restarts all (in order); ``rest_for_one`` does that for
  the failed child and those started after it.
* Intensity: more than ``max_restarts`` restarts within ``within_s`` seconds and the
  supervisor stops all its children and fails to its parent, which applies its own
  strategy. At the root, waiting callers get :class:`SupervisionError` (every
  failure, root cause first) and later calls :class:`GroupClosedError`. Inside a
  rank, the root escalates further by ending that rank with ``tt.fatal``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..actors.actor import fatal_hook
from ..actors.group import ActorGroup
from ..actors.lifecycle import GroupLifecycle
from ..errors import ActorDiedError, GroupClosedError, SupervisionError
from ..processes.background import BackgroundThreads
from ..processes.events import EventCallback, EventLog, SupervisionEvent
from ..processes.monitor import Monitor
from ..processes.signals import register as register_with_signals
from .group_policy import GroupPolicy
from .intensity import RestartIntensity
from .policy import ChildSpec, SpawnOptions, Strategy, SupervisorSpec
from .spawn import build_group, start_group


@dataclass(slots=True)
class _Child:
    spec: ChildSpec | SupervisorSpec
    lifecycle: GroupLifecycle | None = None
    group: ActorGroup | None = None
    policy: GroupPolicy | None = None
    supervisor: Supervisor | None = None
    running: bool = False

    @property
    def name(self) -> str:
        return self.spec.name


class Supervisor:
    """A supervisor of groups and nested supervisors.

    Args:
        strategy: ``one_for_one``, ``one_for_all`` or ``rest_for_one``.
        max_restarts: Restarts allowed within ``within_s`` before giving up.
        within_s: The intensity window, in seconds.
        children: :class:`ChildSpec` (a group) or :class:`SupervisorSpec` entries,
            started in this order.
        name: The supervisor's name in logs and events.
        on_event: Called with every event of the tree (on the monitor thread).

    Raises:
        ValueError: A bad configuration value (the message names the field).
        ActorInitError: A child failed to start; those started are stopped again.

    Example:
        >>> with tt.Supervisor(strategy="one_for_all", children=[
        ...     tt.ChildSpec(name="trainer", actor=Trainer, world_size=2),
        ...     tt.ChildSpec(name="rollout", actor=Rollout, world_size=4),
        ... ]) as sup:
        ...     sup["trainer"].broadcast("step")
    """

    def __init__(
        self,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        within_s: float = 60.0,
        children: Sequence[ChildSpec | SupervisorSpec] = (),
        *,
        name: str = "supervisor",
        on_event: EventCallback | None = None,
    ) -> None:
        try:
            spec = SupervisorSpec.model_validate(
                {
                    "name": name,
                    "strategy": strategy,
                    "max_restarts": max_restarts,
                    "within_s": within_s,
                    "children": tuple(children),
                }
            )
        except ValidationError as error:
            raise ValueError(f"invalid Supervisor configuration:\n{error}") from None
        self._setup(spec, None, EventLog(on_event), None)
        register_with_signals(self)
        try:
            self._start_children(self._children)
        except BaseException:
            self.shutdown()  # nothing of a tree that failed to start may linger
            raise

    @classmethod
    def _nested(cls, spec: SupervisorSpec, parent: Supervisor) -> Supervisor:
        supervisor = cls.__new__(cls)
        supervisor._setup(spec, parent, parent._events, parent._monitor)
        try:
            supervisor._start_children(supervisor._children)
        except BaseException:
            supervisor.shutdown()
            raise
        return supervisor

    def _setup(
        self,
        spec: SupervisorSpec,
        parent: Supervisor | None,
        events: EventLog,
        monitor: Monitor | None,
    ) -> None:
        names = [child.name for child in spec.children]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"children of supervisor {spec.name!r} need unique names: {duplicates}"
            )
        self._spec = spec
        self._parent = parent
        self._events = events
        self._owns_monitor = monitor is None
        self._monitor = monitor or Monitor(
            f"torchtroupe-supervisor-{spec.name}", self._drain_groups
        )
        self._children = [_Child(child) for child in spec.children]
        self._lock = threading.RLock()  # decisions only: never held while acting
        self._acting = threading.RLock()  # one restart or give-up at a time
        self._intensity = RestartIntensity(spec.max_restarts, spec.within_s)
        self._threads = BackgroundThreads(f"torchtroupe-supervisor-{spec.name}")
        self._closed = False
        self.gave_up: SupervisionError | None = None

    # -- access ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The supervisor's name."""
        return self._spec.name

    @property
    def events(self) -> list[SupervisionEvent]:
        """Every event of the tree so far."""
        return self._events.events

    def __getitem__(self, name: str) -> Any:
        """The child named ``name``: an :class:`ActorGroup` or a nested ``Supervisor``."""
        for child in self._children:
            if child.name == name:
                return child.group if child.group is not None else child.supervisor
        known = ", ".join(child.name for child in self._children)
        raise KeyError(f"supervisor {self.name!r} has no child {name!r}; its children: {known}")

    def groups(self) -> list[ActorGroup]:
        """Every group in this subtree, in start order."""
        found: list[ActorGroup] = []
        for child in self._children:
            if child.group is not None:
                found.append(child.group)
            elif child.supervisor is not None:
                found.extend(child.supervisor.groups())
        return found

    def _lifecycles(self) -> list[GroupLifecycle]:
        found: list[GroupLifecycle] = []
        for child in self._children:
            if child.lifecycle is not None:
                found.append(child.lifecycle)
            elif child.supervisor is not None:
                found.extend(child.supervisor._lifecycles())
        return found

    # -- starting and stopping children -----------------------------------------------

    def _start_children(self, children: Sequence[_Child]) -> None:
        started: list[_Child] = []
        try:
            for child in children:
                self._start_child(child)
                started.append(child)
        except BaseException:
            for child in reversed(started):
                self._stop_child(child, "a sibling failed to start", None)
            raise

    def _start_child(self, child: _Child) -> None:
        spec = child.spec
        if isinstance(spec, SupervisorSpec):
            if child.supervisor is None:
                child.supervisor = Supervisor._nested(spec, self)
            else:
                child.supervisor._intensity.reset()
                child.supervisor._start_children(child.supervisor._children)
        elif child.lifecycle is None:
            self._first_start(child, spec)
        else:
            if child.policy is not None:
                child.policy.intensity.reset()
            child.lifecycle.restart(range(child.lifecycle.world_size))
        child.running = True

    def _first_start(self, child: _Child, spec: ChildSpec) -> None:
        try:
            options = SpawnOptions.model_validate(
                {"world_size": spec.world_size, "name": spec.name, "shutdown_s": spec.shutdown_s}
                | spec.spawn
            )
        except ValidationError as error:
            raise ValueError(f"invalid spawn options of child {spec.name!r}:\n{error}") from None
        lifecycle = build_group(
            spec.actor,
            spec.args,
            dict(spec.kwargs),
            options,
            events=self._events,
            monitor=self._monitor,
        )
        if options.restart is not None:
            child.policy = GroupPolicy(options.restart, escalate=self._group_gave_up)
            lifecycle.authority = child.policy
        else:
            lifecycle.authority = self
        child.lifecycle = lifecycle
        child.group = start_group(lifecycle)

    def _stop_child(self, child: _Child, reason: str, cause: BaseException | None) -> None:
        child.running = False
        if child.lifecycle is not None:
            lifecycle = child.lifecycle
            lifecycle.stop_ranks(
                range(lifecycle.world_size),
                reason=reason,
                graceful_s=child.spec.shutdown_s,
                cause=cause,
            )
        elif child.supervisor is not None:
            for grandchild in reversed(child.supervisor._children):
                child.supervisor._stop_child(grandchild, reason, cause)

    def _hold(self, children: Sequence[_Child]) -> None:
        """Makes calls to these children's groups wait: a verdict is coming."""
        for child in children:
            if child.lifecycle is not None:
                child.lifecycle.hold(range(child.lifecycle.world_size))
            elif child.supervisor is not None:
                child.supervisor._hold(child.supervisor._children)

    # -- failures -------------------------------------------------------------------

    def rank_died(self, group: GroupLifecycle, rank: int, death: ActorDiedError) -> None:
        """Monitor thread: a rank of a child group without its own policy died."""
        child = self._child_of(group)
        self._child_failed(child, death, normal=death.exitcode == 0, rank=rank)

    def _group_gave_up(self, group: GroupLifecycle, error: SupervisionError) -> None:
        """A child group's own restart policy gave up: the group fails as one child."""
        self._child_failed(self._child_of(group), error, normal=False)

    def _child_of(self, group: GroupLifecycle) -> _Child:
        return next(child for child in self._children if child.lifecycle is group)

    def _child_failed(
        self, child: _Child, error: BaseException, normal: bool, rank: int | None = None
    ) -> None:
        """A child failed (monitor or restart thread). Decide, then act in background."""
        with self._lock:
            if self._closed or self.gave_up is not None:
                return
            restart = child.spec.restart
            if restart == "temporary" or (restart == "transient" and normal):
                self._events.record(
                    SupervisionEvent("stopped", child.name, detail=f"{restart} child not restarted")
                )
                child.running = False
                self._leave_down(child, error, rank)
                return
            if self._intensity.exceeded_by(error):
                self._hold(self._children)  # calls wait for the verdict
                self._threads.start(self._give_up)
                return
            index = self._children.index(child)
            if self._spec.strategy == "one_for_one":
                affected = [child]
            elif self._spec.strategy == "one_for_all":
                affected = list(self._children)
            else:
                affected = self._children[index:]
            self._hold(affected)
            self._threads.start(self._restart, child, affected, error)

    def _leave_down(self, child: _Child, error: BaseException, rank: int | None) -> None:
        """A child that is not restarted ends as one child: a group whose rank died
        stops its other ranks, and every rank stays dead (calls get ActorDiedError at
        once); a group or subtree that gave up stays given up (SupervisionError, then
        GroupClosedError). Nothing is left waiting for a restart that never comes."""
        if child.supervisor is not None:
            if not isinstance(error, SupervisionError):
                error = SupervisionError(f"{child.name!r} ended: {error}", [error])
            for member in child.supervisor._lifecycles():
                member.give_up(error)
            return
        lifecycle = child.lifecycle
        if lifecycle is None:
            return
        if rank is None:
            if isinstance(error, SupervisionError):
                lifecycle.give_up(error)
            return
        lifecycle.stay_dead(rank)
        others = [r for r in range(lifecycle.world_size) if r != rank]
        lifecycle.hold(others)
        self._threads.start(self._end_group, child, lifecycle, others, error)

    def _end_group(
        self, child: _Child, lifecycle: GroupLifecycle, ranks: list[int], cause: BaseException
    ) -> None:
        """Restart thread: stops the other ranks of a child group that is not restarted."""
        reason = f"its {child.spec.restart} child group {child.name!r} ended"
        lifecycle.stop_ranks(ranks, reason=reason, graceful_s=child.spec.shutdown_s, cause=cause)
        for rank in ranks:
            lifecycle.stay_dead(rank)

    def _restart(self, failed: _Child, affected: list[_Child], cause: BaseException) -> None:
        """Restart thread: stops ``affected`` (reverse order) and starts them again.

        Decisions are taken under ``_lock``; the stopping and starting, which can take
        seconds, happen outside it (under ``_acting``), so the tree's monitor thread
        never waits behind a restart and no lock is held while calling the parent.
        """
        with self._acting:
            with self._lock:
                if self._closed or self.gave_up is not None:
                    return
            reason = (
                f"restarted by supervisor {self.name!r} ({self._spec.strategy}) "
                f"after {failed.name!r} failed"
            )
            for child in reversed(affected):
                self._stop_child(child, reason, cause)
            self._events.record(SupervisionEvent("restarting", failed.name, detail=reason))
            try:
                self._start_children(affected)
            except GroupClosedError:
                return  # shut down meanwhile: nothing to restart
            except Exception as error:  # ActorInitError, SupervisionError, a failed launch
                with self._lock:
                    self._intensity.failures.append(error)
                self._give_up()

    def _give_up(self) -> None:
        with self._acting:
            with self._lock:
                if self._closed or self.gave_up is not None:
                    return
                error = self._intensity.gave_up(f"supervisor {self.name!r}")
                if self._parent is None:
                    self.gave_up = error
            if self._parent is None:
                # Calls waiting or in flight get the SupervisionError itself, survivors
                # stopped by the give-up included; once the event is seen, every call
                # gets GroupClosedError (DESIGN.md, Errors).
                given_up = [g for g in reversed(self._lifecycles()) if g.declare_given_up(error)]
                self._events.record(SupervisionEvent("gave_up", self.name, detail=str(error)))
                for lifecycle in given_up:
                    lifecycle.stop_ranks(
                        range(lifecycle.world_size), reason="its tree gave up", graceful_s=0.0
                    )
            else:
                self._events.record(SupervisionEvent("gave_up", self.name, detail=str(error)))
                for child in reversed(self._children):
                    self._stop_child(child, "its supervisor gave up", error)
        if self._parent is not None:  # our locks are released: the parent takes its own
            parent_child = next(c for c in self._parent._children if c.supervisor is self)
            self._parent._child_failed(parent_child, error, False)
            return
        if fatal_hook.handler is not None:
            fatal_hook.handler(f"a supervision tree in this rank gave up: {error}")

    # -- signals and shutdown -------------------------------------------------------

    def _drain_groups(self) -> None:
        for lifecycle in self._lifecycles():
            lifecycle.drain_now()

    def poke(self) -> None:
        """Wakes the tree's monitor (SIGUSR1 from a rank)."""
        self._monitor.poke()

    def stop_on_signal(self) -> None:
        """Stops the tree (SIGTERM)."""
        self.shutdown()

    def shutdown(self) -> None:
        """Stops every child in reverse start order, each within its ``shutdown_s``.

        Outstanding calls fail with GroupClosedError. Idempotent.
        """
        self._stop_tree(interrupted=False)

    def _stop_tree(self, *, interrupted: bool) -> None:
        """Stops the tree; ``interrupted``: a Ctrl-C did it (the groups say on stderr
        what they wait for)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._threads.close()
        # Children first: a restart thread waiting on a child's start is released by it.
        for child in reversed(self._children):
            if child.lifecycle is not None:
                child.lifecycle.shutdown(child.spec.shutdown_s, interrupted=interrupted)
            elif child.supervisor is not None:
                child.supervisor._stop_tree(interrupted=interrupted)
        self._threads.join()
        if self._owns_monitor:
            self._monitor.close()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self._stop_tree(interrupted=kind is not None and issubclass(kind, KeyboardInterrupt))

    def __repr__(self) -> str:
        names = ", ".join(child.name for child in self._children)
        return f"<Supervisor {self.name!r} {self._spec.strategy} [{names}]>"
