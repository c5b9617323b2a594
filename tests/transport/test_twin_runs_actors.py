"""The actors suite run on the pure-Python ring core (transport/_ringcore_py.py).

Calls lean on the ring core's hot path (send_message, send_plain, take, take_each)
harder than any transport test does, so the twin stands in for the compiled core
only if the actors' own tests pass on it. test_ringcore.py does the same for the
transport suite. Slow: the suites run again in a subprocess, with
``TORCHTROUPE_NATIVE=0``, which its ranks inherit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.timeouts import LONG_TIMEOUT

REPO_ROOT = Path(__file__).resolve().parents[2]
# tests/scenarios holds whole-program tests of actor groups where it exists.
SUITES = ("tests/actors", "tests/scenarios")
SUITE_TIMEOUT = 540.0


@pytest.mark.slow
@pytest.mark.timeout(SUITE_TIMEOUT + 2 * LONG_TIMEOUT)
def test_the_actors_suite_passes_on_the_pure_python_core() -> None:
    env = {**os.environ, "TORCHTROUPE_NATIVE": "0"}
    selected = subprocess.run(
        [
            sys.executable,
            "-c",
            "from torchtroupe.transport.core import IMPLEMENTATION; print(IMPLEMENTATION)",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=LONG_TIMEOUT,
        check=False,
    )
    assert selected.stdout.strip() == "python", selected.stderr

    suites = [suite for suite in SUITES if (REPO_ROOT / suite).is_dir()]
    assert "tests/actors" in suites
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *suites, "-q", "-p", "no:cacheprovider"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-4000:]
    assert " passed" in run.stdout
