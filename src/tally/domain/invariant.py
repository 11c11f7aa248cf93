"""An always-on assertion (``assert`` disappears under ``python -O``)."""

from __future__ import annotations

from tally.errors import InvariantViolation


def invariant(condition: bool, message: str) -> None:
    if not condition:
        raise InvariantViolation(message)
