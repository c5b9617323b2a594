"""A tree that cannot start leaves nothing behind."""

from __future__ import annotations

import psutil
import pytest

import torchtroupe as tt
from tests.actors.actors_for_tests import Echo, FailsInInit, InitFailedError
from tests.timeouts import LONG_TIMEOUT


def test_a_child_failing_to_start_stops_the_children_started_before_it() -> None:
    started: list[int] = []

    def on_event(event: tt.SupervisionEvent) -> None:
        if event.kind == "started" and event.pid is not None:
            started.append(event.pid)

    with pytest.raises(tt.ActorInitError) as raised:
        tt.Supervisor(
            children=[
                tt.ChildSpec(name="fine", actor=Echo, world_size=2),
                tt.ChildSpec(name="broken", actor=FailsInInit, args=(0,), world_size=1),
            ],
            on_event=on_event,
        )
    assert isinstance(raised.value.__cause__, InitFailedError)
    assert len(started) == 2  # the first child did start...
    _, alive = psutil.wait_procs(
        [psutil.Process(pid) for pid in started if psutil.pid_exists(pid)], timeout=LONG_TIMEOUT
    )
    assert not alive  # ...and was stopped again (the leak check covers threads and fds)
