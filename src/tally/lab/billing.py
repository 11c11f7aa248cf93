"""The system under test, behind one small interface: ``tally`` (the engine with the recharge
saga) or ``legacy`` (the 2013 logic in ``tally.lab.legacy``, the control).

Both run on the same deployment: the same Redis store and Lua scripts, the same ledger and
drainer, the same gateway simulator. Only the billing logic differs, so whatever the checker finds
is the logic's doing. Each call returns a history completion: ``(type, value)`` with type ``ok``
(the service answered; ``value["result"]`` says what it decided), ``fail`` (it definitely did
not happen) or ``info`` (unknown).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from tally.billing.recharge import Circuit, Recharging
from tally.billing.recharge.remediation import Remediator
from tally.bootstrap import Deployment, open_deployment, recharging
from tally.config import Settings
from tally.domain.accounts import Account, SystemAccount
from tally.domain.recharge import RechargeRule
from tally.errors import InfrastructureError, StoreOutcomeUnknown, TallyError
from tally.gateway.client import HttpGateway
from tally.gateway.records import open_records
from tally.lab.legacy import LegacyBilling, LegacyPlan
from tally.lab.rig import NAMESPACE, SHARDS, Rig
from tally.ledger.sql_ledger import SqlLedger
from tally.store.keys import KeyLayout
from tally.sync.drainer import Drainer
from tally.sync.rebuild import init_store, inspect_dataset, rebuild

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
    def debit(self, tid: str, account: str, amount_minor: int) -> Completion: ...
    def top_up(self, tid: str, account: str, amount_minor: int) -> Completion: ...
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
    """What both billings share: the deployment, its drainer, the gateway client."""

    name = "base"

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


class TallyBilling(_Base):
    name = "tally"

    def __init__(self, rig: Rig) -> None:
        super().__init__(rig)
        self.recharging: Recharging = recharging(
            self.dep, self.gateway, circuit=Circuit(failures_max=5, cooldown_s=3.0)
        )
        self.loops += [
            _Loop("completer", lambda: self.recharging.completer.run_once(100), self._stop),
            _Loop("pending-credits", self._pending_credits, self._stop),
        ]
        self.operator_log: list[dict[str, Any]] = []

    def _pending_credits(self) -> int:
        self._stop.wait(0.5)
        return self.dep.engine.apply_pending_credits(older_than_ms=500)

    def open_accounts(self, accounts: list[AccountSpec]) -> None:
        engine, service = self.dep.engine, self.recharging.service
        for a in accounts:
            engine.create_account(Account(a.id, CURRENCY))
            if a.initial_minor:
                engine.credit(f"seed-{a.id}", a.id, a.initial_minor, CURRENCY)
            rule = RechargeRule(a.id, a.card, a.threshold_minor, 10_000_000, 2,
                                target_minor=a.target_minor)  # fmt: skip
            service.set_rule(rule)

    def debit(self, tid: str, account: str, amount_minor: int) -> Completion:
        try:
            result = self.dep.engine.debit(tid, account, amount_minor)
        except Exception as exc:
            return _classify(exc)
        value: dict[str, Any] = {
            "result": result.result.name,
            "balance_minor": result.balance_minor,
        }
        if result.recharge_id is not None:
            value["recharge_id"] = result.recharge_id
            try:  # the saga's trouble is not the debit's: the completer picks it up
                self.recharging.service.notice(account, amount_minor, result)
            except Exception as exc:
                value["recharge_error"] = type(exc).__name__
        return "ok", value

    def top_up(self, tid: str, account: str, amount_minor: int) -> Completion:
        try:
            out = self.recharging.service.top_up(tid, account, amount_minor, CURRENCY)
        except Exception as exc:
            return _classify(exc)
        if out.pending:  # durable in the ledger, applied when the store is back
            return "ok", {"result": "pending"}
        assert out.result is not None
        return "ok", {"result": out.result.name, "balance_minor": out.balance_minor}

    def operator(self, action: str) -> str:
        if action == "rebuild":
            return self._rebuild()
        if action == "remediate":
            return self._remediate()
        if action == "freeze":
            self.recharging.service.freeze("lab: mitigation in progress", actor="lab")
            return "billing frozen"
        if action == "unfreeze":
            self.recharging.service.unfreeze("lab: mitigation done", actor="lab")
            return "billing resumed"
        return f"{action}: nothing to do for tally"

    def _rebuild(self) -> str:
        self.rediscover()
        if not self.store_lost():
            return "store healthy: no rebuild needed"
        report = rebuild(self.dep.store.client, self.layout, self.dep.ledger, force=True)
        self.dep.engine.apply_pending_credits(older_than_ms=0)
        return (f"rebuilt epoch {report.epoch_id}: {report.accounts_loaded} accounts, "
                f"{report.transfers_loaded} transfers, {report.unsettled_intents} credits to apply")  # fmt: skip

    def _remediate(self) -> str:
        self.drain_all()
        records = open_records(self.rig.simulator.data_dir)
        try:
            report = Remediator(self.dep.engine, self.gateway, refund_uncredited=False).run(
                list(records.iter_all()), apply=True
            )
        finally:
            records.close()
        kinds: dict[str, int] = {}
        for action in report.actions:
            kinds[action.kind] = kinds.get(action.kind, 0) + 1
        return f"remediation: {kinds or 'nothing to fix'}"

    def settle(self) -> dict[str, Any]:
        """After the run: every recharge finished, every credit applied, the journal drained."""
        self.rediscover()
        rounds = 0
        for _ in range(SETTLE_ROUNDS_MAX):
            rounds += 1
            self.drain_all()
            with contextlib.suppress(InfrastructureError, redis.RedisError):
                self.dep.engine.apply_pending_credits(older_than_ms=0)
            with contextlib.suppress(InfrastructureError, redis.RedisError):
                self.recharging.completer.run_once(1000)
            unfinished = self.recharging.saga.book.unfinished(limit=1000)
            pending = self.dep.ledger.count_unsettled_credit_intents()
            if not unfinished and not pending:
                break
            self._stop.wait(0.2)
        self.drain_all()
        return {
            "rounds": rounds,
            "unfinished_recharges": len(self.recharging.saga.book.unfinished(limit=1000)),
            "unsettled_credits": self.dep.ledger.count_unsettled_credit_intents(),
            "gate_waits": dict(self.recharging.saga.metrics.waits),
        }


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

    def debit(self, tid: str, account: str, amount_minor: int) -> Completion:
        """Legacy answers nothing: it logs its failures and carries on, so its caller always
        sees success (that is the 2013 behaviour under test)."""
        assert self.legacy is not None
        try:
            self.legacy.usage(tid, account, amount_minor)
        except Exception as exc:
            return _classify(exc)
        return "ok", {"result": "ok"}

    def top_up(self, tid: str, account: str, amount_minor: int) -> Completion:
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
        return TallyBilling(rig)
    if name == "legacy":
        return LegacyBillingSystem(rig)
    raise ValueError(f"unknown billing {name!r}: use tally or legacy")


__all__ = ["CURRENCY", "AccountSpec", "BillingSystem", "SystemAccount", "make_billing"]
