"""The options of a group that the actors floor needs: how ranks start and stop.

Runs in whichever process builds a group. A pydantic model: a bad value fails at
construction with a message that names the field. The restart policy is not here:
restart decisions belong to ``supervision/``, whose ``SpawnOptions`` extends this.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class GroupOptions(BaseModel):
    """How a group's ranks are placed, started and stopped.

    Attributes:
        world_size: Number of ranks.
        devices: None (CPU), ``"cuda"`` (rank ``i`` on ``cuda:i``) or one CUDA index
            per rank.
        name: The group's name in logs and errors (made up from the class if None).
        start_method: ``forkserver``, ``spawn`` or ``fork``.
        distributed: ``nccl`` or ``gloo`` to join one torch.distributed process group.
        env: Extra environment variables of the ranks.
        preload: Modules the forkserver imports once.
        timeout: Seconds to wait for every rank to be ready (None: for ever).
        shutdown_s: Grace period of a graceful stop before SIGTERM.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    world_size: int = Field(default=1, ge=1, le=4096)
    devices: Literal["cuda"] | tuple[int, ...] | None = None
    name: str | None = None
    start_method: Literal["forkserver", "spawn", "fork"] = "forkserver"
    distributed: Literal["nccl", "gloo"] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    preload: tuple[str, ...] = ()
    timeout: float | None = Field(default=120.0, gt=0)
    shutdown_s: float = Field(default=5.0, ge=0)
