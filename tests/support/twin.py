"""Running a part of the suite again on the pure-Python ring core (the twin).

Used by the slow tests that prove the twin stands in for the compiled core: the
suites run in a subprocess with ``TORCHTROUPE_NATIVE=0``, which its ranks inherit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.timeouts import LONG_TIMEOUT

REPO_ROOT = Path(__file__).resolve().parents[2]
_ON_THE_TWIN = {**os.environ, "TORCHTROUPE_NATIVE": "0"}


def assert_twin_is_selected() -> None:
    """Fails unless ``TORCHTROUPE_NATIVE=0`` selects the Python core."""
    selected = subprocess.run(
        [
            sys.executable,
            "-c",
            "from torchtroupe.transport.core import IMPLEMENTATION; print(IMPLEMENTATION)",
        ],
        cwd=REPO_ROOT,
        env=_ON_THE_TWIN,
        capture_output=True,
        text=True,
        timeout=LONG_TIMEOUT,
        check=False,
    )
    assert selected.stdout.strip() == "python", selected.stderr


def assert_passes_on_the_twin(paths: list[str], timeout: float, *options: str) -> None:
    """Runs pytest over ``paths`` on the Python core; fails with its output unless
    every test passed."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *paths, "-q", "-p", "no:cacheprovider", *options],
        cwd=REPO_ROOT,
        env=_ON_THE_TWIN,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-4000:]
    assert " passed" in run.stdout
