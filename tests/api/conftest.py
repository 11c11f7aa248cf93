from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tally.ops.node import orphan_pids
from tests.serve.harness import Served, gateway_pids


def _served(base: Path) -> Iterator[Served]:
    served = Served(home=base / "home")
    served.start()
    try:
        yield served
    finally:
        served.stop()
        assert orphan_pids(str(base)) == [], "redis-server left running"
        assert gateway_pids(str(base)) == [], "gateway simulator left running"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """A fresh ``tally serve`` of its own, for tests that break it."""
    yield from _served(tmp_path)


@pytest.fixture(scope="module")
def shared_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One ``tally serve`` for a module of tests that only use the API (unique ids per test)."""
    yield from _served(tmp_path_factory.mktemp("served"))
