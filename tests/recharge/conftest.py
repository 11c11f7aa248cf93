"""Recharge fixtures: a real deployment (redis-server + SQLite/PostgreSQL ledger), a gateway
(the in-memory fake or the real simulator process) and the recharge wiring with a fault hook."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tally.billing.recharge import Circuit, Recharging
from tally.bootstrap import Deployment, recharging
from tally.domain.accounts import Account
from tally.domain.recharge import RechargeRule
from tally.gateway import FakeGateway, Gateway
from tally.gateway.process import SimulatorProcess
from tally.sync.drainer import Drainer

ROUNDS_MAX = 200
CARD = "card_acme"


class Crash(BaseException):
    """The worker dies here (BaseException: no ``except Exception`` in the code can swallow it)."""


@dataclass
class Faults:
    """A fault hook: raise ``Crash`` the first time ``point`` is reached."""

    point: str | None = None
    seen: list[str] = field(default_factory=list)

    def __call__(self, where: str) -> None:
        self.seen.append(where)
        if where == self.point:
            self.point = None
            raise Crash(where)


@pytest.fixture
def fake_gateway() -> Iterator[FakeGateway]:
    gw = FakeGateway()
    yield gw
    gw.close()


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess(data_dir=tmp_path / "gateway")
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


def wire(
    dep: Deployment,
    gateway: Gateway,
    fault: Callable[[str], None] | None = None,
    circuit: Circuit | None = None,
) -> Recharging:
    """The deployment's recharge machinery, from the one composition root ``serve`` uses."""
    return recharging(dep, gateway, circuit=circuit, fault=fault)


def drain_all(dep: Deployment) -> None:
    drainer = Drainer(dep.client, dep.layout, dep.ledger)
    for _ in range(ROUNDS_MAX):
        if drainer.run_once() == 0:
            return
    raise AssertionError("journal did not drain")


def complete_all(r: Recharging, rounds_max: int = 20) -> None:
    for _ in range(rounds_max):
        if not r.saga.book.unfinished(limit=100):
            return
        r.completer.run_once(100)
    raise AssertionError(f"recharges left unfinished: {r.saga.book.unfinished(limit=100)}")


def open_customer(
    r: Recharging,
    dep: Deployment,
    account_id: str = "acme",
    *,
    balance_minor: int = 1000,
    threshold_minor: int = 500,
    target_minor: int = 2000,
    declines_max: int = 2,
    daily_cap_minor: int = 100_000,
) -> None:
    dep.engine.create_account(Account(account_id, "USD"))
    if balance_minor:
        dep.engine.credit(f"seed-{account_id}", account_id, balance_minor, "USD")
    rule = RechargeRule(
        account_id, CARD, threshold_minor, daily_cap_minor, declines_max, target_minor=target_minor
    )
    assert r.service.set_rule(rule).name == "ok"


def balance(dep: Deployment, account_id: str = "acme") -> int:
    state = dep.engine.account(account_id)
    assert state is not None
    return state.balance_minor
