"""The balance store on a real Redis Cluster: the ``BalanceStore`` port over redis-py's
``RedisCluster``, every script call inside one hash tag (one slot), never a cross-slot script.

A transfer's id record lives in the shard of its TRANSFER ID (ids are unique deployment-wide),
its balance in the shard of its ACCOUNT; on a cluster the two usually sit in different slots.
Such a transfer goes in three idempotent steps (``keys.py`` states the plan):

1. ``reserve.lua`` in the id's shard: a final record answers (replay or conflict, as the single
   path would), a pending reservation with other parameters is a conflict, the same ones go on;
   no record: a pending reservation is written (current generation, the same window rules).
2. ``transfer.lua`` (unchanged) in the account's shard, told that the account's shard is also
   the record's: it records the id there too, so re-running step 2 is an exact replay, and it
   alone writes the journal line (the ledger sees each transfer once).
3. ``finalize.lua`` in the id's shard: the pending reservation becomes the final record.

A crash between steps leaves a pending reservation; any retry of the same id completes it
(step 2 replays, step 3 finalizes). A transfer whose id and account share a shard is one call
(step 2 only). Pending records use the transfer record format with code 99, so a same-shard
call of the same id on another account (transfer.lua) answers a conflict, never a guess.

Calls are grouped by the primary that owns their slot and each primary's calls are pipelined on
one connection, the primaries concurrently (one worker per primary, bounded), then ``WAIT`` on
that connection when replicas are asked for: the durability of the single store, per shard.
(redis-py's ``RedisCluster.wait()`` sends WAIT to every primary on other connections and sums
the answers: no use here.) A step-2 call its primary's replicas did not acknowledge is
``StoreOutcomeUnknown`` for its transfers only, and step 3 is not run for them: a final record
in the id's shard would outlive a failover that discards step 2, and a retry would replay an
outcome the new primary never applied; the pending reservation lets the retry complete it.
MOVED/ASK/TRYAGAIN (the node did not run the call) are followed for a bounded number of rounds,
refreshing the slot map; CLUSTERDOWN is ``StoreUnavailable``; a connection lost after sending
is ``StoreOutcomeUnknown`` for the calls whose replies were not read (never guessed).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from zlib import crc32

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    TryAgainError,
)

from tally.domain.limits import IDEMPOTENCY_WINDOW_MS_MAX, SCRIPT_BATCH_MAX, occurred_bounds_ms
from tally.domain.results import Result
from tally.domain.transfers import TransferResult
from tally.errors import (
    ConfigError,
    InvariantViolation,
    StoreError,
    StoreLost,
    StoreOutcomeUnknown,
    StoreUnavailable,
)
from tally.store import scripts
from tally.store.errors import is_noscript, translate
from tally.store.keys import KeyLayout
from tally.store.redis_store import Applied, RawTransfer
from tally.store.shard_scripts import ScriptCall, ShardScripts
from tally.store.transfer_codec import (
    Settled,
    TransferCall,
    TransferCodec,
    check_replicated,
    unreplicated,
)

__all__ = ["ClusterStore", "replicas_by_primary", "replicated_primaries"]

log = logging.getLogger(__name__)

CLUSTER_SCRIPTS = (*scripts.ALL, "reserve", "finalize")
REDIRECT_ROUNDS = 3  # MOVED/ASK/TRYAGAIN rounds per batch, each after a slot-map refresh
WORKERS_MAX = 32  # threads sending to primaries concurrently
PENDING_CODE = 99  # the code of a pending reservation (reserve.lua)
_RESULTS = {int(r): r for r in Result}
_NO_RECORD = {11, 30, 31}  # transfer.lua writes no record for these: a reservation is dropped
_CONFLICTS = {2, 3, 4, 5}
_TRANSFER_F = 7  # transfer.lua: fields per transfer; the tx-shard index is the 6th


class _AccountShardCodec(TransferCodec):
    """``transfer.lua``'s call with the ACCOUNT's shard as the only tx shard: on a cluster the
    id's record is written beside the balance (same slot); the id's own shard is guarded by
    ``reserve.lua`` before and ``finalize.lua`` after."""

    def _call(
        self, shard: int, chunk: list[int], transfers: Sequence[RawTransfer], now_ms: int
    ) -> TransferCall:
        call = super()._call(shard, chunk, transfers, now_ms)
        t = int(call.args[3])
        m = int(call.args[4])
        accounts = call.keys[2 + 3 * t :]
        keys = [call.keys[0], call.keys[1], *self._tx_keys[shard], *accounts]
        args = list(call.args)
        args[3] = 1
        base = 8 + m
        for k in range(len(chunk)):
            args[base + k * _TRANSFER_F + 5] = 1
        return TransferCall(shard, chunk, keys, args)


@dataclass(slots=True)
class _Call:
    script: str
    keys: list[str]
    args: list[str | int]

    def command(self) -> tuple[str | int, ...]:
        sha = scripts.script(self.script).sha
        return ("EVALSHA", sha, len(self.keys), *self.keys, *self.args)


Outcome = list[Any] | StoreError


@dataclass(slots=True)
class _Round:
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    redirected: dict[int, tuple[str, int] | None] = field(default_factory=dict)  # ASK target
    acked: int | None = None


class ClusterStore(ShardScripts):
    def __init__(
        self,
        client: RedisCluster,
        layout: KeyLayout,
        epoch_id: str,
        *,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 50,
        idempotency_window_ms: int = 0,
        workers: int = 8,
    ) -> None:
        if not 0 <= idempotency_window_ms <= IDEMPOTENCY_WINDOW_MS_MAX:
            raise ConfigError(
                f"idempotency window must be 0 (forever) or up to {IDEMPOTENCY_WINDOW_MS_MAX} "
                f"ms, got {idempotency_window_ms}"
            )
        if not 1 <= workers <= WORKERS_MAX:
            raise ConfigError(f"workers must be 1..{WORKERS_MAX}, got {workers}")
        #: redis-py's cluster client (typed; ``client`` is the same, for code shared with the
        #: single store)
        self.cluster = client
        self.layout = layout
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.codec = _AccountShardCodec(layout, epoch_id, idempotency_window_ms)
        self.epoch_id = epoch_id
        self._epoch_value = layout.epoch_value(epoch_id)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cluster-store")
        self._stale = threading.Event()  # the slot map needs a refresh before the next call
        #: finalize calls that failed (the transfers stand; their reservations stay pending
        #: until a retry of the same id completes them)
        self.finalize_failures = 0

    @property
    def client(self) -> Any:
        """The cluster client, untyped on purpose: the drain and reconcile have cluster paths of
        their own (``sync.cluster_drain``, ``sync.cluster_route``), and so has the rebuild
        (``sync.rebuild.rebuild_cluster``: whole, or one shard under its own epoch)."""
        return self.cluster

    def reconnect(self) -> bool:
        """Refresh the slot map (a failover moved a shard's primary)."""
        self._refresh()
        return True

    def reconnect_if_moved(self) -> bool:
        self._refresh()
        return True

    def close(self, *, client: bool = True) -> None:
        """Stop the workers; ``client``: close the cluster client too (False: it is shared)."""
        self._pool.shutdown(wait=True)
        if client:
            self.cluster.close()

    def load_scripts(self) -> None:
        for node in self._primaries():
            self._load_on(node)

    # -- the exchange with the primaries -------------------------------------------------------
    def _primaries(self) -> list[ClusterNode]:
        try:
            return list(_any(self.cluster).get_primaries())
        except (redis.RedisError, RedisClusterException) as exc:
            raise cluster_error(exc, sent=False) from exc

    def _load_on(self, node: ClusterNode) -> None:
        try:
            conn = self._connection(node)
            for name in CLUSTER_SCRIPTS:
                _execute(conn, "SCRIPT", "LOAD", scripts.script(name).source)
        except (redis.RedisError, RedisClusterException) as exc:
            raise cluster_error(exc, sent=False) from exc

    def _connection(self, node: ClusterNode) -> redis.Redis:
        conn: redis.Redis | None = node.redis_connection
        if conn is None:
            conn = _any(self.cluster).get_redis_connection(node)
        assert conn is not None
        return conn

    def _refresh(self) -> None:
        self._stale.clear()
        try:
            self.cluster.nodes_manager.initialize()
        except (redis.RedisError, RedisClusterException) as exc:
            self._stale.set()
            raise cluster_error(exc, sent=False) from exc

    def _node_for(self, call: _Call, ask: tuple[str, int] | None) -> ClusterNode | None:
        client = _any(self.cluster)
        node: ClusterNode | None
        if ask is not None:
            node = client.get_node(host=ask[0], port=ask[1])
        else:
            node = client.get_node_from_key(call.keys[0], replica=False)
        return node

    def _exchange(
        self, calls: Sequence[_Call], *, wait: bool
    ) -> tuple[list[Outcome], list[int | None]]:
        """Every call run on the primary of its slot; one outcome per call, in order: the
        script's array or the StoreError it ended with. Returns (outcomes, per call the replicas
        that acknowledged it: its own primary's ``WAIT``, None when not asked for or not run)."""
        if self._stale.is_set():
            self._refresh()
        outcomes: dict[int, Outcome] = {}
        acks: list[int | None] = [None] * len(calls)
        pending: dict[int, tuple[str, int] | None] = dict.fromkeys(range(len(calls)))
        for _ in range(REDIRECT_ROUNDS):
            if not pending:
                break
            groups: dict[str, tuple[ClusterNode, list[int], bool]] = {}
            for i, ask in pending.items():
                try:
                    node = self._node_for(calls[i], ask)
                except (redis.RedisError, RedisClusterException) as exc:
                    outcomes[i] = cluster_error(exc, sent=False)
                    continue
                if node is None:
                    outcomes[i] = StoreUnavailable(f"no primary serves {calls[i].keys[0]}")
                    continue
                key = f"{node.name}|{ask is not None}"
                groups.setdefault(key, (node, [], ask is not None))[1].append(i)
            futures = [
                self._pool.submit(self._on_node, node, [(i, calls[i]) for i in idx], asking, wait)
                for node, idx, asking in groups.values()
            ]
            pending = {}
            for future in futures:
                got = future.result()
                outcomes.update(got.outcomes)
                pending.update(got.redirected)
                for i in got.outcomes:
                    acks[i] = got.acked
            if pending:
                self._refresh()
        for i in pending:
            outcomes[i] = StoreUnavailable(
                f"{calls[i].keys[0]}: still redirected after {REDIRECT_ROUNDS} rounds"
            )
        return [outcomes[i] for i in range(len(calls))], acks

    def _on_node(
        self, node: ClusterNode, calls: list[tuple[int, _Call]], asking: bool, wait: bool
    ) -> _Round:
        """Pipeline ``calls`` on one connection to ``node``; NOSCRIPT: load, rerun once."""
        done = _Round()
        try:
            replies, acked = self._pipeline(node, [c for _, c in calls], asking, wait)
            again = [k for k, r in enumerate(replies) if is_noscript_reply(r)]
            if again:
                self._load_on(node)
                rerun, acked2 = self._pipeline(node, [calls[k][1] for k in again], asking, wait)
                for k, reply in zip(again, rerun, strict=True):
                    replies[k] = reply
                acked = acked2 if acked is None or acked2 is None else min(acked, acked2)
        except StoreError as exc:
            for i, _ in calls:
                done.outcomes[i] = exc
            return done
        done.acked = acked
        for (i, _), reply in zip(calls, replies, strict=True):
            if isinstance(reply, MovedError | TryAgainError):  # MovedError is an AskError
                done.redirected[i] = None
            elif isinstance(reply, AskError):
                done.redirected[i] = (reply.host, reply.port)
            elif isinstance(reply, redis.ReadOnlyError):  # a demoted primary, stale map
                done.redirected[i] = None
            elif isinstance(reply, ClusterDownError):
                done.outcomes[i] = StoreUnavailable(f"the cluster is down: {reply}")
            elif isinstance(reply, StoreError):
                done.outcomes[i] = reply
            elif isinstance(reply, redis.RedisError):
                done.outcomes[i] = translate(reply, sent=True)
            elif isinstance(reply, list):
                done.outcomes[i] = reply
            else:  # every tally script answers an array
                raise InvariantViolation(f"unexpected script reply {reply!r:.80}")
        return done

    def _pipeline(
        self, node: ClusterNode, calls: list[_Call], asking: bool, wait: bool
    ) -> tuple[list[object], int | None]:
        """Send every call, then read every reply; a reply that is a Redis error is returned.
        A connection lost midway: the replies read stand, the others are unknown."""
        try:
            pool = self._connection(node).connection_pool
            conn = pool.get_connection()
        except (redis.RedisError, RedisClusterException) as exc:
            self._stale.set()
            raise cluster_error(exc, sent=False) from exc
        replies: list[object] = []
        acked: int | None = None
        sent = False
        try:
            for call in calls:
                if asking:
                    conn.send_command("ASKING")  # type: ignore[no-untyped-call]
                conn.send_command(*call.command())  # type: ignore[no-untyped-call]
                sent = True
            for _ in calls:
                if asking:
                    conn.read_response()
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
            if wait and self.wait_replicas and calls:
                conn.send_command("WAIT", self.wait_replicas, self.wait_timeout_ms)  # type: ignore[no-untyped-call]
                acked = int(conn.read_response())
        except redis.RedisError as exc:
            conn.disconnect()  # type: ignore[no-untyped-call]
            self._stale.set()
            error = translate(exc, sent=sent)
            replies += [error] * (len(calls) - len(replies))
            if acked is None and wait and self.wait_replicas:
                # WAIT never answered: the replies read stand, none of them acknowledged (the
                # ones not read are unknown already)
                acked = 0
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise
        finally:
            pool.release(conn)
        return replies, acked

    def _run_one(self, call: _Call) -> list[Any]:
        (outcome,), _ = self._exchange([call], wait=False)
        if isinstance(outcome, StoreError):
            raise outcome
        return outcome

    # -- transfers -----------------------------------------------------------------------------
    def apply(self, transfers: Sequence[RawTransfer]) -> Applied:
        """One result per transfer, in order; or the first error with ``partial``."""
        results: list[TransferResult | None] = [None] * len(transfers)
        errors: list[StoreError | None] = [None] * len(transfers)
        acked: int | None = None
        for segment in _segments(transfers):
            got = self._apply_segment(transfers, segment, results, errors)
            if got is not None:
                acked = got if acked is None else min(acked, got)
        settled = Settled(results, errors)
        outcome = settled.raise_or_results()
        check_replicated(acked, self.wait_replicas, self.wait_timeout_ms)
        return Applied(outcome, acked)

    def _apply_segment(
        self,
        transfers: Sequence[RawTransfer],
        segment: list[int],
        results: list[TransferResult | None],
        errors: list[StoreError | None],
    ) -> int | None:
        shards = self.layout.shards
        cross = [
            i
            for i in segment
            if crc32(transfers[i][0].encode()) % shards != crc32(transfers[i][2].encode()) % shards
        ]
        acked: int | None = None
        go = set(segment) - set(cross)
        if cross:
            reserved, acked = self._reserve(transfers, cross, results, errors)
            go |= reserved
        order = [i for i in segment if i in go]
        if not order:
            return acked
        sub = [transfers[i] for i in order]
        calls = list(self.codec.plan(sub))
        outcomes, acks = self._exchange(
            [_Call("transfer", c.keys, c.args) for c in calls], wait=True
        )
        acked = _fewest([acked, *acks])
        sub_results: list[TransferResult | None] = [None] * len(sub)
        for call, outcome, call_acked in zip(calls, outcomes, acks, strict=True):
            if isinstance(outcome, StoreError):
                failure: StoreError | None = outcome
            else:
                failure = self.codec._collect(call, outcome, sub, sub_results)
                if failure is None:
                    # Applied on its primary but not on enough of that shard's replicas: its
                    # outcome is unknown (no result), and step 3 must not run: a final record
                    # in the id's shard would outlive a failover that discards this step, and
                    # a retry would replay an outcome the new primary never applied.
                    failure = unreplicated(call_acked, self.wait_replicas, self.wait_timeout_ms)
                    if failure is not None:
                        for k in call.indexes:
                            sub_results[k] = None
            for k in call.indexes:
                results[order[k]] = sub_results[k]
                if failure is not None:
                    errors[order[k]] = failure
        crossing = set(cross)
        finals = [i for i in order if i in crossing and errors[i] is None]
        if finals:
            self._finalize(transfers, finals, results)
        return acked

    def _id_shard_keys(self, shard: int) -> list[str]:
        layout = self.layout
        return [
            layout.epoch(shard),
            layout.tx_generations_key(shard),
            layout.tx_generation(shard, 0),
            layout.tx_generation(shard, 1),
        ]

    def _by_id_shard(self, transfers: Sequence[RawTransfer], indexes: list[int]) -> list[list[int]]:
        by: dict[int, list[int]] = {}
        for i in indexes:
            by.setdefault(crc32(transfers[i][0].encode()) % self.layout.shards, []).append(i)
        return [
            group[s : s + SCRIPT_BATCH_MAX]
            for group in by.values()
            for s in range(0, len(group), SCRIPT_BATCH_MAX)
        ]

    def _reserve(
        self,
        transfers: Sequence[RawTransfer],
        cross: list[int],
        results: list[TransferResult | None],
        errors: list[StoreError | None],
    ) -> tuple[set[int], int | None]:
        """Step 1; returns the transfers that go on to step 2 (and the replicas acked)."""
        window = self.idempotency_window_ms
        groups = self._by_id_shard(transfers, cross)
        calls = []
        for group in groups:
            shard = crc32(transfers[group[0]][0].encode()) % self.layout.shards
            args: list[str | int] = [self._ev(shard), window, *occurred_bounds_ms(window)]
            for i in group:
                t = transfers[i]
                occurred = t[5] if len(t) == 6 else None
                args += (t[0], t[1], t[2], t[3], t[4], "" if occurred is None else occurred)
            calls.append(_Call("reserve", self._id_shard_keys(shard), args))
        outcomes, acks = self._exchange(calls, wait=True)
        acked = _fewest(acks)
        go: set[int] = set()
        for group, call, outcome in zip(groups, calls, outcomes, strict=True):
            if isinstance(outcome, StoreError):
                # Step 2 did not run in this call: nothing was applied by it (retry is safe).
                error = outcome
                if isinstance(error, StoreOutcomeUnknown):
                    error = StoreUnavailable(f"reserving transfer ids: {error}")
                for i in group:
                    errors[i] = error
                continue
            if outcome[0] == b"L":
                shard = crc32(transfers[group[0]][0].encode()) % self.layout.shards
                lost = StoreLost(
                    f"{call.keys[0]}: dataset epoch missing or not {self.shard_epoch(shard)}"
                )
                for i in group:
                    results[i] = TransferResult(transfers[i][0], Result.store_lost, None)
                    errors[i] = lost
                continue
            for n, i in enumerate(group):
                code, balance, decided = outcome[1 + 3 * n : 4 + 3 * n]
                if decided == 1:
                    replayed = int(code) not in (30, 31)
                    results[i] = TransferResult(
                        transfers[i][0], _RESULTS[int(code)], balance, replayed
                    )
                else:
                    go.add(i)
        return go, acked

    def _finalize(
        self,
        transfers: Sequence[RawTransfer],
        finals: list[int],
        results: list[TransferResult | None],
    ) -> None:
        """Step 3. A failure here changes no outcome: the transfer was decided in step 2 and
        its reservation stays pending until a retry of the same id completes it."""
        calls = []
        for group in self._by_id_shard(transfers, finals):
            shard = crc32(transfers[group[0]][0].encode()) % self.layout.shards
            args: list[str | int] = [self._ev(shard)]
            for i in group:
                result = results[i]
                if result is None:
                    raise InvariantViolation("finalizing a transfer without a result")
                code = int(result.result)
                if code in _CONFLICTS:
                    continue  # not this request's record to write: the reservation stays
                tid, kind, aid, amount, currency = transfers[i][:5]
                record = (
                    ""
                    if code in _NO_RECORD
                    else f"{kind}|{aid}|{amount}|{currency}|{code}|"
                    + ("" if result.balance_minor is None else str(result.balance_minor))
                )
                args += (tid, record)
            if len(args) > 1:
                calls.append(_Call("finalize", self._id_shard_keys(shard), args))
        if not calls:
            return
        outcomes, _ = self._exchange(calls, wait=False)
        for call, outcome in zip(calls, outcomes, strict=True):
            if isinstance(outcome, StoreError) or outcome[0] != b"K":
                self.finalize_failures += 1
                log.warning("finalize in %s did not complete: %s", call.keys[0], outcome)

    # -- how the shared calls (store.shard_scripts) reach the slot's primary -------------------
    def _scripts(self, calls: Sequence[ScriptCall], *, durable: bool = False) -> list[list[Any]]:
        outcomes, acks = self._exchange([_Call(*call) for call in calls], wait=durable)
        for outcome in outcomes:
            if isinstance(outcome, StoreError):
                raise outcome
        if durable:
            check_replicated(_fewest(acks), self.wait_replicas, self.wait_timeout_ms)
        return outcomes  # type: ignore[return-value]  # no StoreError left

    def _first_members(self, key: str, limit: int) -> list[str]:
        try:
            raw: list[bytes] = self.cluster.zrange(key, 0, limit - 1)  # type: ignore[assignment]
        except (redis.RedisError, RedisClusterException) as exc:
            raise cluster_error(exc, sent=False) from exc
        return [m.decode() for m in raw]


def cluster_error(exc: Exception, *, sent: bool) -> StoreError:
    """redis-py's cluster errors in tally's tree: CLUSTERDOWN, an uncovered slot or no
    reachable node (``RedisClusterException``, not a ``RedisError``) are ``StoreUnavailable``."""
    if isinstance(exc, ClusterDownError | RedisClusterException):
        return StoreUnavailable(f"the cluster cannot serve: {exc}")
    if isinstance(exc, redis.RedisError):
        return translate(exc, sent=sent)
    raise InvariantViolation(f"not a Redis error: {exc!r}") from exc


def replicated_primaries(client: RedisCluster) -> int:
    """How many primaries have at least one replica in the cluster's node table
    (``replicas_by_primary``)."""
    return sum(1 for count in replicas_by_primary(client).values() if count > 0)


def replicas_by_primary(client: RedisCluster) -> dict[str, int]:
    """Each primary's address (``host:port``, redis-py's node name) and how many replicas the
    node table gives it (``CLUSTER NODES`` from one node). Unlike ``CLUSTER SLOTS`` (7.x leaves
    failed replicas out) it lists a replica that is down right now, so a replica restarting
    while tally opens still counts."""
    try:
        table: dict[str, dict[str, Any]] = _any(client).cluster_nodes()
    except (redis.RedisError, RedisClusterException) as exc:
        raise cluster_error(exc, sent=False) from exc
    ids = {str(node.get("node_id")): address for address, node in table.items()
           if "master" in str(node.get("flags", "")).split(",")}  # fmt: skip
    out = dict.fromkeys(ids.values(), 0)
    for node in table.values():
        if "slave" in str(node.get("flags", "")).split(",") and node.get("master_id") in ids:
            out[ids[str(node["master_id"])]] += 1
    return out


def _fewest(acks: Iterable[int | None]) -> int | None:
    """The fewest replicas any primary acknowledged with (None: no WAIT was asked for)."""
    return min((a for a in acks if a is not None), default=None)


def _segments(transfers: Sequence[RawTransfer]) -> list[list[int]]:
    """The batch cut before each repeated id: segments run in order, as the caller sent them."""
    segments: list[list[int]] = [[]]
    seen: set[str] = set()
    for i, t in enumerate(transfers):
        if t[0] in seen:
            segments.append([])
            seen = set()
        seen.add(t[0])
        segments[-1].append(i)
    return [s for s in segments if s]


def is_noscript_reply(reply: object) -> bool:
    return isinstance(reply, BaseException) and is_noscript(reply)


def _any(client: object) -> Any:
    """redis-py's cluster API is untyped; keep the escape hatch in one place."""
    return client


def stamp_shard_epochs(
    client: RedisCluster, layout: KeyLayout, epoch_id: str, shards: Iterable[int] | None = None
) -> None:
    """Stamp ``shards`` (all by default) with the epoch, one SET each: on a cluster every shard's
    epoch is its own (a shard restarted empty refuses alone, and is rebuilt alone)."""
    value = layout.epoch_value(epoch_id)
    try:
        for shard in range(layout.shards) if shards is None else shards:
            client.set(layout.epoch(shard), value)
    except (redis.RedisError, RedisClusterException) as exc:
        raise cluster_error(exc, sent=True) from exc


def _execute(client: Any, *args: object) -> Any:
    return client.execute_command(*args)
