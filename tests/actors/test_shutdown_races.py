"""Shutdown and completion callbacks racing the calls of other threads."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import pytest
import torch

import torchtroupe as tt
from tests.actors.actors_for_tests import Echo
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT


def test_shutdown_fails_a_caller_parked_on_a_full_request_ring() -> None:
    group = tt.spawn(Echo, world_size=1, timeout=LONG_TIMEOUT)
    try:
        busy = group[0].call_async("sleep", 30.0)  # the rank reads nothing meanwhile
        outcome: Future[BaseException | None] = Future()

        def send_more_than_the_ring_holds() -> None:
            try:
                group[0].call("echo", torch.zeros(16 << 20, dtype=torch.uint8))
                outcome.set_result(None)
            except BaseException as error:
                outcome.set_result(error)

        sender = threading.Thread(target=send_more_than_the_ring_holds)
        sender.start()
        with pytest.raises(TimeoutError):
            outcome.result(0.5)  # it is parked, waiting for room
    finally:
        group.shutdown(0.5)
    sender.join(LONG_TIMEOUT)
    assert isinstance(outcome.result(SHORT_TIMEOUT), tt.GroupClosedError)
    with pytest.raises(tt.GroupClosedError):
        busy.result(SHORT_TIMEOUT)


def test_a_done_callback_may_call_the_group_again() -> None:
    with tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT) as group:
        answered: Future[Any] = Future()

        def on_done(_: Future[Any]) -> None:
            try:
                answered.set_result(group[1].call("echo", "from a callback", timeout=SHORT_TIMEOUT))
            except BaseException as error:
                answered.set_exception(error)

        group[0].call_async("echo", "first").add_done_callback(on_done)
        assert answered.result(LONG_TIMEOUT) == "from a callback"
        assert group[0].call("echo", "still fine", timeout=SHORT_TIMEOUT) == "still fine"
