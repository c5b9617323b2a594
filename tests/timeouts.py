"""Hang guards for the test suite, kept in one place.

They bound waits that should end almost at once (SHORT) or that start processes or import
torch (LONG); they never pace a test. pytest-timeout (setup.cfg) is the last resort.
"""

SHORT_TIMEOUT = 10.0
LONG_TIMEOUT = 60.0
