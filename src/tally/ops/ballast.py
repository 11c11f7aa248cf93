"""Data that makes a full sync cost what it would in production: RDB compresses each value with
LZF, so a ballast of repeated bytes would shrink to almost nothing on the wire."""

from __future__ import annotations

import random


def incompressible(size: int, seed: int = 28) -> bytes:
    """``size`` pseudo-random bytes (seeded: every run moves the same bytes). LZF compresses
    within one value only, so one such value reused for every key stays incompressible."""
    return random.Random(seed).randbytes(size)
