"""The actors suite run on the pure-Python ring core (transport/_ringcore_py.py).

Calls lean on the ring core's hot path (send_message, send_plain, take, take_each)
harder than any transport test does, so the twin stands in for the compiled core
only if the actors' own tests pass on it. test_ringcore.py does the same for the
transport suite. Slow: the suites run again in a subprocess, with
``TORCHTROUPE_NATIVE=0``, which its ranks inherit.
"""

from __future__ import annotations

import pytest

from tests.support.twin import REPO_ROOT, assert_passes_on_the_twin, assert_twin_is_selected
from tests.timeouts import LONG_TIMEOUT

# tests/scenarios holds whole-program tests of actor groups where it exists.
SUITES = ("tests/actors", "tests/scenarios")
SUITE_TIMEOUT = 540.0


@pytest.mark.slow
@pytest.mark.timeout(SUITE_TIMEOUT + 2 * LONG_TIMEOUT)
def test_the_actors_suite_passes_on_the_pure_python_core() -> None:
    assert_twin_is_selected()
    suites = [suite for suite in SUITES if (REPO_ROOT / suite).is_dir()]
    assert "tests/actors" in suites
    assert_passes_on_the_twin(suites, SUITE_TIMEOUT)
