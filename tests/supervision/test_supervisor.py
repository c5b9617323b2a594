"""Tests for supervision/supervisor.py: a tree of child groups and nested supervisors.

Children are small groups of :class:`Counter`; a test kills a chosen rank and waits
for the ``restarted`` (or ``gave_up``, ``stopped``) events of the children it expects
to be touched, then compares pids with those from before.
"""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

import torchtroupe as tt
from tests.supervision.actors_for_supervision import Counter, StopRecorder
from tests.supervision.events_for_tests import EventRecorder
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT
from torchtroupe.testing import kill_rank

NAMES = ("first", "second", "third")


def counter_child(name: str, **fields: object) -> tt.ChildSpec:
    return tt.ChildSpec(name=name, actor=Counter, args=(name,), shutdown_s=SHORT_TIMEOUT, **fields)


def pids_of(supervisor: tt.Supervisor) -> dict[str, list[int | None]]:
    return {name: list(supervisor[name].pids) for name in NAMES}


def test_children_start_in_order_and_stop_in_reverse_order(tmp_path: Path) -> None:
    log = tmp_path / "stops.log"
    recorder = EventRecorder()
    children = [
        tt.ChildSpec(name=name, actor=StopRecorder, args=(name, str(log)), shutdown_s=LONG_TIMEOUT)
        for name in NAMES
    ]
    with tt.Supervisor(children=children, on_event=recorder) as supervisor:
        started = [event.group for event in recorder.matching("started")]
        assert started == list(NAMES)
        assert [
            supervisor[name][0].call("identity", timeout=SHORT_TIMEOUT)[2] for name in NAMES
        ] == [*NAMES]
    assert log.read_text().splitlines() == ["third 0", "second 0", "first 0"]


@pytest.mark.parametrize(
    ("strategy", "restarted"),
    [
        ("one_for_one", ["second"]),
        ("one_for_all", ["first", "second", "third"]),
        ("rest_for_one", ["second", "third"]),
    ],
)
def test_strategy_decides_which_child_groups_restart(strategy: str, restarted: list[str]) -> None:
    recorder = EventRecorder()
    children = [counter_child(name) for name in NAMES]
    with tt.Supervisor(strategy=strategy, children=children, on_event=recorder) as supervisor:
        before = pids_of(supervisor)
        mark = recorder.mark()
        kill_rank(supervisor["second"], 0)
        for name in restarted:
            recorder.wait_for("restarted", group=name, since=mark)
        after = pids_of(supervisor)

        for name in NAMES:
            if name in restarted:
                assert after[name][0] not in (None, before[name][0]), name
            else:
                assert after[name] == before[name], name
        for name in NAMES:  # every child serves, restarted or not
            rank, pid, label = supervisor[name][0].call("identity", timeout=SHORT_TIMEOUT)
            assert (rank, pid, label) == (0, after[name][0], name)
        assert sorted({e.group for e in recorder.matching("restarted", since=mark)}) == sorted(
            restarted
        )


def test_permanent_child_is_restarted_after_a_normal_exit() -> None:
    recorder = EventRecorder()
    with tt.Supervisor(children=[counter_child("first")], on_event=recorder) as supervisor:
        old = supervisor["first"][0].pid
        mark = recorder.mark()
        with pytest.raises(tt.ActorDiedError) as died:
            supervisor["first"][0].call("exit_normally", timeout=SHORT_TIMEOUT)
        assert died.value.exitcode == 0
        recorder.wait_for("restarted", group="first", since=mark)
        assert supervisor["first"][0].call("identity", timeout=SHORT_TIMEOUT)[1] not in (None, old)


def test_transient_child_is_not_restarted_after_a_normal_exit() -> None:
    recorder = EventRecorder()
    child = counter_child("first", restart="transient")
    with tt.Supervisor(children=[child], on_event=recorder) as supervisor:
        with pytest.raises(tt.ActorDiedError) as died:
            supervisor["first"][0].call("exit_normally", timeout=SHORT_TIMEOUT)
        assert died.value.exitcode == 0
        (stopped,) = recorder.wait_for("stopped", group="first")
        assert "transient" in stopped.detail
        assert not recorder.matching("restarted")
        with pytest.raises(tt.ActorDiedError):
            supervisor["first"][0].call("identity", timeout=SHORT_TIMEOUT)


def test_transient_child_is_restarted_after_an_abnormal_exit() -> None:
    recorder = EventRecorder()
    child = counter_child("first", restart="transient")
    with tt.Supervisor(children=[child], on_event=recorder) as supervisor:
        old = supervisor["first"][0].pid
        with pytest.raises(tt.ActorDiedError) as died:
            supervisor["first"][0].call("exit_abnormally", 3, timeout=SHORT_TIMEOUT)
        assert died.value.exitcode == 3
        recorder.wait_for("restarted", group="first")
        assert supervisor["first"][0].call("identity", timeout=SHORT_TIMEOUT)[1] not in (None, old)


def test_temporary_child_is_never_restarted() -> None:
    recorder = EventRecorder()
    children = [counter_child("first", restart="temporary"), counter_child("second")]
    with tt.Supervisor(children=children, on_event=recorder) as supervisor:
        second = supervisor["second"].pids
        kill_rank(supervisor["first"], 0)
        (stopped,) = recorder.wait_for("stopped", group="first")
        assert "temporary" in stopped.detail
        assert not recorder.matching("restarted")
        with pytest.raises(tt.ActorDiedError):
            supervisor["first"][0].call("identity", timeout=SHORT_TIMEOUT)
        assert supervisor["second"][0].call("identity", timeout=SHORT_TIMEOUT)[1] == second[0]


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", ""), ("world_size", 0), ("actor", int), ("restart", "sometimes"), ("shutdown_s", -1)],
)
def test_child_spec_rejects_a_bad_value_naming_the_field(field: str, value: object) -> None:
    fields: dict[str, object] = {"name": "first", "actor": Counter, field: value}
    with pytest.raises(pydantic.ValidationError) as invalid:
        tt.ChildSpec(**fields)
    assert [error["loc"][0] for error in invalid.value.errors()] == [field]
    assert field in str(invalid.value)


def test_supervisor_refuses_children_with_the_same_name() -> None:
    with pytest.raises(ValueError, match=r"unique names.*first"):
        tt.Supervisor(children=[counter_child("first"), counter_child("first")])


def test_supervisor_rejects_a_bad_strategy_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"strategy"):
        tt.Supervisor(strategy="bogus", children=[counter_child("first")])


def nested_tree(recorder: EventRecorder) -> tt.Supervisor:
    """root (one_for_one, 1 restart) -> [inner (0 restarts) -> [workers x2], bystander]."""
    inner = tt.SupervisorSpec(
        name="inner",
        max_restarts=0,
        children=[
            tt.ChildSpec(
                name="workers", actor=Counter, args=("workers",), world_size=2, shutdown_s=1.0
            )
        ],
    )
    return tt.Supervisor(
        strategy="one_for_one",
        max_restarts=1,
        children=[inner, counter_child("bystander")],
        name="root",
        on_event=recorder,
    )


def test_a_nested_supervisor_that_gives_up_is_restarted_by_its_parent() -> None:
    recorder = EventRecorder()
    with nested_tree(recorder) as root:
        workers = root["inner"]["workers"]
        before = workers.pids

        kill_rank(workers, 0)
        (inner_gave_up,) = recorder.wait_for("gave_up", group="inner")
        recorder.wait_for("restarted", group="workers", count=2)

        assert "supervisor 'inner' gave up" in inner_gave_up.detail
        assert not recorder.matching("gave_up", group="root")
        after = workers.pids
        assert all(new is not None and new not in before for new in after)
        assert workers.broadcast("identity", timeout=SHORT_TIMEOUT) == [
            (0, after[0], "workers"),
            (1, after[1], "workers"),
        ]


def test_a_sibling_left_alone_by_a_one_for_one_restart_of_a_subtree_still_answers() -> None:
    recorder = EventRecorder()
    with nested_tree(recorder) as root:
        bystander = root["bystander"].pids
        kill_rank(root["inner"]["workers"], 0)
        recorder.wait_for("restarted", group="workers", count=2)

        assert not recorder.matching("restarted", group="bystander")
        assert root["bystander"].pids == bystander
        assert root["bystander"][0].call("identity", timeout=SHORT_TIMEOUT)[1] == bystander[0]


def test_beyond_the_root_intensity_callers_get_supervision_error_then_group_closed() -> None:
    recorder = EventRecorder()
    with nested_tree(recorder) as root:
        workers = root["inner"]["workers"]
        first = kill_rank(workers, 0)
        recorder.wait_for("restarted", group="workers", count=2)
        second = kill_rank(workers, 1)
        recorder.wait_for("gave_up", group="root")

        # Made after the give-up was seen: GroupClosedError, caused by the give-up.
        with pytest.raises(tt.GroupClosedError) as closed:
            workers[0].call("identity", timeout=LONG_TIMEOUT)
        gave_up = closed.value.__cause__
        assert isinstance(gave_up, tt.SupervisionError)
        failures = gave_up.failures
        assert all(isinstance(f, tt.ActorDiedError) and f.exitcode == -9 for f in failures)
        assert [(f.rank, f.pid) for f in failures] == [(0, first), (1, second)]
        for group in (workers, root["bystander"]):
            with pytest.raises(tt.GroupClosedError):
                group[0].call("identity", timeout=SHORT_TIMEOUT)
