"""Rebuild on a Redis Cluster, shard by shard: one logical shard under a new epoch of its own
(``tally rebuild --shard K``), or every shard under a new deployment epoch (a whole rebuild).

Each shard is handled on the primary that owns its slot, with single-slot commands only (its
keys share one hash tag): the shard's own marker ``{tag}:rebuilding`` names the epoch being
written while its accounts, transfer-id records, holds, hold routes, recharge markers and
journal (with the ``drainer`` group) are loaded, and its epoch key is absent, so no script
accepts a write in that shard. The last step per shard sets its epoch key and deletes its marker
in one MULTI (WATCH on the marker: a rebuild that took it over wins). Then SQL marks the epoch
current. Other shards are not touched by a one-shard rebuild: their keys, epochs and traffic
go on.

What a one-shard rebuild of K restores: accounts whose shard is K (balance, held sum, status,
credit limit, recharge markers), the records of transfer ids whose shard is K (``tx_for(id)``,
whatever the account's shard: replays of those ids come to K first), holds whose account is in
K (record and expiry) and hold routes of hold ids in K. A transfer id of K whose journal line
sat undrained in ANOTHER shard when K was lost is not in the ledger yet: its replay reserves
the id again in K, the account's shard replays it exactly (it keeps its own copy of the record),
and the finalize step writes it back into K (``cluster_store``: the three steps).

A shard that holds the current epoch (healthy) is refused unless forced, and even then deleted
only once its journal holds nothing the ledger has not got (the fence: WATCH the journal and
the epoch key, check, then delete the epoch key in one MULTI). A rebuild that stops anywhere can
be run again: it recognises its marker, its loaded epoch key, and resumes the same epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis
from redis.cluster import RedisCluster

from tally.domain.invariant import invariant
from tally.errors import UsageError
from tally.ledger.models import EpochKind, EpochStatus, EpochView
from tally.ledger.sql_ledger import SqlLedger
from tally.store.errors import text, translated
from tally.store.keys import KeyLayout
from tally.sync.cluster_route import Route, route
from tally.sync.rebuild import (
    CHUNK_MAX,
    AccountFields,
    DatasetState,
    RebuildRefused,
    RebuildReport,
    _check_primary,
    _create_streams,
    _load_accounts,
    _load_holds,
    _load_recharge_markers,
    _load_transfers,
    _undrained,
    rebuild,
)
from tally.sync.redis_scan import scan_keys
from tally.sync.shard_promote import promote_holder


def shard_marker(layout: KeyLayout, shard: int) -> str:
    """The shard's own rebuild marker (in its slot): the epoch being written there."""
    return f"{layout.tag(shard)}:rebuilding"


def _shard_pattern(layout: KeyLayout, shard: int) -> str:
    # '{' and '}' are literal in Redis glob patterns; the shard's tag ends with '}', so shard 1
    # never matches shard 10's keys.
    return f"{layout.tag(shard)}:*"


@dataclass(frozen=True, slots=True)
class ShardPlan:
    shard: int
    client: redis.Redis
    state: DatasetState


def inspect_shard(
    client: redis.Redis, layout: KeyLayout, shard: int, *, current: str | None, building: str | None
) -> DatasetState:
    """The shard's keys on its primary against the ledger: ``current`` is the epoch id the
    shard should hold now, ``building`` the one a rebuild in progress is writing (or None)."""
    with translated(f"shard {shard} inspect"):
        marker = text(client.get(shard_marker(layout, shard)))
        value = text(client.get(layout.epoch(shard)))
    keys = sum(len(batch) for batch in scan_keys(client, _shard_pattern(layout, shard)))
    if keys == 0:
        return DatasetState.empty
    if building is not None and marker == building:
        return DatasetState.interrupted
    if marker is None and building is not None and value == layout.epoch_value(building):
        return DatasetState.loaded
    if marker is None and current is not None and value == layout.epoch_value(current):
        return DatasetState.healthy
    return DatasetState.occupied


def _refuse_undrained(client: redis.Redis, layout: KeyLayout, shard: int) -> None:
    key = layout.journal(shard)
    with translated(f"shard {shard} journal"):
        waiting = _undrained(client, key) if int(client.exists(key)) else 0
    if waiting:
        raise RebuildRefused(
            f"shard {shard} holds {waiting} undrained journal entries; deleting them would "
            "lose debits the ledger never saw; nothing was deleted"
        )


def _fence_shard(client: redis.Redis, layout: KeyLayout, shard: int) -> None:
    """Stop every write to a HEALTHY shard (delete its epoch key) only if its journal holds
    nothing undrained, in one step: WATCH the journal and the epoch key, check, MULTI DEL."""
    journal, epoch_key = layout.journal(shard), layout.epoch(shard)
    with translated(f"shard {shard} fence"), client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(journal, epoch_key)  # type: ignore[no-untyped-call]
            waiting = _undrained(pipe, journal) if int(pipe.exists(journal)) else 0
            if waiting:
                raise RebuildRefused(
                    f"shard {shard} holds {waiting} undrained journal entries; deleting them "
                    "would lose debits the ledger never saw; drain first (`tally drain`)"
                )
            pipe.multi()
            pipe.delete(epoch_key)
            pipe.execute()
        except redis.WatchError as exc:
            raise RebuildRefused(
                f"writes arrived in shard {shard} while fencing it; nothing deleted"
            ) from exc


def _delete_shard(client: redis.Redis, layout: KeyLayout, shard: int) -> int:
    deleted = 0
    for batch in scan_keys(client, _shard_pattern(layout, shard)):
        with translated(f"shard {shard} unlink"):
            deleted += int(client.unlink(*batch))  # one slot: the shard's tag
    return deleted


def _finish_shard(client: redis.Redis, layout: KeyLayout, shard: int, epoch_id: str) -> None:
    """The shard's epoch key and the end of its marker in one MULTI, only if the marker is
    still ours (WATCH)."""
    marker = shard_marker(layout, shard)
    with translated(f"shard {shard} epoch key"), client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(marker)  # type: ignore[no-untyped-call]
            if text(pipe.get(marker)) != epoch_id:
                raise RebuildRefused(f"another rebuild took over shard {shard}; not finishing")
            pipe.multi()
            pipe.set(layout.epoch(shard), layout.epoch_value(epoch_id))
            pipe.delete(marker)
            pipe.execute()
        except redis.WatchError as exc:
            raise RebuildRefused(
                f"another rebuild changed shard {shard}'s marker; not finishing"
            ) from exc


@dataclass(slots=True)
class _Counts:
    deleted: int = 0
    accounts: int = 0
    transfers: int = 0


def _plan(
    shard_client: Route,
    layout: KeyLayout,
    shards: Sequence[int],
    *,
    current: EpochView | None,
    building: str | None,
    force: bool,
) -> list[ShardPlan]:
    plans = []
    for shard in shards:
        client = shard_client(shard)
        _check_primary(client)
        now = None if current is None else current.of(shard)
        state = inspect_shard(client, layout, shard, current=now, building=building)
        plans.append(ShardPlan(shard, client, state))
    refused = {p.shard: p.state.value for p in plans if p.state in _GUARDED}
    if refused and not force:
        raise RebuildRefused(f"shard(s) hold data: {refused} (shard: state); nothing was changed")
    for p in plans:  # every journal checked before any shard is fenced
        if p.state is DatasetState.healthy:
            _refuse_undrained(p.client, layout, p.shard)
    for p in plans:
        if p.state is DatasetState.healthy:
            _fence_shard(p.client, layout, p.shard)
    return plans


_GUARDED = (DatasetState.healthy, DatasetState.occupied)


def _load(
    plans: Sequence[ShardPlan],
    shard_client: Route,
    layout: KeyLayout,
    ledger: SqlLedger,
    epoch_id: str,
    *,
    chunk: int,
    account_fields: AccountFields | None,
    window_ms: int,
) -> _Counts:
    counts = _Counts()
    todo = [p for p in plans if p.state is not DatasetState.loaded]
    for p in todo:
        if p.state is not DatasetState.empty:
            counts.deleted += _delete_shard(p.client, layout, p.shard)
        with translated(f"shard {p.shard} marker"):
            p.client.set(shard_marker(layout, p.shard), epoch_id)
    only = {p.shard for p in todo}
    if only:
        counts.accounts = _load_accounts(
            shard_client, layout, ledger, chunk, account_fields, only=only
        )
        _load_recharge_markers(shard_client, layout, ledger, only=only)
        counts.transfers = _load_transfers(
            shard_client, layout, ledger, chunk, window_ms, only=only
        )
        _load_holds(shard_client, layout, ledger, chunk, only=only)
        _create_streams(shard_client, layout, only=only)
    for p in todo:
        _finish_shard(p.client, layout, p.shard, epoch_id)
    return counts


def rebuild_cluster_shard(
    cluster: RedisCluster | redis.Redis,
    layout: KeyLayout,
    ledger: SqlLedger,
    shard: int,
    *,
    force: bool = False,
    chunk: int = 500,
    account_fields: AccountFields | None = None,
    idempotency_window_ms: int = 0,
) -> RebuildReport:
    """Restore logical shard ``shard`` from the ledger under a new epoch for that shard only;
    every other shard's epoch, keys and traffic are left alone."""
    if not 1 <= chunk <= CHUNK_MAX:
        raise UsageError(f"chunk must be 1..{CHUNK_MAX}, got {chunk}")
    if not 0 <= shard < layout.shards:
        raise UsageError(f"shard must be 0..{layout.shards - 1}, got {shard}")
    promoted = _promote(cluster, layout, ledger, shard)
    if promoted is not None:
        return promoted
    view, shard_epoch_id = ledger.begin_shard_rebuild(shard)
    if (view.epoch.namespace, view.epoch.shards) != (layout.namespace, layout.shards):
        raise UsageError(f"layout {layout} does not match the ledger's epoch {view.epoch}")
    shard_client = route(cluster, layout)
    (plan,) = _plan(
        shard_client, layout, [shard], current=view, building=shard_epoch_id, force=force
    )
    counts = _load(
        [plan],
        shard_client,
        layout,
        ledger,
        shard_epoch_id,
        chunk=chunk,
        account_fields=account_fields,
        window_ms=idempotency_window_ms,
    )
    after = ledger.finish_shard_rebuild(shard_epoch_id)
    invariant(after.of(shard) == shard_epoch_id, "shard rebuild finished but epoch not current")
    return RebuildReport(
        shard_epoch_id,
        "shard",
        layout.shards,
        plan.state.value,
        counts.accounts,
        counts.transfers,
        counts.deleted,
        ledger.count_unsettled_credit_intents(),
        shard=shard,
    )


def _promote(
    cluster: RedisCluster | redis.Redis, layout: KeyLayout, ledger: SqlLedger, shard: int
) -> RebuildReport | None:
    """A replica still holding the shard beats the ledger (it has the undrained journal too):
    promoted instead of rebuilt (:mod:`tally.sync.shard_promote`)."""
    view = ledger.epoch_view()
    if view is None or not isinstance(cluster, RedisCluster):
        return None
    epoch_id = view.of(shard)
    with translated(f"shard {shard} promotion"):  # redis errors leave as tally's
        promotion = promote_holder(cluster, layout, shard, layout.epoch_value(epoch_id))
    if promotion is None:
        return None
    admitted = "admitted" if promotion.old_primary_admitted else "NOT yet a replica: kept out"
    return RebuildReport(
        epoch_id,
        "promotion",
        layout.shards,
        f"primary {promotion.old_primary} empty; replica {promotion.promoted} held the epoch "
        f"and was promoted (the old primary {admitted}); nothing rebuilt",
        0,
        0,
        0,
        ledger.count_unsettled_credit_intents(),
        shard=shard,
    )


def rebuild_cluster(
    cluster: RedisCluster | redis.Redis,
    layout: KeyLayout,
    ledger: SqlLedger,
    *,
    force: bool = False,
    chunk: int = 500,
    account_fields: AccountFields | None = None,
    idempotency_window_ms: int = 0,
) -> RebuildReport:
    """Every shard of a cluster from the ledger under one new deployment epoch, shard by shard
    (the journal batches of the drainer wait while the epoch is building)."""
    if not 1 <= chunk <= CHUNK_MAX:
        raise UsageError(f"chunk must be 1..{CHUNK_MAX}, got {chunk}")
    current, building = ledger.epoch_view(), ledger.building_epoch()
    same = building is not None and (building.namespace, building.shards) == (
        layout.namespace,
        layout.shards,
    )
    shard_client = route(cluster, layout)
    shards = list(range(layout.shards))
    plans = _plan(
        shard_client,
        layout,
        shards,
        current=current,
        building=building.epoch_id if same and building is not None else None,
        force=force,
    )
    epoch = ledger.begin_rebuild(layout.namespace, layout.shards, kind=EpochKind.rebuild)
    counts = _load(
        plans,
        shard_client,
        layout,
        ledger,
        epoch.epoch_id,
        chunk=chunk,
        account_fields=account_fields,
        window_ms=idempotency_window_ms,
    )
    finished = ledger.finish_rebuild(epoch.epoch_id)
    invariant(finished.status is EpochStatus.current, "rebuild finished but epoch not current")
    states = {p.state.value for p in plans}
    return RebuildReport(
        epoch.epoch_id,
        EpochKind.rebuild.value,
        layout.shards,
        states.pop() if len(states) == 1 else "mixed",
        counts.accounts,
        counts.transfers,
        counts.deleted,
        ledger.count_unsettled_credit_intents(),
    )


def rebuild_store(
    client: RedisCluster | redis.Redis,
    layout: KeyLayout,
    ledger: SqlLedger,
    *,
    force: bool = False,
    shard: int | None = None,
    idempotency_window_ms: int = 0,
    account_fields: AccountFields | None = None,
) -> RebuildReport:
    """The one entry of ``tally rebuild`` and ``POST /v1/admin/rebuild``: one primary rebuilds
    whole (all its shards share one epoch: they are lost together); a cluster rebuilds one
    shard (``shard``) or all of them."""
    if not isinstance(client, RedisCluster):
        if shard is not None:
            raise UsageError(
                "--shard rebuilds one shard of a Redis Cluster; on one primary every shard "
                "shares one epoch (they are lost together): run the rebuild without --shard"
            )
        return rebuild(
            client,
            layout,
            ledger,
            force=force,
            account_fields=account_fields,
            idempotency_window_ms=idempotency_window_ms,
        )
    if shard is None:
        return rebuild_cluster(
            client,
            layout,
            ledger,
            force=force,
            account_fields=account_fields,
            idempotency_window_ms=idempotency_window_ms,
        )
    return rebuild_cluster_shard(
        client,
        layout,
        ledger,
        shard,
        force=force,
        account_fields=account_fields,
        idempotency_window_ms=idempotency_window_ms,
    )
