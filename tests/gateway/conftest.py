"""Gateway fixtures: a real simulator process on a free loopback port (always stopped, checked
gone), and one harness that gives the contract tests either adapter with its fault controls."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tally.gateway import FakeGateway, Faults, Gateway, Record
from tally.gateway.process import SimulatorProcess


def assert_gone(pid: int | None) -> None:
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess(data_dir=tmp_path / "gateway")
    sim.start()
    pid = sim.pid
    try:
        yield sim
    finally:
        sim.stop()
        assert_gone(pid)


@dataclass
class Harness:
    """An adapter under test plus the simulator controls it is paired with."""

    name: str
    gateway: Gateway
    set_faults: Callable[..., Faults]
    records: Callable[[], list[Record]]


@pytest.fixture(params=["fake", "http"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "fake":
        fake = FakeGateway()
        yield Harness("fake", fake, fake.set_faults, fake.records)
        fake.close()
        return
    sim: SimulatorProcess = request.getfixturevalue("simulator")
    with sim.gateway() as gateway, sim.admin() as admin:
        yield Harness("http", gateway, admin.set_faults, admin.records)


def charge_keys(gateway: Gateway, keys: list[str], card: str = "card_1", **kw: Any) -> list[Any]:
    return [gateway.charge(key, card, 500, "USD", **kw) for key in keys]
