"""Helpers for tests that run a supervising program in a child interpreter.

The program is a script written to a temporary directory and run with
``sys.executable``; it prints what the test needs (pids) as one JSON line.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

from tests.timeouts import LONG_TIMEOUT

_REPO_ROOT = Path(__file__).resolve().parents[2]


def start_script(tmp_path: Path, source: str) -> subprocess.Popen[str]:
    """Runs ``source`` as a script in a new interpreter, with pipes on stdin and stdout."""
    script = tmp_path / "supervising_program.py"
    script.write_text(source)
    env = dict(os.environ, PYTHONPATH=str(_REPO_ROOT))
    with open(tmp_path / "stderr.txt", "w") as stderr:
        return subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            cwd=tmp_path,
        )


def read_json_line(process: subprocess.Popen[str], tmp_path: Path) -> dict[str, object]:
    """The next stdout line of ``process``, parsed as JSON (the program's report)."""
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        code = process.wait(LONG_TIMEOUT)
        stderr = (tmp_path / "stderr.txt").read_text()
        raise AssertionError(f"the program ended without reporting (code {code}):\n{stderr}")
    report: dict[str, object] = json.loads(line)
    return report


def wait_until_gone(pids: list[int], timeout: float = LONG_TIMEOUT) -> list[int]:
    """Waits for processes that are not our children to end; returns those still running.

    Uses pidfds, which become readable when the process exits (as a zombie too),
    so nothing is polled and nothing is reaped.
    """
    selector = selectors.DefaultSelector()
    try:
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue  # gone already
            selector.register(fd, selectors.EVENT_READ, pid)
        deadline = time.monotonic() + timeout
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in selector.select(remaining):
                selector.unregister(key.fd)
                os.close(key.fd)
        return sorted(key.data for key in selector.get_map().values())
    finally:
        for key in list(selector.get_map().values()):
            os.close(key.fd)
        selector.close()
