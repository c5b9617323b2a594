"""Tests for torchtroupe/actors/group.py: calls, bad input, shutdown, threads, big data."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import psutil
import pytest
import torch

import torchtroupe as tt
from tests.actors.actors_for_tests import Echo, checksum, patterned_tensor
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT


def spawn_echo() -> tt.ActorGroup:
    """Two ranks of Echo with scale 2.0."""
    return tt.spawn(Echo, args=(2.0,), world_size=2, timeout=LONG_TIMEOUT)


# -- the kinds of call ------------------------------------------------------------------


def test_call_returns_the_endpoint_result_from_that_rank() -> None:
    with spawn_echo() as group:
        assert group[0].call("whoami", timeout=SHORT_TIMEOUT) == (0, group.pids[0])
        assert group[1].call("whoami", timeout=SHORT_TIMEOUT) == (1, group.pids[1])
        assert group[1].call("scaled", 3.0, timeout=SHORT_TIMEOUT) == 6.0


def test_call_passes_keyword_arguments() -> None:
    with spawn_echo() as group:
        assert group[0].call("add", 1, b=2, c=3, timeout=SHORT_TIMEOUT) == 6
        assert group[0].call("add", a=4, timeout=SHORT_TIMEOUT) == 4


def test_call_async_returns_a_future_of_the_result() -> None:
    with spawn_echo() as group:
        future = group[1].call_async("add", 20, c=1, timeout=SHORT_TIMEOUT)
        assert isinstance(future, Future)
        assert future.result(timeout=SHORT_TIMEOUT) == 21


def test_broadcast_returns_results_in_rank_order() -> None:
    with spawn_echo() as group:
        assert group.broadcast("whoami", timeout=SHORT_TIMEOUT) == [
            (rank, pid) for rank, pid in enumerate(group.pids)
        ]


def test_broadcast_async_returns_a_future_of_the_list() -> None:
    with spawn_echo() as group:
        future = group.broadcast_async("add", 1, b=1, timeout=SHORT_TIMEOUT)
        assert isinstance(future, Future)
        assert future.result(timeout=SHORT_TIMEOUT) == [2, 2]


def test_scatter_gives_rank_i_the_ith_arguments() -> None:
    with spawn_echo() as group:
        assert group.scatter("add", [(1, 10), (2, 20)], c=100, timeout=SHORT_TIMEOUT) == [111, 122]


def test_scatter_with_the_wrong_number_of_tuples_raises_value_error() -> None:
    with spawn_echo() as group:
        with pytest.raises(ValueError, match="2"):
            group.scatter("log", [(1,)], timeout=SHORT_TIMEOUT)
        with pytest.raises(ValueError):
            group.scatter("log", [(1,), (2,), (3,)], timeout=SHORT_TIMEOUT)
        assert group.broadcast("fetch_log", timeout=SHORT_TIMEOUT) == [[], []]


def test_run_calls_a_lambda_with_the_actor_and_arguments_on_every_rank() -> None:
    with spawn_echo() as group:
        assert group.run(
            lambda actor, k: actor.scale * k + actor.rank, 3, timeout=SHORT_TIMEOUT
        ) == [
            6.0,
            7.0,
        ]


def test_run_carries_a_closure_to_the_ranks() -> None:
    with spawn_echo() as group:
        offset = 100
        captured = {"word": "closure"}

        def describe(actor: Echo, *, suffix: str) -> str:
            return f"{captured['word']}-{actor.rank + offset}-{suffix}"

        assert group.run(describe, suffix="x", timeout=SHORT_TIMEOUT) == [
            "closure-100-x",
            "closure-101-x",
        ]


def test_negative_index_names_the_last_rank() -> None:
    with spawn_echo() as group:
        assert group[-1].call("whoami", timeout=SHORT_TIMEOUT)[0] == 1
        with pytest.raises(IndexError):
            group[2]


# -- bad input loses nothing --------------------------------------------------------------


def test_unknown_endpoint_raises_attribute_error_listing_the_endpoints() -> None:
    with spawn_echo() as group:
        with pytest.raises(AttributeError) as caught:
            group[0].call("no_such_endpoint", timeout=SHORT_TIMEOUT)
        message = str(caught.value)
        assert "no_such_endpoint" in message
        for name in ("echo", "add", "whoami", "log"):
            assert name in message
        with pytest.raises(AttributeError):
            group.broadcast("no_such_endpoint", timeout=SHORT_TIMEOUT)
        with pytest.raises(AttributeError):
            group.scatter("no_such_endpoint", [(), ()], timeout=SHORT_TIMEOUT)
        assert group[0].call("echo", "next", timeout=SHORT_TIMEOUT) == "next"


def test_method_not_marked_endpoint_raises_attribute_error_saying_so() -> None:
    with spawn_echo() as group:
        with pytest.raises(AttributeError, match="not_an_endpoint") as caught:
            group[0].call("not_an_endpoint", timeout=SHORT_TIMEOUT)
        assert "endpoint" in str(caught.value)
        assert "not marked" in str(caught.value)
        assert group[0].call("echo", "next", timeout=SHORT_TIMEOUT) == "next"


def test_wrong_arity_raises_type_error_before_anything_is_sent() -> None:
    with spawn_echo() as group:
        with pytest.raises(TypeError, match="add"):
            group[0].call("add", timeout=SHORT_TIMEOUT)
        with pytest.raises(TypeError):
            group[0].call("log", 1, 2, timeout=SHORT_TIMEOUT)
        with pytest.raises(TypeError):
            group.broadcast("log", unknown=1, timeout=SHORT_TIMEOUT)
        with pytest.raises(TypeError):
            group.scatter("log", [(1,), (1, 2)], timeout=SHORT_TIMEOUT)
        assert group.broadcast("fetch_log", timeout=SHORT_TIMEOUT) == [[], []]


def test_unpicklable_argument_raises_type_error_and_the_next_call_works() -> None:
    with spawn_echo() as group:
        with pytest.raises(TypeError, match="lock"):
            group[0].call("echo", threading.Lock(), timeout=SHORT_TIMEOUT)
        with pytest.raises(TypeError):
            group.broadcast("echo", threading.Lock(), timeout=SHORT_TIMEOUT)
        assert group[0].call("echo", "next", timeout=SHORT_TIMEOUT) == "next"
        assert group.broadcast("echo", "all", timeout=SHORT_TIMEOUT) == ["all", "all"]


def test_scatter_with_one_unpicklable_tuple_sends_nothing_to_any_rank() -> None:
    with spawn_echo() as group:
        with pytest.raises(TypeError):
            group.scatter("log", [(1,), (threading.Lock(),)], timeout=SHORT_TIMEOUT)
        group.scatter("log", [(2,), (2,)], timeout=SHORT_TIMEOUT)
        assert group.broadcast("fetch_log", timeout=SHORT_TIMEOUT) == [[2], [2]]


def test_unpicklable_result_raises_an_error_saying_so_and_the_next_call_works() -> None:
    with spawn_echo() as group:
        with pytest.raises(TypeError) as caught:
            group[1].call("return_a_lock", timeout=SHORT_TIMEOUT)
        message = str(caught.value)
        assert "lock" in message
        assert "result" in message
        assert group[1].call("echo", "next", timeout=SHORT_TIMEOUT) == "next"


def test_negative_timeout_raises_value_error() -> None:
    with spawn_echo() as group:
        with pytest.raises(ValueError, match="timeout"):
            group[0].call("echo", 1, timeout=-1.0)
        assert group[0].call("echo", 1, timeout=SHORT_TIMEOUT) == 1


# -- shutdown -------------------------------------------------------------------------------


def _shm_fds() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/dev/shm/"):
            found.add(f"{fd} -> {target}")
    return found


def test_context_manager_stops_and_reaps_every_rank() -> None:
    with tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT) as group:
        pids = list(group.pids)
        processes = [psutil.Process(pid) for pid in pids]
    children = {child.pid for child in psutil.Process().children(recursive=True)}
    assert not children & set(pids)
    assert not any(process.is_running() for process in processes)


def test_shutdown_twice_is_fine() -> None:
    group = tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT)
    group.shutdown(timeout=SHORT_TIMEOUT)
    group.shutdown(timeout=SHORT_TIMEOUT)
    with group:
        pass  # the context manager's shutdown is a third one


def test_calls_after_shutdown_raise_group_closed_error() -> None:
    group = tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT)
    group.shutdown(timeout=SHORT_TIMEOUT)
    with pytest.raises(tt.GroupClosedError):
        group[0].call("echo", 1, timeout=SHORT_TIMEOUT)
    with pytest.raises(tt.GroupClosedError):
        group[0].call_async("echo", 1, timeout=SHORT_TIMEOUT).result(timeout=SHORT_TIMEOUT)
    with pytest.raises(tt.GroupClosedError):
        group.broadcast("echo", 1, timeout=SHORT_TIMEOUT)
    with pytest.raises(tt.GroupClosedError):
        group.scatter("echo", [(1,), (2,)], timeout=SHORT_TIMEOUT)
    with pytest.raises(tt.GroupClosedError):
        group.run(lambda actor: actor.rank, timeout=SHORT_TIMEOUT)


def test_shutdown_releases_the_mailbox_shared_memory() -> None:
    before = _shm_fds()
    group = tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT)
    assert group.broadcast("echo", 1, timeout=SHORT_TIMEOUT) == [1, 1]
    group.shutdown(timeout=SHORT_TIMEOUT)
    # The group object is still referenced, as a user's variable would keep it; a
    # closed group has no use for its rings and must not keep their memory open.
    left_open = _shm_fds() - before
    del group  # so that a failure here is not also reported as a leak
    assert left_open == set()


def test_group_dropped_without_shutdown_has_its_ranks_reaped() -> None:
    group = tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT)
    pids = list(group.pids)
    processes = [psutil.Process(pid) for pid in pids]
    assert group.broadcast("echo", 1, timeout=SHORT_TIMEOUT) == [1, 1]
    del group
    gc.collect()
    children = {child.pid for child in psutil.Process().children(recursive=True)}
    assert not children & set(pids)
    assert not any(process.is_running() for process in processes)


# -- threads and asyncio --------------------------------------------------------------------


def test_four_caller_threads_at_once_all_get_their_own_results() -> None:
    with spawn_echo() as group:
        calls_per_thread = 300

        def caller(thread: int) -> list[str]:
            wrong = []
            for i in range(calls_per_thread):
                rank = i % 2
                kind = i % 3
                if kind == 0:
                    got = group[rank].call("add", thread, i, timeout=LONG_TIMEOUT)
                    expected: object = thread + i
                elif kind == 1:
                    got = group.broadcast("echo", (thread, i), timeout=LONG_TIMEOUT)
                    expected = [(thread, i), (thread, i)]
                else:
                    got = group.scatter("add", [(thread,), (i,)], c=1, timeout=LONG_TIMEOUT)
                    expected = [thread + 1, i + 1]
                if got != expected:
                    wrong.append(f"thread {thread} call {i}: {got!r} != {expected!r}")
            return wrong

        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(caller, thread) for thread in range(4)]
            wrong = [line for future in futures for line in future.result(timeout=LONG_TIMEOUT)]
        assert wrong == []


def test_call_async_future_can_be_awaited_with_asyncio() -> None:
    with spawn_echo() as group:

        async def main() -> list[object]:
            one = asyncio.wrap_future(group[0].call_async("add", 40, 2, timeout=SHORT_TIMEOUT))
            every = asyncio.wrap_future(group.broadcast_async("add", 1, timeout=SHORT_TIMEOUT))
            return await asyncio.wait_for(asyncio.gather(one, every), SHORT_TIMEOUT)

        assert asyncio.run(main()) == [42, [1, 1]]


# -- big data -------------------------------------------------------------------------------

_BIG_NUMEL = 300 * (1 << 20) // 4  # 300 MiB of float32


def test_300_mib_tensor_argument_arrives_intact() -> None:
    tensor = patterned_tensor(_BIG_NUMEL, seed=1)
    expected = checksum(tensor)
    with tt.spawn(Echo, timeout=LONG_TIMEOUT) as group:
        got = group[0].call("checksum_of", tensor, timeout=LONG_TIMEOUT)
    assert got == (expected, (_BIG_NUMEL,), "torch.float32")


def test_300_mib_tensor_result_arrives_intact() -> None:
    with tt.spawn(Echo, timeout=LONG_TIMEOUT) as group:
        tensor = group[0].call("make_patterned", _BIG_NUMEL, 2, timeout=LONG_TIMEOUT)
    assert tensor.dtype == torch.float32
    assert tensor.shape == (_BIG_NUMEL,)
    got = checksum(tensor)
    del tensor
    assert got == checksum(patterned_tensor(_BIG_NUMEL, seed=2))


def test_views_of_one_storage_stay_aliased_in_the_rank() -> None:
    with spawn_echo() as group:
        whole = torch.zeros(16)
        views = {"whole": whole, "part": whole[4:8]}
        assert group[0].call("views_share_storage", views, timeout=SHORT_TIMEOUT) is True


def test_views_of_one_storage_stay_aliased_in_the_caller() -> None:
    with spawn_echo() as group:
        whole, part = group[0].call("make_views", timeout=SHORT_TIMEOUT)
        assert part.shape == (4,)
        whole[5] = 7.0
        assert part[1].item() == 7.0
