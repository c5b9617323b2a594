"""Helpers for testing code that uses torchtroupe: leak checks (fault injection to come)."""

from .leaks import LeakSnapshot as LeakSnapshot
from .leaks import assert_no_leaks as assert_no_leaks
from .leaks import find_leaks as find_leaks
from .leaks import take_snapshot as take_snapshot

__all__ = ["LeakSnapshot", "assert_no_leaks", "find_leaks", "take_snapshot"]
