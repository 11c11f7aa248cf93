"""Reconcile: every Redis balance against the ledger, exactly, while writes continue.

For a batch of one shard's accounts, one MULTI reads the epoch key, the balances and the journal's
last generated id P together. Everything at or before P is either still in the stream (XRANGE
reads it) or was trimmed, and trimming happens only after the SQL commit. Then ONE SQL snapshot
sums the ledger as of P (older epochs, plus this epoch's lines at or before P) and finds which
XRANGE'd lines are already stored. Expected Redis balance = ledger as of P + the ok lines not yet
stored. Any difference is drift, not a race.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import redis
from redis.cluster import RedisCluster

from tally.domain.accounts import Account
from tally.domain.results import Result
from tally.domain.transfers import TransferKind
from tally.errors import ConfigError, LedgerNotInitialised, StoreLost, UsageError
from tally.ledger.journal import parse_hold_lines
from tally.ledger.models import DrainedLine, Epoch, EpochView, HoldLine, StreamId
from tally.ledger.sql_accounts import LIST_LIMIT_MAX
from tally.ledger.sql_ledger import SqlLedger
from tally.store.errors import text, translated
from tally.store.keys import KeyLayout
from tally.sync.cluster_route import Route, primary_clients, route
from tally.sync.redis_scan import (
    account_key_pattern,
    journal_entries_upto,
    journal_lines_upto,
    parse_account_key,
    scan_keys,
)

BATCH_MAX = 5000
DRIFT_LISTED_MAX = 10_000
_FIELDS = ("cur", "st", "lim", "bal", "hd")  # hd: open holds' sum (absent: 0)


@dataclass(frozen=True, slots=True)
class Drift:
    account: str
    redis_balance_minor: int | None  # None: not in Redis
    ledger_balance_minor: int | None  # None: not in the ledger
    undrained_minor: int
    diff_minor: int  # redis - (ledger + undrained)
    #: balance | missing_in_redis | missing_in_ledger | attributes | wrong_shard | ledger_ahead
    #: | held (the open holds' sum, so the available balance, differs)
    reason: str


@dataclass
class ReconcileReport:
    epoch_id: str
    accounts_checked: int = 0
    accounts_drifted: int = 0
    drift: list[Drift] = field(default_factory=list)  # at most DRIFT_LISTED_MAX listed
    undrained_lines: int = 0
    undrained_minor_by_currency: dict[str, int] = field(default_factory=dict)
    journal_entries: int = 0
    unsettled_intents: int = 0
    conservation: dict[str, int] = field(default_factory=dict)
    journal_conflicts: int = 0

    @property
    def conservation_error_minor(self) -> int:
        return sum(abs(v) for v in self.conservation.values())

    @property
    def ok(self) -> bool:
        return (
            self.accounts_drifted == 0
            and self.conservation_error_minor == 0
            and self.journal_conflicts == 0
        )

    def __post_init__(self) -> None:
        # every drifted account, listed or not (not a field: reports serialise without it)
        self._drifted_ids: set[str] = set()

    def has_drift(self, account_id: str) -> bool:
        return account_id in self._drifted_ids

    def add(self, drift: Drift) -> None:
        """One account, one finding: a second one for the same account is dropped."""
        if drift.account in self._drifted_ids:
            return
        self._drifted_ids.add(drift.account)
        self.accounts_drifted += 1
        if len(self.drift) < DRIFT_LISTED_MAX:
            self.drift.append(drift)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        out["conservation_error_minor"] = self.conservation_error_minor
        return out


@dataclass(frozen=True, slots=True)
class _Snapshot:
    fields: dict[str, tuple[str | None, ...]]  # account -> (cur, st, lim, bal, hd)
    upto: StreamId


def _snapshot(
    client: redis.Redis, layout: KeyLayout, shard: int, epoch: Epoch, ids: list[str]
) -> _Snapshot:
    with translated(f"shard {shard} snapshot"):
        pipe = client.pipeline(transaction=True)
        pipe.get(layout.epoch(shard))
        for account_id in ids:
            pipe.hmget(layout.account(shard, account_id), list(_FIELDS))
        pipe.xinfo_stream(layout.journal(shard))
        replies = pipe.execute(raise_on_error=False)
    if text(replies[0]) != layout.epoch_value(epoch.epoch_id):
        raise StoreLost(f"shard {shard} epoch key is {text(replies[0])!r}, not {epoch.epoch_id}")
    if isinstance(replies[-1], Exception):
        raise StoreLost(f"shard {shard} journal is missing: {replies[-1]}")
    fields = {a: tuple(text(v) for v in r) for a, r in zip(ids, replies[1:-1], strict=True)}
    return _Snapshot(fields, StreamId.parse(replies[-1]["last-generated-id"]))


def _signed(d: DrainedLine) -> int:
    return d.line.amount_minor if d.line.kind is TransferKind.credit else -d.line.amount_minor


def _undrained(
    client: redis.Redis, layout: KeyLayout, shard: int, epoch: Epoch, snap: _Snapshot
) -> dict[str, DrainedLine]:
    """The ok lines of these accounts in the journal up to P, first line per transfer id."""
    out: dict[str, DrainedLine] = {}
    for d in journal_lines_upto(client, layout, shard, snap.upto):
        if d.position.epoch_id != epoch.epoch_id or d.line.result is not Result.ok:
            continue  # foreign lines are never applied; failed ones move no money
        if d.line.account_id in snap.fields:
            out.setdefault(d.line.transfer_id, d)
    return out


def _undrained_holds(
    client: redis.Redis,
    layout: KeyLayout,
    ledger: SqlLedger,
    shard: int,
    epoch: Epoch,
    snap: _Snapshot,
) -> tuple[dict[str, int], dict[str, int]]:
    """Holds: (held as of P by the ledger, + the hold lines up to P not yet stored) per account.
    A placed (ok) line adds its amount; a closing line (captured, voided, expired) releases the
    hold's placed amount (from the journal or the ledger)."""
    lines: dict[tuple[str, str], HoldLine] = {}
    for stream_id, fields in journal_entries_upto(client, layout, shard, snap.upto):
        if fields.get("e") != epoch.epoch_id:
            continue
        for line, _pos in parse_hold_lines(shard, stream_id, fields):
            if line.account_id in snap.fields:
                lines.setdefault((line.hold_id, line.event), line)
    view, stored = ledger.held_view_as_of(
        list(snap.fields), epoch_id=epoch.epoch_id, upto=snap.upto, probe=list(lines)
    )
    pending: dict[str, int] = defaultdict(int)
    for (hold_id, event), line in lines.items():
        if (hold_id, event) in stored:
            continue
        if event == "placed":
            pending[line.account_id] += line.amount_minor if line.result == 0 else 0
            continue
        placed = lines.get((hold_id, "placed"))
        if placed is not None:
            amount = placed.amount_minor
        else:
            known = ledger.get_hold(hold_id)
            amount = known.amount_minor if known is not None else 0
        pending[line.account_id] -= amount
    return view, pending


def _attributes_differ(account: Account, fields: tuple[str | None, ...]) -> bool:
    cur, st, lim, _bal, _hd = fields
    return (cur, st, lim) != (
        account.currency,
        account.status.code,
        str(account.credit_limit_minor),
    )


def _check_batch(
    client: redis.Redis,
    layout: KeyLayout,
    ledger: SqlLedger,
    epoch: Epoch,
    shard: int,
    accounts: list[Account],
    report: ReconcileReport,
) -> None:
    ids = [a.id for a in accounts]
    snap = _snapshot(client, layout, shard, epoch, ids)
    lines = _undrained(client, layout, shard, epoch, snap)
    view, stored = ledger.ledger_view_as_of(
        ids, epoch_id=epoch.epoch_id, upto=snap.upto, probe_ids=list(lines)
    )
    undrained: dict[str, int] = defaultdict(int)
    for tid, d in lines.items():
        if tid not in stored:
            undrained[d.line.account_id] += _signed(d)
            report.undrained_lines += 1
            cur = d.line.currency
            report.undrained_minor_by_currency[cur] = report.undrained_minor_by_currency.get(
                cur, 0
            ) + _signed(d)
    held_view, held_pending = _undrained_holds(client, layout, ledger, shard, epoch, snap)
    for account in accounts:
        report.accounts_checked += 1
        fields, pending = snap.fields[account.id], undrained[account.id]
        expected = view[account.id] + pending
        if fields[3] is None:
            report.add(
                Drift(account.id, None, view[account.id], pending, -expected, "missing_in_redis")
            )
            continue
        redis_bal = int(fields[3])
        if redis_bal != expected:
            report.add(
                Drift(
                    account.id,
                    redis_bal,
                    view[account.id],
                    pending,
                    redis_bal - expected,
                    "balance",
                )
            )
        elif _attributes_differ(account, fields):
            report.add(Drift(account.id, redis_bal, view[account.id], pending, 0, "attributes"))
        else:
            # holds: the available balance (balance - held + limit) agrees when held does too
            redis_held = int(fields[4]) if fields[4] is not None else 0
            expected_held = held_view[account.id] + held_pending[account.id]
            if redis_held != expected_held:
                report.add(
                    Drift(
                        account.id,
                        redis_bal,
                        view[account.id],
                        pending,
                        expected_held - redis_held,  # available: redis - expected
                        "held",
                    )
                )


def _ledger_pass(
    client: Route,
    layout: KeyLayout,
    ledger: SqlLedger,
    view: EpochView,
    batch: int,
    report: ReconcileReport,
) -> None:
    """Each shard at its own epoch (``view.for_shard``: a shard rebuilt alone has its own)."""
    buffers: dict[int, list[Account]] = defaultdict(list)
    after: str | None = None
    page_size = min(batch, LIST_LIMIT_MAX)
    for _ in range(ledger.count_accounts() // page_size + 100):  # + accounts created meanwhile
        page = ledger.list_accounts(after=after, limit=page_size)
        if not page:
            break
        for account in page:
            shard = layout.shard_of(account.id)
            buffers[shard].append(account)
            if len(buffers[shard]) >= batch:
                _check_batch(
                    client(shard),
                    layout,
                    ledger,
                    view.for_shard(shard),
                    shard,
                    buffers.pop(shard),
                    report,
                )
        after = page[-1].id
    for shard, accounts in sorted(buffers.items()):
        _check_batch(client(shard), layout, ledger, view.for_shard(shard), shard, accounts, report)


def _last_generated(client: redis.Redis, layout: KeyLayout, shard: int) -> StreamId:
    with translated(f"shard {shard} journal"):
        info = client.xinfo_stream(layout.journal(shard))
    return StreamId.parse(info["last-generated-id"])


def _ahead_pass(
    route: Route,
    layout: KeyLayout,
    ledger: SqlLedger,
    view: EpochView,
    report: ReconcileReport,
) -> None:
    """Ledger lines positioned after the journal's last generated id: drained from a store this
    one does not continue (a failover to a replica that missed them). The balance pass compares
    as of that id, so it cannot see them until new writes pass their position; this pass can."""
    for shard in range(layout.shards):
        client = route(shard)
        ahead = ledger.lines_beyond_journal(
            epoch_id=view.of(shard),
            shard=shard,
            journal_position=partial(_last_generated, client, layout, shard),
        )
        for account_id, (_lines, signed) in sorted(ahead.items()):
            if report.has_drift(account_id):
                continue  # the balance pass already found it
            with translated("account read"):
                bal = text(client.hget(layout.account(shard, account_id), "bal"))
            redis_bal = int(bal) if bal and bal.lstrip("-").isdigit() else None
            ledger_bal = ledger.balance_of(account_id)
            report.add(Drift(account_id, redis_bal, ledger_bal, 0, -signed, "ledger_ahead"))


def _redis_pass(
    client: redis.Redis, layout: KeyLayout, ledger: SqlLedger, report: ReconcileReport
) -> None:
    """Accounts Redis holds that the ledger does not (or under the wrong shard); ``client``:
    one primary (on a cluster, this runs once per primary)."""
    for keys in scan_keys(client, account_key_pattern(layout)):
        parsed = [p for p in (parse_account_key(layout, k) for k in keys) if p is not None]
        known = ledger.get_accounts([account_id for _shard, account_id in parsed])
        for shard, account_id in parsed:
            wrong_shard = shard != layout.shard_of(account_id)
            if account_id in known and not wrong_shard:
                continue
            with translated("account read"):
                bal = text(client.hget(layout.account(shard, account_id), "bal"))
            redis_bal = int(bal) if bal and bal.lstrip("-").isdigit() else 0
            reason = "wrong_shard" if wrong_shard else "missing_in_ledger"
            ledger_bal = ledger.balance_of(account_id) if account_id in known else None
            report.add(Drift(account_id, redis_bal, ledger_bal, 0, redis_bal, reason))


def reconcile(
    redis_client: redis.Redis | RedisCluster,
    layout: KeyLayout,
    ledger: SqlLedger,
    *,
    batch: int = 500,
) -> ReconcileReport:
    """On a Redis Cluster (``RedisCluster``) each shard is compared on the primary that owns
    it, at that shard's own journal position; accounts are scanned on every primary."""
    if not 1 <= batch <= BATCH_MAX:
        raise UsageError(f"batch must be 1..{BATCH_MAX}, got {batch}")
    view = ledger.epoch_view()
    if view is None:
        raise LedgerNotInitialised("the ledger has no current epoch")
    epoch = view.epoch
    if (epoch.namespace, epoch.shards) != (layout.namespace, layout.shards):
        raise ConfigError(f"layout {layout} does not match the ledger's epoch {epoch}")
    report = ReconcileReport(epoch.epoch_id)
    shard_client = route(redis_client, layout)
    _ledger_pass(shard_client, layout, ledger, view, batch, report)
    for primary in primary_clients(redis_client):
        _redis_pass(primary, layout, ledger, report)
    _ahead_pass(shard_client, layout, ledger, view, report)
    with translated("journal length"):
        report.journal_entries = sum(
            int(shard_client(s).xlen(layout.journal(s))) for s in range(layout.shards)
        )
    report.unsettled_intents = ledger.count_unsettled_credit_intents()
    report.conservation = ledger.conservation()
    report.journal_conflicts = ledger.journal_conflicts_count()
    return report
