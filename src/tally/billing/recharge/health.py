"""The gate in front of every card charge (DESIGN invariant 8, INCIDENT F6, F8).

A recharge may call the gateway only while all hold:

- the billing freeze switch (SQL) is off;
- the store is healthy: the node is a writable primary (``INFO replication`` role ``master``),
  every shard's epoch key is the ledger's current epoch, replica lag and the journal backlog
  (what the drainer has not yet moved to SQL) are under their bounds;
- the gateway circuit is closed (or half-open and this is its one trial call).

Otherwise the recharge waits, durable, with the reason in ``recharges.wait_reason``, a counter
in ``GateMetrics`` and a log line. Waiting never suspends anyone and never charges blind.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from tally.errors import ConfigError
from tally.ledger.sql_ledger import SqlLedger
from tally.store.epoch import read_epochs
from tally.store.errors import translate
from tally.store.keys import KeyLayout

log = logging.getLogger(__name__)

#: Replicas ACK once a second, so a current replica shows lag 0-1. Recharge only while one does:
#: a primary whose replicas all fell silent may be cut off and about to be replaced (lab,
#: primary-dc-partition: with 10 s, cards were charged on the cut-off primary for shortfalls that
#: the promoted replica never had).
LAG_S_MAX_DEFAULT = 2
JOURNAL_BACKLOG_MAX_DEFAULT = 50_000


@dataclass(frozen=True, slots=True)
class HealthReport:
    reasons: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        return not self.reasons


class HealthProbe(Protocol):
    def check(self) -> HealthReport: ...


@dataclass
class StaticHealth:
    """A probe whose answer a test sets (the in-memory stack has no ``INFO``)."""

    reasons: tuple[str, ...] = ()

    def check(self) -> HealthReport:
        return HealthReport(self.reasons)


@dataclass(frozen=True, slots=True)
class HealthBounds:
    replica_lag_s_max: int = LAG_S_MAX_DEFAULT
    journal_backlog_max: int = JOURNAL_BACKLOG_MAX_DEFAULT

    def __post_init__(self) -> None:
        if not 0 <= self.replica_lag_s_max <= 3600:
            raise ConfigError("replica_lag_s_max must be 0..3600 s")
        if not 1 <= self.journal_backlog_max <= 10_000_000:
            raise ConfigError("journal_backlog_max must be 1..10^7")


class RedisHealth:
    """The real probe: a few cheap reads on the primary, and the ledger's current epoch."""

    def __init__(
        self,
        client: redis.Redis,
        layout: KeyLayout,
        ledger: SqlLedger,
        bounds: HealthBounds | None = None,
    ) -> None:
        self.client, self.layout, self.ledger = client, layout, ledger
        self.bounds = bounds or HealthBounds()

    def check(self) -> HealthReport:
        try:
            return HealthReport(tuple(self._reasons()))
        except redis.RedisError as exc:
            return HealthReport((f"store_unreachable: {translate(exc, sent=False)}",))

    def _reasons(self) -> list[str]:
        info: dict[str, Any] = self.client.info("replication")
        if info.get("role") != "master":
            return [f"store_not_primary: role {info.get('role')}"]
        reasons: list[str] = []
        epoch = self.ledger.current_epoch()
        want = None if epoch is None else self.layout.epoch_value(epoch.epoch_id)
        if want is None or any(v != want for v in read_epochs(self.client, self.layout)):
            reasons.append("store_epoch_invalid: dataset empty, foreign or being rebuilt")
        lags = [
            int(v.get("lag", 0))
            for k, v in info.items()
            if k.startswith("slave") and isinstance(v, dict)
        ]
        # The best replica counts (what Sentinel would promote, what the drainer's fence needs):
        # one replica in a long full sync must not stop recharges while another is current.
        if lags and min(lags) > self.bounds.replica_lag_s_max:
            reasons.append(
                f"replica_lag: every replica {min(lags)} s or more behind "
                f"> {self.bounds.replica_lag_s_max} s"
            )
        pipe = self.client.pipeline(transaction=False)
        for key in self.layout.journals():
            pipe.xlen(key)
        backlog = sum(int(n) for n in pipe.execute())
        if backlog > self.bounds.journal_backlog_max:
            reasons.append(
                f"drain_lag: {backlog} journal entries > {self.bounds.journal_backlog_max}"
            )
        return reasons


class FollowingHealth:
    """A probe on whatever node the store writes to NOW: ``probe_for_now`` builds the probe for
    the store's current client on every check. The store replaces its client when Sentinel
    fails over; a probe holding the client it was built with keeps asking the old node
    (demoted, or gone) and the gate says ``store_not_primary`` for ever."""

    def __init__(self, probe_for_now: Callable[[], HealthProbe]) -> None:
        self.probe_for_now = probe_for_now

    def check(self) -> HealthReport:
        return self.probe_for_now().check()


@dataclass
class Circuit:
    """Consecutive gateway failures (unknown outcomes, unavailable lookups) open the circuit for
    ``cooldown_s``; then one trial call is let through (half-open): success closes it, failure
    opens it again. The clock is injected so tests never sleep."""

    failures_max: int = 5
    cooldown_s: float = 30.0
    clock_s: Callable[[], float] = time.monotonic
    failures: int = 0
    opened_at_s: float | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.failures_max <= 1000 or not 0 <= self.cooldown_s <= 3600:
            raise ConfigError("circuit: failures_max 1..1000, cooldown_s 0..3600")

    def blocked(self) -> str | None:
        if self.opened_at_s is None:
            return None
        if self.clock_s() - self.opened_at_s >= self.cooldown_s:
            return None  # half-open: this call is the trial
        return f"circuit_open: {self.failures} gateway failures in a row"

    def success(self) -> None:
        self.failures, self.opened_at_s = 0, None

    def failure(self) -> None:
        self.failures += 1
        if self.failures >= self.failures_max:
            self.opened_at_s = self.clock_s()


@dataclass
class GateMetrics:
    waits: Counter[str] = field(default_factory=Counter)
    charges_sent: int = 0
    lookups: int = 0
    credits: int = 0
    suspensions: int = 0
    reinstatements: int = 0
    refunds: int = 0  # charges given back because the account refused the credit

    def waited(self, recharge_id: str, reason: str) -> None:
        self.waits[reason.split(":", 1)[0]] += 1
        log.warning("recharge %s waits: %s", recharge_id, reason)


@dataclass
class Gate:
    """Freeze switch, store health and gateway circuit, in that order."""

    ledger: SqlLedger
    health: HealthProbe
    circuit: Circuit = field(default_factory=Circuit)

    def why_not(self) -> str | None:
        freeze = self.ledger.recharges.freeze_state()
        if freeze.frozen:
            return f"frozen: {freeze.reason}"
        report = self.health.check()
        if not report.healthy:
            return "; ".join(report.reasons)
        return self.circuit.blocked()

    def store_why_not(self) -> str | None:
        """Steps that touch only the store (credit, markers) need no freeze or circuit check."""
        report = self.health.check()
        return None if report.healthy else "; ".join(report.reasons)
