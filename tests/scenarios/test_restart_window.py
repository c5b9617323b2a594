"""The death -> restart window, across lifecycle, pump and supervision: a call made
after a death waits for the new incarnation, for a group's policy and a supervisor
alike; a death is recorded once; a dead rank reads no pid (DESIGN.md, supervision)."""

from __future__ import annotations

import pytest

import torchtroupe as tt
from tests.supervision.actors_for_supervision import Counter
from tests.supervision.events_for_tests import EventRecorder
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT
from torchtroupe.testing import kill_rank

TRIES = 4


def test_a_call_made_right_after_a_sigkill_reaches_the_restarted_rank() -> None:
    policy = tt.RestartPolicy(strategy="one_for_one", max_restarts=TRIES + 1)
    with tt.spawn(Counter, args=("c",), world_size=2, restart=policy, timeout=LONG_TIMEOUT) as g:
        for _ in range(TRIES):
            killed = kill_rank(g, 1)
            rank, pid, label = g[1].call("identity", timeout=LONG_TIMEOUT)
            assert (rank, label) == (1, "c")
            assert pid != killed
        assert g[0].call("invocation_count", timeout=SHORT_TIMEOUT) == 0


def test_a_broadcast_made_right_after_a_sigkill_reaches_the_restarted_rank() -> None:
    policy = tt.RestartPolicy(strategy="one_for_all", max_restarts=TRIES + 1)
    with tt.spawn(Counter, args=("c",), world_size=2, restart=policy, timeout=LONG_TIMEOUT) as g:
        for _ in range(TRIES):
            killed = kill_rank(g, 0)
            answers = g.broadcast("identity", timeout=LONG_TIMEOUT)
            assert [rank for rank, _, _ in answers] == [0, 1]
            assert killed not in [pid for _, pid, _ in answers]


@pytest.mark.parametrize("strategy", ["one_for_one", "rest_for_one"])
def test_under_a_supervisor_the_call_after_a_caught_actor_died_error_reaches_the_new_rank(
    strategy: str,
) -> None:
    children = [
        tt.ChildSpec(name=name, actor=Counter, args=(name,), shutdown_s=SHORT_TIMEOUT)
        for name in ("a", "b", "c")
    ]
    with tt.Supervisor(strategy=strategy, max_restarts=TRIES + 1, children=children) as sup:
        for _ in range(TRIES):
            with pytest.raises(tt.ActorDiedError):
                sup["b"][0].call("exit_abnormally", 3, timeout=LONG_TIMEOUT)
            assert sup["b"][0].call("identity", timeout=LONG_TIMEOUT)[2] == "b"
            assert sup["c"][0].call("identity", timeout=LONG_TIMEOUT)[2] == "c"


def test_a_death_under_a_supervisor_is_recorded_once() -> None:
    recorder = EventRecorder()
    child = tt.ChildSpec(name="only", actor=Counter, args=("only",), shutdown_s=SHORT_TIMEOUT)
    with tt.Supervisor(children=[child], on_event=recorder) as sup:
        killed = kill_rank(sup["only"], 0)
        recorder.wait_for("restarted", group="only")
        assert sup["only"][0].call("identity", timeout=SHORT_TIMEOUT)[1] != killed
        exits = [event for event in recorder.matching("exited") if event.pid == killed]
        assert len(exits) == 1
        assert len([e for e in sup.events if e.kind == "exited" and e.pid == killed]) == 1


def test_a_dead_rank_without_a_policy_reads_no_pid() -> None:
    with tt.spawn(Counter, args=("c",), world_size=2, timeout=LONG_TIMEOUT) as group:
        survivor = group.pids[0]
        with pytest.raises(tt.ActorDiedError):
            group[1].call("exit_abnormally", 3, timeout=SHORT_TIMEOUT)
        assert group.pids == [survivor, None]
        assert group[1].pid is None
        assert not group[1].alive


def test_a_temporary_child_group_whose_rank_dies_ends_as_one_child() -> None:
    recorder = EventRecorder()
    child = tt.ChildSpec(
        name="once",
        actor=Counter,
        args=("once",),
        world_size=2,
        restart="temporary",
        shutdown_s=SHORT_TIMEOUT,
    )
    with tt.Supervisor(children=[child], on_event=recorder) as sup:
        group = sup["once"]
        kill_rank(group, 0)
        recorder.wait_for("stopped", group="once")
        for rank in (0, 1):  # the survivor is stopped too: no call waits for a restart
            with pytest.raises(tt.ActorDiedError):
                group[rank].call("identity", timeout=LONG_TIMEOUT)
        assert group.pids == [None, None]


def test_a_temporary_subtree_that_gives_up_leaves_no_call_waiting() -> None:
    recorder = EventRecorder()
    inner = tt.SupervisorSpec(
        name="inner",
        restart="temporary",
        max_restarts=0,
        children=[tt.ChildSpec(name="leaf", actor=Counter, args=("leaf",), shutdown_s=1.0)],
    )
    with tt.Supervisor(children=[inner], on_event=recorder) as sup:
        leaf = sup["inner"]["leaf"]
        kill_rank(leaf, 0)
        recorder.wait_for("gave_up", group="inner")
        with pytest.raises((tt.GroupClosedError, tt.SupervisionError)):
            leaf[0].call("identity", timeout=LONG_TIMEOUT)
