"""Endpoints given as functions (DESIGN.md, v1: typed endpoints): everywhere a name is
accepted, the function is too, checked in the caller before anything is sent."""

from __future__ import annotations

import pytest

import torchtroupe as tt
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT


class Worker(tt.Actor):
    @tt.endpoint
    def step(self, x: int) -> int:
        return x + self.rank

    def helper(self) -> int:  # not an endpoint
        return 0


class Special(Worker):
    @tt.endpoint
    def special(self) -> str:
        return "special"


class Other(tt.Actor):
    @tt.endpoint
    def step(self, x: int) -> int:
        return -x


def test_the_function_is_accepted_wherever_a_name_is() -> None:
    with tt.spawn(Worker, world_size=2, timeout=LONG_TIMEOUT) as group:
        assert group[1].call(Worker.step, 10, timeout=SHORT_TIMEOUT) == 11
        assert group[0].call_async(Worker.step, 5).result(SHORT_TIMEOUT) == 5
        assert group.broadcast(Worker.step, 1, timeout=SHORT_TIMEOUT) == [1, 2]
        assert group.broadcast_async(Worker.step, 2).result(SHORT_TIMEOUT) == [2, 3]
        assert group.scatter(Worker.step, [(1,), (2,)], timeout=SHORT_TIMEOUT) == [1, 3]
        view = group.options(timeout=SHORT_TIMEOUT)
        assert view.broadcast(Worker.step, 0) == [0, 1]
        assert view[1].call(Worker.step, 0) == 1


def test_an_inherited_endpoint_is_accepted_on_the_subclass() -> None:
    with tt.spawn(Special, timeout=LONG_TIMEOUT) as group:
        assert group[0].call(Worker.step, 3, timeout=SHORT_TIMEOUT) == 3
        assert group[0].call(Special.special, timeout=SHORT_TIMEOUT) == "special"


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        (Worker.helper, "not an endpoint: mark it with @tt.endpoint"),
        (Other.step, "Other.step is not an endpoint of Worker"),
        (Special.special, "Special.special is not an endpoint of Worker"),
        (lambda actor: 0, "not an endpoint"),
        (42, "by its name or as the function"),
    ],
)
def test_a_wrong_function_is_refused_in_the_caller_and_nothing_is_sent(
    endpoint: object, message: str
) -> None:
    with tt.spawn(Worker, timeout=LONG_TIMEOUT) as group:
        with pytest.raises(TypeError, match=message):
            group[0].call(endpoint, 1, timeout=SHORT_TIMEOUT)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=message):
            group.broadcast(endpoint, 1, timeout=SHORT_TIMEOUT)  # type: ignore[arg-type]
        assert group[0].call(Worker.step, 7, timeout=SHORT_TIMEOUT) == 7  # nothing was sent
