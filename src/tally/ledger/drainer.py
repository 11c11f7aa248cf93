"""The drainer: every shard's journal stream into the SQL ledger, each line exactly once.

Per shard and batch: read (own pending entries first, so a restart after a crash re-reads what
it had not acknowledged), apply the lines in ONE SQL transaction (idempotent by transfer id),
then XACK, then trim only what is acknowledged. A crash anywhere re-delivers at most the last
batch, which the ledger absorbs as duplicates. The drainer never creates Redis keys: a missing
stream or group, or an epoch key that is not the ledger's current epoch, means the store is
lost (``StoreLost``) and only ``init``/``rebuild`` may recreate it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from tally.errors import ConfigError, InfrastructureError, LedgerNotInitialised, StoreLost
from tally.ledger.journal import parse_entry
from tally.ledger.models import DrainedLine, Epoch, RejectedLine, StreamId
from tally.ledger.redis_errors import text, translated
from tally.ledger.sql_ledger import SqlLedger
from tally.store.keys import KeyLayout

log = logging.getLogger(__name__)

GROUP = "drainer"
ENTRIES_PER_READ_MAX = 1000
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
    per_shard_entries: dict[int, int] = field(default_factory=dict)


def _entries(reply: Any) -> list[Entry]:
    """XREADGROUP / XAUTOCLAIM entries; a trimmed pending entry comes back without fields."""
    out: list[Entry] = []
    for raw_id, fields in reply or []:
        decoded = None if not fields else {text(k) or "": text(v) or "" for k, v in fields.items()}
        out.append((StreamId.parse(raw_id), decoded))
    return out


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
    name). ``fault``: a test hook called at "before_commit", "after_commit" and "after_ack"."""

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
        fault: Fault | None = None,
    ) -> None:
        if not 1 <= count <= ENTRIES_PER_READ_MAX:
            raise ConfigError(f"drainer count must be 1..{ENTRIES_PER_READ_MAX}, got {count}")
        self.client, self.layout, self.ledger = client, layout, ledger
        self.consumer, self.count, self.block_ms = consumer, count, block_ms
        self.claim_idle_ms, self.fault = claim_idle_ms, fault
        self.stats = DrainStats()
        self._next_shard = 0

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
        """Drain up to ``limit`` journal entries over all shards; returns entries processed."""
        epoch = self._epoch()
        done = 0
        for step in range(self.layout.shards):
            if done >= limit:
                break
            shard = (self._next_shard + step) % self.layout.shards
            done += self._drain_shard(shard, epoch, min(self.count, limit - done))
        self._next_shard = (self._next_shard + 1) % self.layout.shards
        return done

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

    def _drain_shard(self, shard: int, epoch: Epoch, count: int) -> int:
        self._check_epoch(shard, epoch)
        entries = self._read(shard, count)
        if not entries:
            with translated(f"shard {shard} journal length"):
                leftover = int(self.client.xlen(self.layout.journal(shard)))
            if leftover:  # acknowledged but not trimmed (a crash between XACK and XTRIM)
                self.trim(shard)
            return 0
        drained: list[DrainedLine] = []
        rejected: list[RejectedLine] = []
        for stream_id, fields in entries:
            if fields is not None:  # None: already trimmed, so already durable in SQL
                lines, bad = parse_entry(shard, stream_id, fields)
                drained += lines
                rejected += bad
        report = self.ledger.apply_journal(
            drained, rejected, before_commit=lambda: self._hook("before_commit")
        )
        self._hook("after_commit")
        self._ack_and_trim(shard, [sid for sid, _ in entries])
        self._count(shard, len(entries), report.inserted, report.duplicates)
        self.stats.conflicts += report.conflicts
        self.stats.foreign += report.foreign
        self.stats.intents_settled += report.intents_settled
        if report.foreign or report.conflicts:
            log.warning(
                "shard %d: %d foreign, %d conflicting journal lines recorded, not applied",
                shard,
                report.foreign,
                report.conflicts,
            )
        return len(entries)

    def _count(self, shard: int, entries: int, applied: int, duplicates: int) -> None:
        self.stats.entries += entries
        self.stats.lines_applied += applied
        self.stats.duplicates += duplicates
        per = self.stats.per_shard_entries
        per[shard] = per.get(shard, 0) + entries

    def _ack_and_trim(self, shard: int, ids: Sequence[StreamId]) -> None:
        key = self.layout.journal(shard)
        with translated(f"shard {shard} journal ack"):
            self.client.xack(key, GROUP, *[str(i) for i in ids])
        self._hook("after_ack")
        self.trim(shard)

    def trim(self, shard: int) -> int:
        """Delete entries below the oldest unacknowledged one (all consumers): those are in
        SQL. Group state is read in one MULTI so a concurrent delivery cannot slip under it."""
        key = self.layout.journal(shard)
        with translated(f"shard {shard} journal trim"):
            pipe = self.client.pipeline(transaction=True)
            pipe.xinfo_groups(key)
            pipe.xpending(key, GROUP)
            groups, pending = pipe.execute()
            group = next((g for g in groups if text(g["name"]) == GROUP), None)
            if group is None:
                raise StoreLost(f"shard {shard}: consumer group {GROUP!r} is missing")
            last = StreamId.parse(group["last-delivered-id"])
            if pending["pending"]:
                minid = StreamId.parse(pending["min"])
            else:
                minid = StreamId(last.ms, last.seq + 1)
            if minid <= StreamId(0, 0):
                return 0
            return int(self.client.xtrim(key, minid=str(minid), approximate=False))

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
