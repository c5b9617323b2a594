"""Actor classes and exceptions used by the tests of ``torchtroupe/actors``.

They live at module level in an importable module so that every rank can load
them; the test modules import them from here. Each fault is deterministic: a
chosen rank raises, exits or kills itself.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import threading
import time
from typing import Any

import torch

import torchtroupe as tt


def checksum(tensor: torch.Tensor) -> str:
    """A digest of a CPU tensor's bytes, position-sensitive, computed without a copy."""
    contiguous = tensor.contiguous()
    return hashlib.blake2b(contiguous.numpy().data, digest_size=16).hexdigest()


def patterned_tensor(numel: int, seed: int) -> torch.Tensor:
    """A float32 tensor whose content is fixed by ``seed`` (same in every process)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(numel, generator=generator, dtype=torch.float32)


class InitFailedError(Exception):
    """Raised by :class:`FailsInInit` on its chosen rank."""


class KeywordOnlyError(Exception):
    """An exception whose ``__init__`` takes only keyword arguments."""

    def __init__(self, *, code: int) -> None:
        super().__init__(f"failed with code {code}")
        self.code = code


class HoldsLockError(Exception):
    """An exception with one picklable and one unpicklable attribute."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.detail = "kept"
        self.lock = threading.Lock()


class Echo(tt.Actor):
    """The general-purpose test actor: echoes, logs, sleeps, raises and dies on request."""

    def __init__(self, scale: float = 1.0, *, tag: str = "") -> None:
        self.scale = scale
        self.tag = tag
        self.seen: list[int] = []
        self.finished_at: float | None = None
        self.at_init = {
            "rank": self.rank,
            "world_size": self.world_size,
            "local_rank": self.local_rank,
            "device": str(self.device),
        }

    # -- plain answers ------------------------------------------------------------

    @tt.endpoint
    def echo(self, value: Any) -> Any:
        return value

    @tt.endpoint
    def add(self, a: int, b: int = 0, *, c: int = 0) -> int:
        return a + b + c

    @tt.endpoint
    def scaled(self, x: float) -> float:
        return x * self.scale

    @tt.endpoint
    def whoami(self) -> tuple[int, int]:
        return self.rank, os.getpid()

    @tt.endpoint
    def init_settings(self) -> tuple[float, str]:
        return self.scale, self.tag

    @tt.endpoint
    def attributes_at_init(self) -> dict[str, Any]:
        return self.at_init

    def not_an_endpoint(self) -> str:
        return "should not be callable"

    # -- order ----------------------------------------------------------------------

    @tt.endpoint
    def log(self, counter: int) -> int:
        self.seen.append(counter)
        return counter

    @tt.endpoint
    def fetch_log(self) -> list[int]:
        return list(self.seen)

    # -- slow and dying -------------------------------------------------------------

    @tt.endpoint
    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)  # the rank's work, not synchronisation
        return seconds

    @tt.endpoint
    def answer_in_reverse_rank_order(self, step_s: float) -> int:
        time.sleep((self.world_size - 1 - self.rank) * step_s)  # the rank's work
        return self.rank

    @tt.endpoint
    def kill_self(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    @tt.endpoint
    def exit_with(self, code: int) -> None:
        sys.exit(code)

    # -- raising --------------------------------------------------------------------

    @tt.endpoint
    def fail_with_value_error(self, message: str) -> None:
        raise ValueError(message)

    @tt.endpoint
    def fail_on_rank(self, failing_rank: int, others_sleep_s: float) -> int:
        if self.rank == failing_rank:
            raise ValueError(f"rank {self.rank} refuses")
        time.sleep(others_sleep_s)  # the rank's work: answer later than the failing rank
        self.finished_at = time.monotonic()
        return self.rank

    @tt.endpoint
    def when_finished(self) -> float | None:
        return self.finished_at

    @tt.endpoint
    def fail_with_keyword_only_error(self, code: int) -> None:
        raise KeywordOnlyError(code=code)

    @tt.endpoint
    def fail_holding_a_lock(self, message: str) -> None:
        raise HoldsLockError(message)

    @tt.endpoint
    def fail_with_chain(self) -> None:
        try:
            {}["missing"]
        except KeyError as error:
            raise RuntimeError("lookup failed") from error

    # -- awkward values -------------------------------------------------------------

    @tt.endpoint
    def return_a_lock(self) -> threading.Lock:
        return threading.Lock()

    # -- tensors --------------------------------------------------------------------

    @tt.endpoint
    def checksum_of(self, tensor: torch.Tensor) -> tuple[str, tuple[int, ...], str]:
        return checksum(tensor), tuple(tensor.shape), str(tensor.dtype)

    @tt.endpoint
    def make_patterned(self, numel: int, seed: int) -> torch.Tensor:
        return patterned_tensor(numel, seed)

    @tt.endpoint
    def views_share_storage(self, views: dict[str, torch.Tensor]) -> bool:
        """Writes through ``views["whole"]`` and reports whether ``views["part"]`` sees it."""
        whole, part = views["whole"], views["part"]
        whole[5] = 1234.0  # part starts at index 4 of whole
        return bool(part[1].item() == 1234.0)

    @tt.endpoint
    def make_views(self) -> tuple[torch.Tensor, torch.Tensor]:
        whole = torch.zeros(16)
        return whole, whole[4:8]


class FailsInInit(tt.Actor):
    """Raises :class:`InitFailedError` in ``__init__`` on ``failing_rank``."""

    def __init__(self, failing_rank: int) -> None:
        if self.rank == failing_rank:
            raise InitFailedError(f"rank {self.rank} cannot start")

    @tt.endpoint
    def ping(self) -> str:
        return "pong"


class ExitsInInit(tt.Actor):
    """Calls ``os._exit(code)`` in ``__init__`` on ``failing_rank``."""

    def __init__(self, failing_rank: int, code: int) -> None:
        if self.rank == failing_rank:
            os._exit(code)

    @tt.endpoint
    def ping(self) -> str:
        return "pong"


class Collective(tt.Actor):
    """Uses the torch.distributed process group that ``distributed=`` formed."""

    @tt.endpoint
    def all_reduce_ones(self) -> list[float]:
        import torch.distributed as dist

        tensor = torch.ones(3)
        dist.all_reduce(tensor)
        return tensor.tolist()

    @tt.endpoint
    def process_group(self) -> tuple[int, int, str]:
        import torch.distributed as dist

        return dist.get_rank(), dist.get_world_size(), dist.get_backend()


class NotAnActor:
    """Has an endpoint-shaped method but does not subclass ``tt.Actor``."""

    @tt.endpoint
    def ping(self) -> str:
        return "pong"
