"""The gate in front of every card charge (DESIGN invariant 8, INCIDENT F6, F8).

A recharge may call the gateway only while all hold:

- the billing freeze switch (SQL) is off;
- the store is healthy: the node is a writable primary (``INFO replication`` role ``master``),
  every shard's epoch key is the ledger's current epoch, replica lag and the journal backlog
  (what the drainer has not yet moved to SQL) are under their bounds;
- the gateway circuit is closed (or half-open and this is its one trial call).

On a Redis Cluster the store part is judged PER SHARD (``ClusterHealth``): a recharge waits only
when the shard of ITS account is in trouble (unreachable, not a writable primary, epoch lost,
too few or lagging replicas, journal backlog); the other shards' recharges go on.

Otherwise the recharge waits, durable, with the reason in ``recharges.wait_reason``, a counter
in ``GateMetrics`` and a log line. Waiting never suspends anyone and never charges blind.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
from redis.exceptions import RedisClusterException

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
    def check(self, account_id: str | None = None) -> HealthReport:
        """The store's health for ``account_id`` (its shard, on a cluster), or for the whole
        store when None."""
        ...


@dataclass
class StaticHealth:
    """A probe whose answer a test sets (the in-memory stack has no ``INFO``)."""

    reasons: tuple[str, ...] = ()

    def check(self, account_id: str | None = None) -> HealthReport:
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

    def check(self, account_id: str | None = None) -> HealthReport:
        """One primary holds every shard: the account does not narrow anything."""
        try:
            return HealthReport(tuple(self._reasons()))
        except redis.RedisError as exc:
            return HealthReport((f"store_unreachable: {translate(exc, sent=False)}",))

    def _reasons(self) -> list[str]:
        info: dict[str, Any] = self.client.info("replication")
        if info.get("role") != "master":
            return [f"store_not_primary: role {info.get('role')}"]
        reasons: list[str] = []
        view = self.ledger.epoch_view()
        want = None if view is None else [self.layout.epoch_value(i) for i in view.shard_ids]
        if want is None or read_epochs(self.client, self.layout) != want:
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


SHARD_PROBE_CACHE_S = 0.25


@dataclass(frozen=True, slots=True)
class ShardState:
    """What one shard's primary says about that shard (``error``: it could not be asked)."""

    shard: int
    node: str = ""
    error: str = ""
    role: str | None = None
    epoch: str | None = None
    replicas: int = 0
    lags_s: tuple[int, ...] = ()
    journal_entries: int = 0
    oldest_journal_id: str | None = None
    now_ms: int = 0


def cluster_shard_states(cluster: Any, layout: KeyLayout) -> list[ShardState]:
    """Every shard of ``layout`` as the primary owning its slot sees it: one ``INFO
    replication`` and one pipeline per primary (never a cross-slot command: each GET/XLEN/XRANGE
    names one shard's keys and runs on that shard's primary). A primary that cannot be asked
    marks its shards unreachable and refreshes the slot map for the next probe (bounded: one
    refresh per probe), so a failover is followed."""
    states: dict[int, ShardState] = {}
    groups: dict[str, tuple[Any, list[int]]] = {}
    stale = False
    for shard in range(layout.shards):
        try:
            node = cluster.get_node_from_key(layout.epoch(shard), replica=False)
        except (redis.RedisError, RedisClusterException) as exc:
            states[shard] = ShardState(shard, error=f"no primary for its slot ({exc})")
            stale = True
            continue
        if node is None:
            states[shard] = ShardState(shard, error="no primary for its slot")
            stale = True
            continue
        groups.setdefault(node.name, (node, []))[1].append(shard)
    for name, (node, shards) in groups.items():
        try:
            conn = cluster.get_redis_connection(node)
            info: dict[str, Any] = conn.info("replication")
            pipe = conn.pipeline(transaction=False)
            pipe.time()
            for shard in shards:
                pipe.get(layout.epoch(shard))
                pipe.xlen(layout.journal(shard))
                pipe.xrange(layout.journal(shard), "-", "+", count=1)
            replies = pipe.execute()
        except (redis.RedisError, RedisClusterException, OSError) as exc:
            for shard in shards:
                states[shard] = ShardState(shard, name, error=f"{type(exc).__name__}: {exc}")
            stale = True
            continue
        role = info.get("role")
        stale = stale or role != "master"
        lags = tuple(
            int(v.get("lag", 0))
            for k, v in info.items()
            if k.startswith("slave") and k[5:].isdigit() and isinstance(v, dict)
        )
        seconds, micros = replies[0]
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        for i, shard in enumerate(shards):
            epoch, length, first = replies[1 + 3 * i : 4 + 3 * i]
            states[shard] = ShardState(
                shard,
                name,
                role=str(role),
                epoch=epoch.decode() if isinstance(epoch, bytes) else epoch,
                replicas=len(lags),
                lags_s=lags,
                journal_entries=int(length),
                oldest_journal_id=_text(first[0][0]) if first else None,
                now_ms=now_ms,
            )
    if stale:
        with contextlib.suppress(redis.RedisError, RedisClusterException, OSError):
            cluster.nodes_manager.initialize()
    return [states[s] for s in range(layout.shards)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class ClusterHealth:
    """The gate's store check on a Redis Cluster, per shard: ``check(account_id)`` judges only
    the shard holding that account, so one shard in trouble stops recharges for its accounts
    only. A shard is in trouble when its primary cannot be asked (``store_unreachable``), is not
    a writable primary (``store_not_primary``), lacks the ledger's current epoch
    (``store_epoch_invalid``: restarted empty, the 2013 defect on one shard), has fewer
    connected replicas than writes wait for (``replicas_missing``), only lagging ones
    (``replica_lag``), or a journal backlog over the bound (``drain_lag``). The shard states are
    reused for ``cache_s`` (the completer asks for every recharge it drives)."""

    def __init__(
        self,
        cluster: Any,
        layout: KeyLayout,
        ledger: SqlLedger,
        bounds: HealthBounds | None = None,
        *,
        replicas_needed: int = 0,
        cache_s: float = SHARD_PROBE_CACHE_S,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster, self.layout, self.ledger = cluster, layout, ledger
        self.bounds = bounds or HealthBounds()
        self.replicas_needed = replicas_needed
        self.cache_s, self.clock_s = cache_s, clock_s
        self._cached: tuple[float, list[ShardState]] | None = None

    def states(self) -> list[ShardState]:
        now = self.clock_s()
        if self._cached is None or now - self._cached[0] >= self.cache_s:
            self._cached = (now, cluster_shard_states(self.cluster, self.layout))
        return self._cached[1]

    def check(self, account_id: str | None = None) -> HealthReport:
        view = self.ledger.epoch_view()  # a shard rebuilt alone is at its own epoch
        states = self.states()
        if account_id is not None:
            states = [states[self.layout.shard_of(account_id)]]
        reasons: list[str] = []
        for state in states:
            want = None if view is None else self.layout.epoch_value(view.of(state.shard))
            reasons.extend(self.shard_reasons(state, want))
        return HealthReport(tuple(reasons))

    def shard_reasons(self, state: ShardState, want: str | None) -> list[str]:
        where = f"shard {state.shard}" + (f" on {state.node}" if state.node else "")
        if state.error:
            return [f"store_unreachable: {where}: {state.error}"]
        if state.role != "master":
            return [f"store_not_primary: {where}: role {state.role}"]
        reasons = []
        if want is None or state.epoch != want:
            what = "empty" if state.epoch is None else "foreign or being rebuilt"
            reasons.append(f"store_epoch_invalid: {where}: epoch key {what}")
        if state.replicas < self.replicas_needed:
            reasons.append(
                f"replicas_missing: {where}: {state.replicas} replica(s) connected, "
                f"writes wait for {self.replicas_needed}"
            )
        elif state.lags_s and min(state.lags_s) > self.bounds.replica_lag_s_max:
            reasons.append(
                f"replica_lag: {where}: every replica {min(state.lags_s)} s or more behind "
                f"> {self.bounds.replica_lag_s_max} s"
            )
        if state.journal_entries > self.bounds.journal_backlog_max:
            reasons.append(
                f"drain_lag: {where}: {state.journal_entries} journal entries "
                f"> {self.bounds.journal_backlog_max}"
            )
        return reasons


class FollowingHealth:
    """A probe on whatever node the store writes to NOW: ``probe_for_now`` builds the probe for
    the store's current client on every check. The store replaces its client when Sentinel
    fails over; a probe holding the client it was built with keeps asking the old node
    (demoted, or gone) and the gate says ``store_not_primary`` for ever."""

    def __init__(self, probe_for_now: Callable[[], HealthProbe]) -> None:
        self.probe_for_now = probe_for_now

    def check(self, account_id: str | None = None) -> HealthReport:
        return self.probe_for_now().check(account_id)


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

    def why_not(self, account_id: str | None = None) -> str | None:
        """Why a charge for ``account_id`` may not go out now (None: it may). On a cluster only
        that account's shard is asked; without an account, every shard."""
        freeze = self.ledger.recharges.freeze_state()
        if freeze.frozen:
            return f"frozen: {freeze.reason}"
        report = self.health.check(account_id)
        if not report.healthy:
            return "; ".join(report.reasons)
        return self.circuit.blocked()

    def store_why_not(self, account_id: str | None = None) -> str | None:
        """Steps that touch only the store (credit, markers) need no freeze or circuit check."""
        report = self.health.check(account_id)
        return None if report.healthy else "; ".join(report.reasons)
