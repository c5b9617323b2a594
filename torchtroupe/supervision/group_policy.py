"""A group's own ``restart=`` policy, as the group's restart authority.

Runs on the group's monitor thread (decisions) and its restart threads (stopping
and starting ranks). Inside a group, ``one_for_one`` restarts the dead rank,
``one_for_all`` every rank (what a NCCL or gloo group needs: its communicator dies
with any rank), ``rest_for_one`` the dead rank and those after it. Past the
intensity the group gives up: on its own, its callers get SupervisionError; under a
``Supervisor``, it fails as one child and the supervisor decides.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from functools import partial

from ..actors.lifecycle import GroupLifecycle
from ..errors import ActorDiedError, ActorInitError, GroupClosedError, SupervisionError
from ..processes.events import SupervisionEvent
from .intensity import RestartIntensity
from .policy import RestartPolicy

Escalate = Callable[[GroupLifecycle, SupervisionError], None]
"""How an exhausted group fails upward (to its supervisor)."""


class GroupPolicy:
    """Applies a :class:`RestartPolicy` to one group.

    Args:
        policy: The policy.
        escalate: Called (on a restart thread) when the policy gives up and a
            supervisor is above; None makes the group give up on its own.
    """

    def __init__(self, policy: RestartPolicy, escalate: Escalate | None = None) -> None:
        self.policy = policy
        self.intensity = RestartIntensity(policy.max_restarts, policy.within_s)
        self._escalate = escalate
        self._lock = threading.Lock()
        self._acting = threading.Lock()  # one restart of the group at a time
        self._restarting: Counter[int] = Counter()  # ranks queued or running restarts start

    def rank_died(self, group: GroupLifecycle, rank: int, death: ActorDiedError) -> None:
        """Monitor thread: restarts by the strategy, or gives up past the intensity.

        A rank that a queued or running restart is about to stop and start anyway (a
        sibling of a one_for_all restart that died meanwhile) is left to that restart:
        its death is not a second failure.
        """
        with self._lock:
            if self._restarting[rank] > 0:
                return
        self._decide(group, rank, death)

    def _decide(self, group: GroupLifecycle, rank: int, failure: BaseException) -> None:
        if self.intensity.exceeded_by(failure):
            error = self.intensity.gave_up(f"group {group.name!r}")
            if self._escalate is None:
                # The quick half here (calls fail at once); stopping ranks on a thread,
                # for the monitor thread never waits.
                if group.declare_given_up(error):
                    group.events.record(SupervisionEvent("gave_up", group.name, detail=str(error)))
                    stop_all = partial(
                        group.stop_ranks,
                        range(group.world_size),
                        reason="the group gave up",
                        graceful_s=0.0,
                    )
                    group.in_background(stop_all)
                return
            group.events.record(SupervisionEvent("gave_up", group.name, detail=str(error)))
            group.hold(range(group.world_size))  # calls wait for the verdict above
            group.in_background(self._escalate, group, error)
            return
        strategy = self.policy.strategy
        if strategy == "one_for_one":
            targets = [rank]
        elif strategy == "one_for_all":
            targets = list(range(group.world_size))
        else:
            targets = list(range(rank, group.world_size))
        with self._lock:
            self._restarting.update(targets)  # counts: a failed restart queues another
        group.hold(targets)
        group.in_background(self._restart, group, rank, targets, failure)

    def _restart(
        self, group: GroupLifecycle, rank: int, targets: list[int], failure: BaseException
    ) -> None:
        """Restart thread: stops the dead rank's siblings in ``targets``, starts all."""
        with self._acting:
            try:
                self._restart_now(group, rank, targets, failure)
            finally:
                with self._lock:
                    self._restarting.subtract(targets)

    def _restart_now(
        self, group: GroupLifecycle, rank: int, targets: list[int], failure: BaseException
    ) -> None:
        strategy = self.policy.strategy
        siblings = [r for r in targets if r != rank]
        group.stop_ranks(
            siblings,
            reason=f"restarted with rank {rank} ({strategy})",
            graceful_s=0.0,
            cause=failure,
        )
        if self.policy.backoff_s and group.closing.wait(self.policy.backoff_s):
            return
        group.events.record(SupervisionEvent("restarting", group.name, rank, detail=strategy))
        try:
            group.restart(targets)
        except GroupClosedError:
            pass  # shut down meanwhile: nothing to restart
        except Exception as error:  # ActorInitError, or a launch that failed
            if not (group.closed or group.gave_up is not None):
                culprit = error.rank if isinstance(error, ActorInitError) else rank
                self._decide(group, culprit, error)  # one more failed restart
