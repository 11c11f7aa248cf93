"""The readiness probe: may this process take traffic? One INFO, one pipeline and two SQL reads.

Checks, in the order the first failing one becomes the reason: shutting down; the ledger answers
and names a current epoch; the store answers (not loading) and is a writable primary; every
shard's epoch key is the ledger's current epoch (else ``store_lost``: empty or foreign); the
oldest undrained journal entry is younger than the bound; replicas lag less than the bound.

On a Redis Cluster the store checks are per shard (``cluster_shard_states``: one INFO and one
pipeline per primary, each command on its own shard's keys). The process is READY WHILE AT
LEAST ONE SHARD SERVES (its primary answers, is writable and holds the current epoch): a shard
down or restarted empty refuses its own accounts (store_unavailable / store_lost, by the epoch
guard), it must not take the whole service out of a load balancer. ``checks["shards"]`` says how
many serve and, per shard, ``shard_<k>``: ``serving`` or the reason it does not
(``store_unavailable``, ``store_read_only``, ``store_lost``); /metrics has
``tally_store_shards_serving`` and ``tally_store_shard_serving{shard,reason}``. When no shard serves,
the reason is the first one of shard 0's kind in ORDER. Drain and replication lag are judged
over the serving shards."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from tally.api.context import Check, Readiness
from tally.billing.recharge.health import ShardState, cluster_shard_states
from tally.bootstrap import Deployment
from tally.domain.limits import JOURNAL_ENTRIES_MAX
from tally.errors import LedgerError
from tally.ledger.models import StreamId


@dataclass(frozen=True)
class ReadinessBounds:
    drain_lag_s_max: float = 30.0
    journal_entries_max: int = JOURNAL_ENTRIES_MAX // 2
    replication_lag_s_max: float = 10.0
    #: A probe result is reused this long (load balancers and scrapers poll often).
    cache_s: float = 0.2


ORDER = ("service", "ledger", "store", "writable", "epoch", "drain", "replication")
REASONS = {
    "service": "shutting_down",
    "ledger": "ledger_unavailable",
    "store": "store_unavailable",
    "writable": "store_read_only",
    "epoch": "store_lost",
    "drain": "drain_lag",
    "replication": "replication_lag",
}


def _replication(info: dict[str, Any]) -> Check:
    master_offset = int(info.get("master_repl_offset", 0) or 0)
    lags_s, gaps = [], []
    for key, value in info.items():
        if key.startswith("slave") and key[5:].isdigit() and isinstance(value, dict):
            lags_s.append(int(value.get("lag", 0)))
            gaps.append(max(0, master_offset - int(value.get("offset", 0))))
    values: dict[str, Any] = {
        "replicas": len(lags_s),
        "lag_s": max(lags_s, default=0),
        "lag_bytes": max(gaps, default=0),
    }
    return Check(True, "", values)


def _shard_problem(state: ShardState, epoch_values: list[str] | None) -> str | None:
    """The readiness reason a shard does not serve for, None when it serves (``epoch_values``:
    what each shard's epoch key must hold, a shard rebuilt alone at its own epoch)."""
    if state.error:
        return REASONS["store"]
    if state.role != "master":
        return REASONS["writable"]
    if epoch_values is not None and state.epoch != epoch_values[state.shard]:
        return REASONS["epoch"]
    return None


class HealthProbe:
    def __init__(self, dep: Deployment, bounds: ReadinessBounds | None = None) -> None:
        self.dep = dep
        self.bounds = bounds or ReadinessBounds()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._cached: tuple[float, Readiness] | None = None

    def __call__(self) -> Readiness:
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.bounds.cache_s:
                return self._cached[1]
            state = self.probe()
            self._cached = (now, state)
            return state

    def probe(self) -> Readiness:
        checks: dict[str, Check] = {
            "service": Check(
                not self.stopping.is_set(), "stopping" if self.stopping.is_set() else ""
            )
        }
        epoch_value = self._ledger(checks)
        self._store(checks, epoch_value)
        for name in ORDER:
            check = checks.get(name)
            if check is not None and not check.ok:
                return Readiness(False, REASONS[name], checks)
        missing = [n for n in ORDER if n not in checks]
        return Readiness(not missing, REASONS[missing[0]] if missing else None, checks)

    def _ledger(self, checks: dict[str, Check]) -> list[str] | None:
        try:
            view = self.dep.ledger.epoch_view()
            unsettled = self.dep.ledger.count_unsettled_credit_intents()
        except LedgerError:
            checks["ledger"] = Check(False, "the ledger database does not answer")
            return None
        if view is None:
            checks["ledger"] = Check(False, "the ledger has no current epoch")
            return None
        checks["ledger"] = Check(
            True, "", {"epoch": view.epoch.epoch_id, "unsettled_credits": unsettled}
        )
        return [self.dep.layout.epoch_value(i) for i in view.shard_ids]

    def _store(self, checks: dict[str, Check], epoch_values: list[str] | None) -> None:
        if self.dep.is_cluster:
            self._cluster(checks, epoch_values)
            return
        layout = self.dep.layout
        client = self.dep.store.client
        try:
            info = client.info("replication")
            pipe = client.pipeline(transaction=False)
            pipe.time()
            pipe.mget([layout.epoch(s) for s in range(layout.shards)])
            for key in layout.journals():
                pipe.xlen(key)
                pipe.xrange(key, "-", "+", count=1)
            replies = pipe.execute()
        except redis.BusyLoadingError:
            checks["store"] = Check(False, "the store is loading its dataset")
            return
        except (redis.RedisError, OSError) as exc:
            checks["store"] = Check(False, f"the store does not answer ({type(exc).__name__})")
            return
        checks["store"] = Check(True)
        role = info.get("role")
        checks["writable"] = Check(role == "master", "" if role == "master" else f"role is {role}")
        epochs = [v.decode() if isinstance(v, bytes) else v for v in replies[1]]
        if epoch_values is not None:
            good = epochs == epoch_values
            detail = (
                "" if good else ("the dataset is empty" if not any(epochs) else "foreign epoch")
            )
            checks["epoch"] = Check(good, detail)
        checks["drain"] = self._drain(replies)
        repl = _replication(info)
        lag_ok = float(repl.values["lag_s"] or 0) <= self.bounds.replication_lag_s_max
        checks["replication"] = Check(lag_ok, "" if lag_ok else "replicas lag", repl.values)

    def _cluster(self, checks: dict[str, Check], epoch_values: list[str] | None) -> None:
        states = cluster_shard_states(self.dep.store.client, self.dep.layout)
        failing: dict[int, str] = {}
        for state in states:
            problem = _shard_problem(state, epoch_values)
            if problem is not None:
                failing[state.shard] = problem
        serving = [s for s in states if s.shard not in failing]
        values: dict[str, Any] = {"shards": len(states), "serving": len(serving)}
        values.update({f"shard_{s.shard}": failing.get(s.shard, "serving") for s in states})
        checks["shards"] = Check(
            bool(serving),
            "" if not failing else f"shard(s) {sorted(failing)} do not serve",
            values,
        )
        if not serving:  # the whole store is out: the usual reasons, in ORDER
            first = failing[0] if 0 in failing else next(iter(failing.values()))
            name = {v: k for k, v in REASONS.items()}[first]
            checks[name] = Check(False, f"no shard serves (shard 0: {first})")
            return
        for name in ("store", "writable", "epoch"):
            checks[name] = Check(True, "", {"shards_serving": len(serving)})
        entries = sum(s.journal_entries for s in serving)
        oldest = [
            (s.now_ms, StreamId.parse(s.oldest_journal_id).ms)
            for s in serving
            if s.oldest_journal_id is not None
        ]
        lag_s = max(((now - ms) / 1000 for now, ms in oldest), default=0.0)
        lag_s = max(0.0, lag_s)
        ok = lag_s <= self.bounds.drain_lag_s_max and entries <= self.bounds.journal_entries_max
        checks["drain"] = Check(
            ok, "" if ok else "the drainer is behind", {"lag_s": lag_s, "entries": entries}
        )
        lags = [max(s.lags_s, default=0) for s in serving]
        worst = max(lags, default=0)
        lag_ok = worst <= self.bounds.replication_lag_s_max
        checks["replication"] = Check(
            lag_ok,
            "" if lag_ok else "replicas lag",
            {"replicas": min(s.replicas for s in serving), "lag_s": worst},
        )

    def _drain(self, replies: list[Any]) -> Check:
        seconds, micros = replies[0]
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        entries, oldest_ms = 0, now_ms
        for length, first in zip(replies[2::2], replies[3::2], strict=True):
            entries += int(length)
            if first:
                oldest_ms = min(oldest_ms, StreamId.parse(first[0][0]).ms)
        lag_s = max(0.0, (now_ms - oldest_ms) / 1000)
        ok = lag_s <= self.bounds.drain_lag_s_max and entries <= self.bounds.journal_entries_max
        return Check(
            ok, "" if ok else "the drainer is behind", {"lag_s": lag_s, "entries": entries}
        )
