"""Every program in examples/ runs to completion with small arguments.

Each example runs as its own process (``subprocess.run`` waits for it and reaps it),
as a user would start it: the actor classes live in the script's ``__main__``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# Each example starts its own forkserver (importing torch) and its ranks.
EXAMPLE_TIMEOUT = 100.0


@pytest.mark.parametrize(
    ("script", "arguments", "expected"),
    [
        ("rl_loop.py", ["--steps", "4", "--batch", "64"], "mean reward went from"),
        (
            "ddp_recovery.py",
            ["--steps", "6", "--checkpoint-every", "2", "--kill-at", "3", "--batch-size", "16"],
            "final weights identical on both ranks: True",
        ),
        (
            "tp_executor.py",
            ["--world-size", "2", "--hidden", "64", "--steps", "2"],
            "sharded output matches the unsharded MLP: True",
        ),
    ],
)
@pytest.mark.timeout(EXAMPLE_TIMEOUT + 20)
def test_example_runs_and_prints_its_result(
    script: str, arguments: list[str], expected: str
) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *arguments],
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{script} exited with {result.returncode}:\n{output}"
    assert expected in result.stdout, output
