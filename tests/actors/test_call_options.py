"""Call options never steal an endpoint's arguments (DESIGN.md, v1: call options):
the endpoint name is positional-only, ``timeout=`` is refused where the endpoint has
its own, and ``options(...)`` sends every keyword to the endpoint."""

from __future__ import annotations

import pytest

import torchtroupe as tt
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT


class Fetcher(tt.Actor):
    """Endpoints whose parameters are named like call options."""

    @tt.endpoint
    def fetch(self, key: str, timeout: float = 1.0) -> tuple[str, float]:
        return key, timeout

    @tt.endpoint
    def label(self, name: str) -> str:
        return f"label:{name}"

    @tt.endpoint
    def plain(self, x: int) -> int:
        return x



def test_an_endpoint_parameter_called_name_receives_its_keyword() -> None:
    with tt.spawn(Fetcher, world_size=2, timeout=LONG_TIMEOUT) as group:
        assert group[0].call("label", name="x", timeout=SHORT_TIMEOUT) == "label:x"
        assert group.broadcast("label", name="y", timeout=SHORT_TIMEOUT) == ["label:y"] * 2
        assert group[1].call_async("label", name="z").result(SHORT_TIMEOUT) == "label:z"


def test_timeout_for_an_endpoint_that_has_its_own_timeout_is_refused_and_nothing_is_sent() -> None:
    with tt.spawn(Fetcher, world_size=2, timeout=LONG_TIMEOUT) as group:
        for attempt in (
            lambda: group[0].call("fetch", "k", timeout=30),
            lambda: group[0].call_async("fetch", "k", timeout=30),
            lambda: group.broadcast("fetch", "k", timeout=30),
            lambda: group.broadcast_async("fetch", "k", timeout=30),
            lambda: group.scatter("fetch", [("a",), ("b",)], timeout=30),
        ):
            with pytest.raises(TypeError, match=r"ambiguous.*options\(timeout="):
                attempt()
        # Nothing was sent: the next call works and gets its own answer.
        assert group[0].call("fetch", "k") == ("k", 1.0)


def test_options_send_every_keyword_to_the_endpoint() -> None:
    with tt.spawn(Fetcher, world_size=2, timeout=LONG_TIMEOUT) as group:
        ref = group[1].options(timeout=SHORT_TIMEOUT)
        assert ref.call("fetch", "k", timeout=30) == ("k", 30)
        assert ref.call_async("fetch", "k", timeout=7).result(SHORT_TIMEOUT) == ("k", 7)
        view = group.options(timeout=SHORT_TIMEOUT)
        assert view.broadcast("fetch", "k", timeout=2) == [("k", 2), ("k", 2)]
        assert view.scatter("fetch", [("a",), ("b",)], timeout=3) == [("a", 3), ("b", 3)]
        assert view[0].call("fetch", "z", timeout=4) == ("z", 4)
        # An endpoint without a timeout parameter keeps timeout= as the call's option.
        assert group[0].call("plain", 5, timeout=SHORT_TIMEOUT) == 5


def test_options_timeout_applies_to_the_call() -> None:
    with tt.spawn(Fetcher, timeout=LONG_TIMEOUT) as group:
        with pytest.raises(tt.CallTimeoutError):
            group[0].options(timeout=0).call("fetch", "k", timeout=30)
        with pytest.raises(ValueError, match="timeout"):
            group[0].options(timeout=-1)


def test_the_endpoint_name_is_positional_only() -> None:
    with tt.spawn(Fetcher, timeout=LONG_TIMEOUT) as group, pytest.raises(TypeError):
        group[0].call(name="plain", x=1)  # type: ignore[call-arg]
