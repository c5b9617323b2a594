"""Tests for torchtroupe/supervision/spawn.py: starting groups, all ranks or none."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import pytest

import torchtroupe as tt
from tests.actors.actors_for_tests import (
    Collective,
    Echo,
    ExitsInInit,
    FailsInInit,
    InitFailedError,
    NotAnActor,
)
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT

REPO_ROOT = Path(__file__).resolve().parents[2]


# -- a started group ------------------------------------------------------------------


def test_spawn_starts_world_size_ranks_with_distinct_pids() -> None:
    with tt.spawn(Echo, world_size=3, timeout=LONG_TIMEOUT) as group:
        pids = group.pids
        assert group.world_size == 3
        assert len(group) == 3
        assert len(set(pids)) == 3
        assert os.getpid() not in pids
        assert [group[rank].pid for rank in range(3)] == pids
        assert group.broadcast("whoami", timeout=SHORT_TIMEOUT) == [
            (rank, pid) for rank, pid in enumerate(pids)
        ]


def test_rank_attributes_are_set_before_init_runs() -> None:
    with tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT) as group:
        seen = group.broadcast("attributes_at_init", timeout=SHORT_TIMEOUT)
    assert seen == [
        {"rank": rank, "world_size": 2, "local_rank": rank, "device": "cpu"} for rank in range(2)
    ]


def test_init_receives_spawn_args_and_kwargs() -> None:
    with tt.spawn(
        Echo, args=(2.5,), kwargs={"tag": "hello"}, world_size=2, timeout=LONG_TIMEOUT
    ) as group:
        assert group.broadcast("init_settings", timeout=SHORT_TIMEOUT) == [(2.5, "hello")] * 2


def test_ranks_see_torch_distributed_environment_variables() -> None:
    with tt.spawn(Echo, world_size=2, timeout=LONG_TIMEOUT) as group:
        seen = group.run(
            lambda actor: {
                name: os.environ[name]
                for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
            },
            timeout=SHORT_TIMEOUT,
        )
    for rank, env in enumerate(seen):
        assert env["RANK"] == str(rank)
        assert env["LOCAL_RANK"] == str(rank)
        assert env["WORLD_SIZE"] == "2"
        assert env["MASTER_ADDR"] == "127.0.0.1"
        assert 0 < int(env["MASTER_PORT"]) < 65536
    assert seen[0]["MASTER_PORT"] == seen[1]["MASTER_PORT"]


def test_env_option_sets_variables_in_every_rank() -> None:
    with tt.spawn(
        Echo, world_size=2, env={"TROUPE_TEST_VALUE": "42"}, timeout=LONG_TIMEOUT
    ) as group:
        seen = group.run(lambda actor: os.environ.get("TROUPE_TEST_VALUE"), timeout=SHORT_TIMEOUT)
    assert seen == ["42", "42"]


# -- bad options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"world_size": 0}, "world_size"),
        ({"start_method": "bogus"}, "start_method"),
        ({"distributed": "mpi"}, "distributed"),
    ],
)
def test_spawn_rejects_a_bad_option_with_value_error_naming_the_field(
    options: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        tt.spawn(Echo, timeout=LONG_TIMEOUT, **options)  # type: ignore[arg-type]


def test_spawn_rejects_a_class_that_is_not_an_actor_with_type_error() -> None:
    with pytest.raises(TypeError, match="Actor"):
        tt.spawn(NotAnActor, timeout=LONG_TIMEOUT)  # type: ignore[arg-type]


# -- start methods and torch.distributed --------------------------------------------------


def test_spawn_start_method_starts_a_working_rank() -> None:
    with tt.spawn(Echo, start_method="spawn", timeout=LONG_TIMEOUT) as group:
        rank, pid = group[0].call("whoami", timeout=SHORT_TIMEOUT)
        assert (rank, pid) == (0, group[0].pid)
        assert group[0].call("add", 2, 3, timeout=SHORT_TIMEOUT) == 5


def test_gloo_group_all_reduces_across_ranks() -> None:
    with tt.spawn(Collective, world_size=2, distributed="gloo", timeout=LONG_TIMEOUT) as group:
        assert group.broadcast("process_group", timeout=LONG_TIMEOUT) == [
            (0, 2, "gloo"),
            (1, 2, "gloo"),
        ]
        assert group.broadcast("all_reduce_ones", timeout=LONG_TIMEOUT) == [[2.0, 2.0, 2.0]] * 2


# -- all ranks or none --------------------------------------------------------------------


def test_init_raising_on_one_rank_fails_spawn_with_actor_init_error_naming_it() -> None:
    with pytest.raises(tt.ActorInitError) as caught:
        tt.spawn(FailsInInit, args=(1,), world_size=3, timeout=LONG_TIMEOUT)
    error = caught.value
    assert error.rank == 1
    assert "FailsInInit" in str(error)
    assert "rank 1" in str(error)
    cause = error.__cause__
    assert isinstance(cause, InitFailedError)
    assert "rank 1 cannot start" in str(cause)
    formatted = "".join(traceback.format_exception(cause))
    assert "actors_for_tests.py" in formatted
    assert "__init__" in formatted
    # The leak check proves that ranks 0 and 2 were stopped and reaped.


def test_rank_exiting_in_init_fails_spawn_with_its_exit_code() -> None:
    with pytest.raises(tt.ActorInitError) as caught:
        tt.spawn(ExitsInInit, args=(1, 3), world_size=2, timeout=LONG_TIMEOUT)
    error = caught.value
    assert error.rank == 1
    cause = error.__cause__
    assert isinstance(cause, tt.ActorDiedError)
    assert cause.rank == 1
    assert cause.exitcode == 3
    assert cause.signal_name is None


# -- classes from __main__ -----------------------------------------------------------------

_MAIN_SCRIPT = """
import torchtroupe as tt


class ScriptError(Exception):
    pass


class ScriptActor(tt.Actor):
    def __init__(self, base):
        self.base = base

    @tt.endpoint
    def plus(self, x):
        return self.base + x + self.rank

    @tt.endpoint
    def fail(self, message):
        raise ScriptError(message)


with tt.spawn(ScriptActor, args=(10,), world_size=2, timeout={timeout}) as group:
    assert group.broadcast("plus", 1, timeout={timeout}) == [11, 12]
    try:
        group[1].call("fail", "from the script", timeout={timeout})
    except ScriptError as error:
        assert "from the script" in str(error), error
        print("OK")
"""


def test_actor_and_exception_classes_from_an_unguarded_main_script_work(
    tmp_path: Path,
) -> None:
    script = tmp_path / "unguarded_script.py"
    script.write_text(textwrap.dedent(_MAIN_SCRIPT.format(timeout=LONG_TIMEOUT)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    finished = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=2 * LONG_TIMEOUT,
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "OK", finished.stderr
