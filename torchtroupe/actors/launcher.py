"""Launching one rank of a group: its boot record, its process title, its store port.

Runs in the caller, under the group's send lock (``GroupLifecycle.start``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from ..processes.launch import RANK_PROCESS_PREFIX, RankProcess, launch, start_context
from ..processes.signals import handlers_installed
from ..transport.codec import dumps_by_value
from ..transport.mailbox import MailboxLayout
from .options import GroupOptions
from .rank_main import RANK_MODULE, RankBoot, rank_main


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RankLauncher:
    """Starts rank processes of one group.

    Args:
        group: The group's name.
        actor_class: The actor class; ``args``/``kwargs`` go to its ``__init__``
            (cloudpickled once, by value).
        options: How ranks start.
        device_indices: One CUDA index (or None) per rank.
        supervisor_pid: The process ranks signal with SIGUSR1 (this one if None).
    """

    def __init__(
        self,
        group: str,
        actor_class: type,
        args: tuple[object, ...],
        kwargs: dict[str, object],
        options: GroupOptions,
        device_indices: Sequence[int | None],
        supervisor_pid: int | None = None,
    ) -> None:
        self.group = group
        self.options = options
        self.device_indices = list(device_indices)
        self.supervisor_pid = supervisor_pid or os.getpid()
        self._payload = dumps_by_value((actor_class, args, kwargs))
        self._context = start_context(options.start_method, (RANK_MODULE, *options.preload))
        self.master_port = _free_port()

    def new_process_group(self) -> None:
        """Takes a fresh store port: a restarted distributed group forms a new process
        group, whose store must not meet the old one's."""
        if self.options.distributed is not None:
            self.master_port = _free_port()

    def launch(self, rank: int, layout: MailboxLayout, ready_seq: int) -> RankProcess:
        """Starts rank ``rank``; it answers request ``ready_seq`` once built."""
        boot = RankBoot(
            group=self.group,
            rank=rank,
            world_size=self.options.world_size,
            layout=layout,
            actor=self._payload,
            ready_seq=ready_seq,
            device_index=self.device_indices[rank],
            master_port=self.master_port,
            distributed=self.options.distributed,
            supervisor_pid=self.supervisor_pid,
            signal_supervisor=handlers_installed(),
            env=dict(self.options.env),
        )
        title = f"{RANK_PROCESS_PREFIX}{self.group}:rank{rank}"
        return launch(self._context, rank, title, rank_main, (boot,))
