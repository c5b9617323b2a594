"""Helpers for testing code built on torchtroupe: fault injection and leak checks.

Runs in the test process.
"""

from .faults import exit_rank as exit_rank
from .faults import hung_rank as hung_rank
from .faults import kill_rank as kill_rank
from .faults import segfault_rank as segfault_rank
from .leaks import LeakSnapshot as LeakSnapshot
from .leaks import assert_no_leaks as assert_no_leaks
from .leaks import find_leaks as find_leaks
from .leaks import take_snapshot as take_snapshot

__all__ = [
    "LeakSnapshot",
    "assert_no_leaks",
    "exit_rank",
    "find_leaks",
    "hung_rank",
    "kill_rank",
    "segfault_rank",
    "take_snapshot",
]
