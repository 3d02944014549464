"""What the tests of interruptions share: waiting for a process that must end."""

import os
import time

import pytest


def assert_gone(pid: int, what: str, seconds: float = 10.0) -> None:
    """Fail with ``what`` unless the process ``pid`` has ended (or been reaped) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail(what)
