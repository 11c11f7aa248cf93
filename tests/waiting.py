"""The one bounded wait the tests use: poll until something holds, fail with what it was."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    check: Callable[[], T],
    what: str = "condition",
    *,
    timeout_s: float = 60.0,
    pace_s: float = 0.05,
) -> T:
    """Call ``check`` until it returns something truthy, and return that; AssertionError naming
    ``what`` once ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:  # bounded by the deadline
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout_s}s")
        time.sleep(pace_s)
