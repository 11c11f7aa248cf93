"""Rebuild the Redis store from the ledger of record (F3), and initialise a new deployment.

Order matters: accounts, transfer records and journal streams (with the ``drainer`` group) are
loaded while ``ns:rebuilding`` names the epoch being written and no epoch key exists, so no
store script accepts a write. Only the last step writes every shard's epoch key (one MULTI, which
fails if another rebuild took the marker over), then SQL marks the epoch current. A rebuild that
stops anywhere can be run again: it recognises its own marker or its finished epoch keys.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import redis

from tally.domain.accounts import Account
from tally.domain.holds import HoldStatus
from tally.domain.invariant import invariant
from tally.domain.limits import BALANCE_MINOR_MAX
from tally.errors import StoreReadOnly, UsageError
from tally.ledger.journal import format_tx_record
from tally.ledger.models import Epoch, EpochKind, EpochStatus
from tally.ledger.sql_accounts import LIST_LIMIT_MAX
from tally.ledger.sql_epochs import AlreadyInitialised
from tally.ledger.sql_holds import LedgerHold
from tally.ledger.sql_ledger import SqlLedger
from tally.ledger.sql_recharge import iter_pages
from tally.ledger.sqlutil import now_ms
from tally.store.errors import text, translated
from tally.store.keys import KeyLayout
from tally.sync.cluster_route import Route
from tally.sync.drainer import GROUP
from tally.sync.redis_scan import scan_keys

CHUNK_MAX = 5000
PAGE_SLACK = 100  # extra pages allowed for rows created while a load runs


class RebuildRefused(UsageError):
    hint = (
        "the Redis dataset is not empty: it holds the current healthy epoch or keys that are "
        "not from an interrupted rebuild; check you are pointing at the right Redis, then "
        "re-run with --force to delete this namespace's keys (other keys are left alone). "
        "A healthy dataset is deleted only once its journal is drained: stop the writers, "
        "run `tally drain`, then rebuild"
    )


class DatasetState(StrEnum):
    empty = "empty"
    interrupted = "interrupted"  # our marker: a rebuild stopped while loading
    loaded = "loaded"  # every epoch key is the building epoch's: only SQL is left to finish
    healthy = "healthy"  # every epoch key is the ledger's current epoch
    occupied = "occupied"  # anything else: foreign, partial, other layout, other keys


@dataclass(frozen=True, slots=True)
class RebuildReport:
    epoch_id: str
    kind: str
    shards: int
    dataset_before: str
    accounts_loaded: int
    transfers_loaded: int
    keys_deleted: int
    unsettled_intents: int  # to be applied again by the engine (``apply_pending_credits``)
    shard: int | None = None  # a one-shard rebuild (a Redis Cluster): the shard; else None


def _check_primary(client: redis.Redis) -> None:
    with translated("role"):
        role = client.info("replication").get("role")
    if role != "master":
        raise StoreReadOnly(f"the node is a {role}, not a writable primary: refusing to load it")


def inspect_dataset(client: redis.Redis, layout: KeyLayout, ledger: SqlLedger) -> DatasetState:
    with translated("inspect"):
        size = int(client.dbsize())
        marker = text(client.get(layout.rebuilding))
        pipe = client.pipeline(transaction=False)
        for shard in range(layout.shards):
            pipe.get(layout.epoch(shard))
        values = {text(v) for v in pipe.execute()}
    if size == 0:
        return DatasetState.empty
    ns_keys = sum(len(batch) for batch in scan_keys(client, layout.pattern))
    if ns_keys < size:
        return DatasetState.occupied  # keys of someone else share this database
    current, building = ledger.current_epoch(), ledger.building_epoch()
    if building is not None and marker == building.epoch_id:
        return DatasetState.interrupted
    if marker is None and building and values == {layout.epoch_value(building.epoch_id)}:
        return DatasetState.loaded
    if marker is None and current and values == {layout.epoch_value(current.epoch_id)}:
        return DatasetState.healthy
    return DatasetState.occupied


def _undrained(pipe: redis.client.Pipeline | redis.Redis, key: str) -> int:
    """Entries of one journal the ledger may not have: delivered but not acknowledged, plus
    any beyond the drainer group's last-delivered id (Redis 6.2 has no ``lag``: compare ids)."""
    groups = {text(g["name"]): g for g in pipe.xinfo_groups(key)}
    group = groups.get(GROUP)
    if group is None:
        return int(pipe.xlen(key))
    delivered = text(group["last-delivered-id"]) or "0-0"
    beyond = pipe.xrange(key, min="(" + delivered, max="+", count=1) or []
    return int(group["pending"]) + len(beyond)


def _fence_drained(client: redis.Redis, layout: KeyLayout) -> None:
    """Before a forced rebuild deletes a HEALTHY dataset: stop every write (delete the epoch keys,
    so every script answers store_lost) in one MULTI, only if no journal holds an entry the
    ledger has not got. WATCH makes the check and the fence one step: a write that lands in
    between (it appends to a journal) aborts the fence. An undrained entry is a debit Redis
    applied and the ledger never saw: deleting it would lose it for good."""
    journals = layout.journals()
    with translated("fence before rebuild"), client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(*journals, *(layout.epoch(s) for s in range(layout.shards)))  # type: ignore[no-untyped-call]
            waiting = {shard: _undrained(pipe, key) for shard, key in enumerate(journals)}
            if any(waiting.values()):
                shown = {s: n for s, n in waiting.items() if n}
                raise RebuildRefused(
                    f"the healthy dataset holds undrained journal entries {shown} "
                    "(shard: entries); deleting them would lose debits the ledger never saw"
                )
            pipe.multi()
            pipe.delete(*(layout.epoch(s) for s in range(layout.shards)))
            pipe.execute()
        except redis.WatchError as exc:
            raise RebuildRefused(
                "writes arrived while fencing the dataset; nothing deleted"
            ) from exc


class _Pipes:
    """One pipeline per primary that a page's writes go to (one primary: one pipeline; a Redis
    Cluster: one per node, each shard's keys on the node that owns its slot)."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self._by: dict[int, redis.client.Pipeline] = {}

    def __call__(self, shard: int) -> redis.client.Pipeline:
        client = self.route(shard)
        pipe = self._by.get(id(client))
        if pipe is None:
            pipe = self._by[id(client)] = client.pipeline(transaction=False)
        return pipe

    def execute(self) -> None:
        for pipe in self._by.values():
            pipe.execute()
        self._by.clear()


def _mine(only: Collection[int] | None, shard: int) -> bool:
    return only is None or shard in only


def delete_namespace(client: redis.Redis, layout: KeyLayout) -> int:
    deleted = 0
    for batch in scan_keys(client, layout.pattern):
        with translated("unlink"):
            deleted += int(client.unlink(*batch))
    return deleted


#: Extra account-hash fields owned by other layers (e.g. billing's auto-recharge threshold
#: ``rt`` and open recharge ``ro``), derived from SQL for a page of account ids.
AccountFields = Callable[[Sequence[str]], Mapping[str, Mapping[str, str | int]]]


def _load_accounts(
    route: Route,
    layout: KeyLayout,
    ledger: SqlLedger,
    chunk: int,
    extra: AccountFields | None = None,
    only: Collection[int] | None = None,
) -> int:
    """Every account (``only``: of those shards) with its ledger balance, held sum, status and
    credit limit, and the fields other layers own."""
    loaded, after = 0, None
    page_size = min(chunk, LIST_LIMIT_MAX)
    for _ in range(ledger.count_accounts() // page_size + PAGE_SLACK):
        full: Sequence[Account] = ledger.list_accounts(after=after, limit=page_size)
        if not full:
            return loaded
        after = full[-1].id
        page = [a for a in full if _mine(only, layout.shard_of(a.id))]
        if not page:
            continue
        balances = ledger.balances([a.id for a in page])
        held = ledger.held([a.id for a in page])  # holds: the open holds' sum, 'hd'
        extras = extra([a.id for a in page]) if extra is not None else {}
        with translated("load accounts"):
            pipes = _Pipes(route)
            for a in page:
                bal = balances[a.id]
                invariant(abs(bal) <= BALANCE_MINOR_MAX, f"{a.id} balance {bal} out of bounds")
                fields = {
                    "cur": a.currency,
                    "st": a.status.code,
                    "lim": a.credit_limit_minor,
                    "bal": bal,
                    **({"hd": held[a.id]} if held[a.id] else {}),
                    **extras.get(a.id, {}),
                }
                pipes(layout.shard_of(a.id)).hset(layout.account_key(a.id), mapping=fields)  # type: ignore[arg-type]
            pipes.execute()
        loaded += len(page)
    raise UsageError("accounts kept being created faster than the rebuild could load them")


def _load_recharge_markers(
    route: Route, layout: KeyLayout, ledger: SqlLedger, only: Collection[int] | None = None
) -> int:
    """Auto-recharge mirrors, from SQL: the threshold of every rule with autopay on (``rt``) and
    every unfinished recharge (``ro``; the newest per account wins), so a rebuilt store opens no
    second recharge while one is still being driven to its end."""
    book = ledger.recharges
    thresholds = iter_pages(lambda after, n: book.enabled_thresholds(after=after, limit=n),
                            lambda item: item[0])  # fmt: skip
    loaded = 0
    with translated("load recharge markers"):
        for account_id, threshold in thresholds:
            shard = layout.shard_of(account_id)
            if _mine(only, shard):
                route(shard).hset(layout.account_key(account_id), "rt", str(threshold))
                loaded += 1
        unfinished = iter_pages(lambda after, n: book.unfinished_markers(after=after, limit=n),
                                lambda rc: rc.id)  # fmt: skip
        for rc in sorted(unfinished, key=lambda rc: (rc.opened_at_ms, rc.id)):
            shard = layout.shard_of(rc.account_id)
            if _mine(only, shard):
                route(shard).hset(layout.account_key(rc.account_id), "ro", rc.id)
                loaded += 1
    return loaded


def _load_transfers(
    route: Route,
    layout: KeyLayout,
    ledger: SqlLedger,
    chunk: int,
    window_ms: int,
    only: Collection[int] | None = None,
) -> int:
    """Every transfer id used inside the idempotency window (``window_ms``; 0: ever), with its
    first outcome, in the shard of its ID (``only``: ids of those shards, whatever their
    account's shard): replays after the rebuild return it. They go to generation 0 with no
    generation key, so the first transfer call starts the window's clock: each restored record
    lives at least one more window."""
    oldest_ms = now_ms() - window_ms if window_ms else None
    loaded, after = 0, None
    for _ in range(ledger.count_transfers() // chunk + PAGE_SLACK):
        page = ledger.transfers_after(after, chunk)
        if not page:
            return loaded
        with translated("load transfers"):
            pipes = _Pipes(route)
            for t in page:
                if oldest_ms is not None and t.ts_ms < oldest_ms:
                    continue
                if not _mine(only, layout.shard_of(t.id)):
                    continue
                record = format_tx_record(
                    t.kind,
                    t.account_id,
                    t.amount_minor,
                    t.currency,
                    t.result,
                    t.balance_after_minor,
                )
                # the id's shard: ids are global
                pipes(layout.shard_of(t.id)).hset(layout.tx_for(t.id), t.id, record)
                loaded += 1
            pipes.execute()
        after = page[-1].id
    raise UsageError("transfers kept being added while the rebuild ran (is a drainer running?)")


def _hold_fields(h: LedgerHold) -> dict[str, str | int]:
    """A hold's record as lua/hold.lua keeps it, so replays after the rebuild answer as before
    (with the recharge a capture opened, once the journal carried it to the ledger)."""
    fields: dict[str, str | int] = {
        "a": h.account_id,
        "amt": h.amount_minor,
        "ein": h.expires_in_ms,
        "cur": h.currency,
        "exp": h.expires_at_ms,
        "st": h.status.code,
        "code": h.place_result,
        "ts": h.placed_at_ms,
    }
    if h.captured_minor is not None:
        fields["cap"] = h.captured_minor
    if h.recharge_id is not None:
        fields["rc"] = h.recharge_id
    for event, (bal_f, held_f) in (("placed", ("pb", "ph")), ("captured", ("cb", "ch")),
                                   ("voided", ("vb", "vh"))):  # fmt: skip
        bal, held = h.after.get(event, (None, None))
        if bal is not None:
            fields[bal_f] = bal
        if held is not None:
            fields[held_f] = held
    return fields


def _load_holds(
    route: Route,
    layout: KeyLayout,
    ledger: SqlLedger,
    chunk: int,
    only: Collection[int] | None = None,
) -> int:
    """Every hold the ledger knows (its record, in its account's shard, and its id's route, in
    the hold id's shard; ``only``: what lies in those shards);
    the open ones also go into their shard's expiry index with their expiry, so the sweeper or
    the next touch releases those that expired meanwhile. The accounts' 'hd' is loaded with
    them (``_load_accounts``)."""
    loaded, after = 0, None
    for _ in range(ledger.count_holds() // chunk + PAGE_SLACK):
        page = ledger.holds_after(after, chunk)
        if not page:
            return loaded
        with translated("load holds"):
            pipes = _Pipes(route)
            for h in page:
                shard = layout.shard_of(h.account_id)
                if _mine(only, shard):
                    pipe = pipes(shard)
                    pipe.hset(layout.hold(shard, h.hold_id), mapping=_hold_fields(h))  # type: ignore[arg-type]
                    if h.status is HoldStatus.open:
                        member = f"{h.account_id}|{h.hold_id}"
                        pipe.zadd(layout.hold_expiries(shard), {member: h.expires_at_ms})
                    loaded += 1
                route_shard = layout.shard_of(h.hold_id)
                if _mine(only, route_shard):
                    pipes(route_shard).hset(
                        layout.hold_routes(route_shard), h.hold_id, h.account_id
                    )
            pipes.execute()
        after = page[-1].hold_id
    raise UsageError("holds kept being added while the rebuild ran (is a drainer running?)")


def _create_streams(route: Route, layout: KeyLayout, only: Collection[int] | None = None) -> None:
    for shard, key in enumerate(layout.journals()):
        if not _mine(only, shard):
            continue
        with translated("create journal"):
            try:
                route(shard).xgroup_create(key, GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise


def _write_epoch_keys(client: redis.Redis, layout: KeyLayout, epoch: Epoch) -> None:
    """All epoch keys in one MULTI, only if our marker is still there (WATCH)."""
    with translated("write epoch keys"), client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(layout.rebuilding)  # type: ignore[no-untyped-call]
            if text(pipe.get(layout.rebuilding)) != epoch.epoch_id:
                raise RebuildRefused("another rebuild took over this dataset; not finishing")
            pipe.multi()
            for shard in range(layout.shards):
                pipe.set(layout.epoch(shard), layout.epoch_value(epoch.epoch_id))
            pipe.delete(layout.rebuilding)
            pipe.execute()
        except redis.WatchError as exc:
            raise RebuildRefused("another rebuild changed the marker; not finishing") from exc


def _run(
    client: redis.Redis,
    layout: KeyLayout,
    ledger: SqlLedger,
    *,
    force: bool,
    chunk: int,
    kind: EpochKind,
    account_fields: AccountFields | None = None,
    idempotency_window_ms: int = 0,
) -> RebuildReport:
    if not 1 <= chunk <= CHUNK_MAX:
        raise UsageError(f"chunk must be 1..{CHUNK_MAX}, got {chunk}")
    _check_primary(client)
    state = inspect_dataset(client, layout, ledger)
    if state in (DatasetState.healthy, DatasetState.occupied) and not force:
        raise RebuildRefused(f"the Redis dataset is {state.value}; nothing was changed")
    if state is DatasetState.healthy:
        _fence_drained(client, layout)
    epoch = ledger.begin_rebuild(layout.namespace, layout.shards, kind=kind)
    deleted, accounts, transfers = 0, 0, 0
    if state is not DatasetState.loaded:
        deleted = delete_namespace(client, layout) if state is not DatasetState.empty else 0
        with translated("marker"):
            client.set(layout.rebuilding, epoch.epoch_id)
        same: Route = lambda _shard: client  # noqa: E731  # one primary holds every shard
        accounts = _load_accounts(same, layout, ledger, chunk, account_fields)
        _load_recharge_markers(same, layout, ledger)
        transfers = _load_transfers(same, layout, ledger, chunk, idempotency_window_ms)
        _load_holds(same, layout, ledger, chunk)
        _create_streams(same, layout)
        _write_epoch_keys(client, layout, epoch)
    finished = ledger.finish_rebuild(epoch.epoch_id)
    invariant(finished.status is EpochStatus.current, "rebuild finished but epoch not current")
    return RebuildReport(
        epoch.epoch_id,
        kind.value,
        layout.shards,
        state.value,
        accounts,
        transfers,
        deleted,
        ledger.count_unsettled_credit_intents(),
    )


def rebuild(
    redis_client: redis.Redis,
    layout: KeyLayout,
    ledger: SqlLedger,
    *,
    force: bool = False,
    chunk: int = 500,
    account_fields: AccountFields | None = None,
    idempotency_window_ms: int = 0,
) -> RebuildReport:
    """Load an empty (or, with ``force``, this namespace's wiped) Redis from the ledger.
    ``account_fields`` adds other layers' fields to each account hash (see ``AccountFields``).
    ``idempotency_window_ms``: restore the records of transfers inside it only (0: all)."""
    return _run(
        redis_client,
        layout,
        ledger,
        force=force,
        chunk=chunk,
        kind=EpochKind.rebuild,
        account_fields=account_fields,
        idempotency_window_ms=idempotency_window_ms,
    )


def init_store(
    redis_client: redis.Redis,
    layout: KeyLayout,
    ledger: SqlLedger,
    *,
    force: bool = False,
    chunk: int = 500,
) -> RebuildReport:
    """A brand-new deployment: the first epoch, streams, groups and epoch keys. Refuses when the
    ledger already has a current epoch (that is what ``rebuild`` is for)."""
    current = ledger.current_epoch()
    if current is not None:
        raise AlreadyInitialised(f"the ledger's current epoch is {current.epoch_id}")
    return _run(redis_client, layout, ledger, force=force, chunk=chunk, kind=EpochKind.init)
