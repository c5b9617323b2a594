"""A rank that dies after it answered READY, while a sibling is still in ``__init__``,
fails the start (all ranks start, or none does): nothing hangs on a rank that reads
ready with no process behind it (DESIGN.md, actors: all ranks start or none)."""

from __future__ import annotations

import os
import select
import threading
from pathlib import Path

import pytest

import torchtroupe as tt
from tests.timeouts import LONG_TIMEOUT, SHORT_TIMEOUT


def _wait_for_file(path: Path) -> None:
    """Blocks until ``path`` exists, on an inotify-free pipe of the sibling's making."""
    fifo = path.with_suffix(".fifo")
    with open(fifo, "rb") as readable:  # opens once the sibling opened it for writing
        select.select([readable], [], [], LONG_TIMEOUT)


class DiesAfterReady(tt.Actor):
    """Rank 0 dies once rank 1 is in its ``__init__``; rank 1 waits for that death."""

    def __init__(self, folder: str) -> None:
        fifo = Path(folder) / "rank1.fifo"
        if self.rank == 0:
            written = Path(folder) / "rank0.pid.part"
            written.write_text(str(os.getpid()))
            written.replace(Path(folder) / "rank0.pid")  # rank 1 never reads it half-written

            def die_when_rank_1_is_in_init() -> None:
                _wait_for_file(Path(folder) / "rank1")
                os._exit(3)

            threading.Thread(target=die_when_rank_1_is_in_init, daemon=True).start()
        else:
            pid_file = Path(folder) / "rank0.pid"
            while not pid_file.exists():  # rank 0 starts first, in the same millisecond
                os.sched_yield()
            pidfd = os.pidfd_open(int(pid_file.read_text()))
            with open(fifo, "wb"):  # lets rank 0 go on
                pass
            select.select([pidfd], [], [], LONG_TIMEOUT)  # until rank 0 is gone
            os.close(pidfd)

    @tt.endpoint
    def ping(self) -> int:
        return self.rank


def test_a_rank_that_dies_after_ready_while_a_sibling_starts_never_reads_ready(
    tmp_path: Path,
) -> None:
    # Two outcomes are right, depending on whether the death is seen before the
    # sibling's READY: the start fails, or the group starts with rank 0 dead (calls
    # fail at once). Wrong, and what happened before: rank 0 read READY with no process
    # behind it, and calls to it hung.
    os.mkfifo(tmp_path / "rank1.fifo")
    try:
        group = tt.spawn(DiesAfterReady, args=(str(tmp_path),), world_size=2, timeout=LONG_TIMEOUT)
    except tt.ActorInitError as failed:
        assert failed.rank == 0
        assert "exited with code 3" in str(failed)
        return
    with group:
        with pytest.raises(tt.ActorDiedError) as died:
            group[0].call("ping", timeout=SHORT_TIMEOUT)
        assert died.value.exitcode == 3
        assert group.pids[0] is None
        assert group[1].call("ping", timeout=SHORT_TIMEOUT) == 1
