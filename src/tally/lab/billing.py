"""The system under test, behind one small interface: ``tally`` (real ``tally serve``
processes, driven over HTTP: ``tally.lab.serve_billing``) or ``legacy`` (the 2013 logic in
``tally.lab.legacy``, the control, in this process: it is not tally).

Both run on the same topology, the same ledger file and the same gateway simulator. Each call
returns a history completion: ``(type, value)`` with type ``ok`` (the service answered;
``value["result"]`` says what it decided), ``fail`` (it definitely did not happen) or ``info``
(unknown). ``via`` names the data center whose entry point a call goes through (the control has
one, in-process: it ignores it).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from tally.bootstrap import Deployment, open_deployment
from tally.config import Settings
from tally.domain.accounts import Account, SystemAccount
from tally.errors import StoreOutcomeUnknown, TallyError
from tally.gateway.client import HttpGateway
from tally.lab.legacy import LegacyBilling, LegacyPlan
from tally.lab.rig import NAMESPACE, SHARDS, Rig
from tally.ledger.sql_ledger import SqlLedger
from tally.store.keys import KeyLayout
from tally.sync.drainer import Drainer
from tally.sync.rebuild import init_store, inspect_dataset

log = logging.getLogger(__name__)

Completion = tuple[str, dict[str, Any]]
CURRENCY = "USD"
GATEWAY_READ_TIMEOUT_S = 2.0
BACKGROUND_PACE_S = 0.2
ERROR_PACE_S = 0.5
SETTLE_ROUNDS_MAX = 200


@dataclass(frozen=True)
class AccountSpec:
    id: str
    card: str
    initial_minor: int
    threshold_minor: int
    target_minor: int
    declines: bool


class BillingSystem(Protocol):
    name: str

    def open_accounts(self, accounts: list[AccountSpec]) -> None: ...

    entry_points: tuple[str, ...]

    def debit(self, tid: str, account: str, amount_minor: int, via: int = 0) -> Completion: ...
    def debit_batch(self, items: list[tuple[str, str, int]], via: int = 0) -> list[Completion]: ...
    def top_up(self, tid: str, account: str, amount_minor: int, via: int = 0) -> Completion: ...
    def read(self, account: str, via: int = 0) -> Completion: ...
    def set_rule(self, account: AccountSpec, via: int = 0) -> Completion: ...
    def start_background(self) -> None: ...
    def stop_background(self) -> None: ...
    def operator(self, action: str) -> str: ...
    def settle(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


def _error(exc: BaseException) -> dict[str, Any]:
    return {"error": type(exc).__name__, "message": str(exc)[:200]}


def _classify(exc: BaseException) -> Completion:
    """Definite refusals are ``fail``; anything that may have been applied is ``info``."""
    if isinstance(exc, StoreOutcomeUnknown):
        return "info", _error(exc)
    if isinstance(exc, TallyError):
        return "fail", _error(exc)
    return "info", _error(exc)


@dataclass
class _Loop:
    """A background ``run_once`` at a pace, errors counted, until stopped."""

    name: str
    step: Callable[[], int]
    stop: threading.Event
    errors: int = 0
    last_error: str | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"lab-{self.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                done = self.step()
            except (TallyError, redis.RedisError, OSError) as exc:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                self.stop.wait(ERROR_PACE_S)
                continue
            self.stop.wait(0.02 if done else BACKGROUND_PACE_S)


class _Base:
    """The control's in-process deployment: the store, its drainer, the gateway client."""

    name = "base"
    entry_points: tuple[str, ...] = ("dc1",)

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.layout = KeyLayout(NAMESPACE, SHARDS)
        with SqlLedger.open(rig.ledger_url()) as ledger:
            primary = rig.nodes[rig.topology.primary.name]
            with contextlib.closing(primary.client(socket_timeout=10.0)) as client:
                init_store(client, self.layout, ledger)
        settings = Settings(
            home=rig.out_dir / "home",
            redis_url=rig.redis_url(),
            ledger_url=rig.ledger_url(),
            namespace=NAMESPACE,
            shards=SHARDS,
        )
        self.dep = open_deployment(settings)
        self.gateway = HttpGateway(rig.simulator.url, read_timeout_s=GATEWAY_READ_TIMEOUT_S)
        # Hardened: settle only what a replica holds, so a failover cannot leave the ledger
        # ahead of the promoted replica; 2013 drains whatever the primary has, as it did.
        self.drainer = Drainer(
            self.dep.client,
            self.layout,
            self.dep.ledger,
            consumer="lab-drainer",
            replicas=1 if rig.hardened else 0,
        )
        self._stop = threading.Event()
        self.loops: list[_Loop] = [_Loop("drainer", self._drain_once, self._stop)]

    def _drain_once(self) -> int:
        self.drainer.client = self.dep.store.client  # follow a failover
        return self.drainer.run_once(1000)

    def start_background(self) -> None:
        for loop in self.loops:
            loop.start()

    def stop_background(self) -> None:
        self._stop.set()
        for loop in self.loops:
            if loop.thread is not None:
                loop.thread.join(15)

    def drain_all(self) -> int:
        total = 0
        for _ in range(SETTLE_ROUNDS_MAX):
            try:
                done = self._drain_once()
            except (TallyError, redis.RedisError) as exc:
                log.warning("final drain: %s", exc)
                return total
            total += done
            if done == 0:
                break
        return total

    def store_lost(self) -> bool:
        client = self.dep.store.client
        return inspect_dataset(client, self.layout, self.dep.ledger).value != "healthy"

    def rediscover(self) -> None:
        with contextlib.suppress(TallyError, redis.RedisError):
            self.dep.store.reconnect()

    def background_errors(self) -> dict[str, Any]:
        return {loop.name: {"errors": loop.errors, "last": loop.last_error} for loop in self.loops}

    def close(self) -> None:
        self.stop_background()
        with contextlib.suppress(Exception):
            self.gateway.close()
        with contextlib.suppress(Exception):
            self.dep.close()


class _ClientProxy:
    """Legacy reads balances on whatever client the store writes with (it follows Sentinel)."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep

    def hget(self, key: str, field_: str) -> Any:
        return self.dep.store.client.hget(key, field_)


class LegacyBillingSystem(_Base):
    name = "legacy"

    def __init__(self, rig: Rig) -> None:
        super().__init__(rig)
        self.legacy: LegacyBilling | None = None

    def open_accounts(self, accounts: list[AccountSpec]) -> None:
        engine = self.dep.engine
        plans = {}
        for a in accounts:
            engine.create_account(Account(a.id, CURRENCY))
            if a.initial_minor:
                engine.credit(f"seed-{a.id}", a.id, a.initial_minor, CURRENCY)
            plans[a.id] = LegacyPlan(a.card, a.threshold_minor, a.target_minor - a.threshold_minor)
        self.legacy = LegacyBilling(
            self.dep.store, _ClientProxy(self.dep), self.layout, self.dep.ledger,  # type: ignore[arg-type]
            self.gateway, plans,
        )  # fmt: skip

    def debit(self, tid: str, account: str, amount_minor: int, via: int = 0) -> Completion:
        """Legacy answers nothing: it logs its failures and carries on, so its caller always
        sees success (that is the 2013 behaviour under test)."""
        assert self.legacy is not None
        try:
            self.legacy.usage(tid, account, amount_minor)
        except Exception as exc:
            return _classify(exc)
        return "ok", {"result": "ok"}

    def debit_batch(self, items: list[tuple[str, str, int]], via: int = 0) -> list[Completion]:
        """2013 had no batch call: one usage after another."""
        return [self.debit(tid, account, amount) for tid, account, amount in items]

    def read(self, account: str, via: int = 0) -> Completion:
        try:
            raw = self.dep.store.client.hget(self.layout.account_key(account), "bal")
        except Exception as exc:
            return _classify(exc)
        return "ok", {"result": "ok", "balance_minor": None if raw is None else int(raw)}

    def set_rule(self, account: AccountSpec, via: int = 0) -> Completion:
        """2013's plans were fixed at sign-up: nothing to change."""
        return "ok", {"result": "unchanged"}

    def top_up(self, tid: str, account: str, amount_minor: int, via: int = 0) -> Completion:
        """A plain credit through the store (no intent in the ledger first)."""
        try:
            applied = self.dep.store.apply([(tid, "c", account, amount_minor, "")])
        except Exception as exc:
            return _classify(exc)
        first = applied.results[0]
        return "ok", {"result": first.result.name, "balance_minor": first.balance_minor}

    def operator(self, action: str) -> str:
        return f"{action}: legacy has no such procedure (2013 mitigation was manual)"

    def settle(self) -> dict[str, Any]:
        self.rediscover()
        drained = self.drain_all()
        stats = self.legacy.stats if self.legacy else None
        return {
            "drained": drained,
            "legacy_charges": stats.charges if stats else 0,
            "legacy_balance_writes_failed": stats.balance_writes_failed if stats else 0,
            "legacy_suspensions": stats.suspensions if stats else 0,
        }


def make_billing(name: str, rig: Rig) -> BillingSystem:
    if name == "tally":
        from tally.lab.serve_billing import ServeBilling  # the subject: real `tally serve`s

        return ServeBilling(rig)
    if name == "legacy":
        return LegacyBillingSystem(rig)
    raise ValueError(f"unknown billing {name!r}: use tally or legacy")


__all__ = ["CURRENCY", "AccountSpec", "BillingSystem", "SystemAccount", "make_billing"]
