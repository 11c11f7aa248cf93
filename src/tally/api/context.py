"""What the HTTP layer needs from the rest of tally, as small interfaces the composition root
(``tally.service``) fills in. The API holds no business rules: it validates the shape of input,
calls the engine, and translates results and errors to HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import APIRouter
from prometheus_client.registry import Collector

from tally.billing.engine import CreditOutcome, Engine
from tally.domain.accounts import SystemAccount
from tally.domain.transfers import TransferResult
from tally.ledger.sql_api_keys import ApiKeyStore
from tally.ledger.sql_ledger import SqlLedger


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str = ""
    values: dict[str, float | int | str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Readiness:
    """``reason`` is the first failing check's code (``store_lost``, ``store_unavailable``,
    ``store_read_only``, ``drain_lag``, ``replication_lag``, ``ledger_unavailable``,
    ``shutting_down``), None when ready."""

    ready: bool
    reason: str | None
    checks: dict[str, Check]

    def value(self, check: str, name: str) -> float | int | str | None:
        one = self.checks.get(check)
        return None if one is None else one.values.get(name)


class AdminOps(Protocol):
    """Operations that coordinate several parts (store, ledger, workers): the service layer's."""

    def reconcile(self) -> dict[str, Any]: ...

    def rebuild(self, *, force: bool, shard: int | None = None) -> dict[str, Any]: ...

    def drain(self) -> dict[str, Any]: ...


class Extension(Protocol):
    """A part of tally that adds routes and metrics to the API when it is installed (the
    recharge saga: account recharge rule and state, recharges, freeze, remediation)."""

    name: str

    def routers(self) -> Sequence[APIRouter]: ...

    def collectors(self) -> Sequence[Collector]: ...

    def account_fields(self, account_id: str) -> dict[str, Any]: ...


@dataclass
class ApiContext:
    engine: Engine
    ledger: SqlLedger
    keys: ApiKeyStore
    readiness: Callable[[], Readiness]
    admin: AdminOps
    extensions: list[Extension] = field(default_factory=list)
    #: Requests larger than this get 413 before any of the body is parsed.
    body_bytes_max: int = 1_048_576
    #: A single debit without a thread hop (``Engine.debit``'s semantics); None: the engine in a
    #: worker thread.
    async_debit: Callable[[str, str, int, str, int | None], Awaitable[TransferResult]] | None = None
    #: A credit whose store step joins the debits' coalescer (``Engine.credit``'s semantics,
    #: ledger first); None: ``Engine.credit`` in a worker thread.
    async_credit: Callable[[str, str, int, str, SystemAccount], Awaitable[CreditOutcome]] | None = (
        None
    )
    #: Seconds a verified API key is cached (a revocation takes at most this long).
    key_cache_s: float = 5.0
    #: Where webhook endpoints may point (``Settings.webhook_hosts``); None: any host.
    webhook_hosts: frozenset[str] | None = None
    #: More Prometheus collectors for /metrics (e.g. Sentinel failovers).
    collectors: list[Collector] = field(default_factory=list)
