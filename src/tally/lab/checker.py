"""The lab's checker: decides from a run's artefacts alone whether the DESIGN.md invariants held.

Independent of the engine on purpose: it imports nothing from ``tally.billing``, ``tally.ledger``
or ``tally.store`` and never asks the engine anything. It reads files a run leaves in its
directory, each written by someone other than the billing code it judges:

    history.jsonl   the workload's client-side record (tally.lab.history)
    gateway.jsonl   the gateway simulator's own records: what the bank did
    ledger.sqlite3  the ledger of record, read with plain SQL
    store.json      the final Redis state, read with SCAN/HGETALL by :func:`snapshot_store`
    monitor.jsonl   what the lab's sampler saw on every node (roles, links, sync counters,
                    epoch keys), see tally.lab.monitor
    ping.jsonl      PING round trips to the primary, from a separate sampler process
                    (tally.lab.pinger); read together with monitor.jsonl
    events.jsonl    the faults and operator actions, with their wall-clock times
    setup.json      the ground truth the workload was given: accounts, cards, which cards decline

Definitions (figures; "evidence" of a transfer id = a ledger row with result 0 or a Redis ``tx``
record with code 0; a charge's credit = a credit whose id is the charge's idempotency key or one
of its metadata ids ``credit_id``/``transfer_id``/``recharge_id``):

- ``cards_charged_more_than_once``: cards with a succeeded charge made while an earlier succeeded
  charge of the same card had not reached the balance yet (no credit row with ``ts_ms`` at or
  before the later charge): the same shortfall charged twice.
- ``charges_without_credit``: succeeded charges, not fully refunded, with no credit in the ledger.
- ``payments_lost``: money in that someone was told happened and is in no balance: acknowledged
  credits (history ``ok``/``ok``) and succeeded unrefunded charges, without evidence.
- ``debits_acknowledged_lost``: debits acknowledged as applied (``ok``/``ok``) without evidence.
- ``wrongful_suspensions``: accounts ever suspended (ledger ``account_events``, final status in
  Redis or the ledger) whose card is not one of the declining cards of ``setup.json``.
- ``accounts_drifted``: customer accounts whose final Redis balance differs from the balance the
  ledger's transfers derive (a side missing counts as drift).
- ``conservation_error_minor``: per currency, |sum over every ledger account of the balance its
  transfers derive|, summed over currencies (double entry: must be 0).
- ``full_syncs`` / ``partial_syncs``: increases of ``sync_full`` / ``sync_partial_ok`` over every
  node incarnation (a restarted node's counters start again at 0).
- ``primary_latency_ms_p99_baseline``: PING p99 on the primary before the first fault;
  ``..._during_storm``: from the first heal until every replica's link is up again (or, when
  they never are, the last sample: ``storm_window.replicas_back`` says which).
- ``seconds_not_writable``: total length of 0.5 s bins in which client writes were invoked or in
  flight and none completed ``ok``.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tally.lab import checker_events, checker_holds
from tally.lab.history import Operation, read_history

BIN_MS = 500
WRITE_FS = ("debit", "credit", "topup")
MONEY_IN_FS = ("credit", "topup")
CREDIT_META_KEYS = ("credit_id", "transfer_id", "recharge_id")
#: a decline the card itself caused; velocity_limit is the issuer reacting to the charges (the
#: 2013 double charges tripped it): not the customer's funding failure
FUNDING_DECLINES = ("card_declined", "insufficient_funds", "expired_card")
SCAN_COUNT = 1000
STORE_KEYS_MAX = 5_000_000
DETAIL_ITEMS_MAX = 5  # examples quoted in an invariant's detail

FIGURES = (
    "full_syncs",
    "partial_syncs",
    "primary_latency_ms_p99_during_storm",
    "primary_latency_ms_p99_baseline",
    "seconds_not_writable",
    "cards_charged_more_than_once",
    "charges_without_credit",
    "payments_lost",
    "debits_acknowledged_lost",
    "wrongful_suspensions",
    "accounts_drifted",
    "conservation_error_minor",
)

INVARIANTS = (
    "1_transfer_id_used_once",
    "2_conservation",
    "3_balance_equals_ledger",
    "4_money_in_ledger_first",
    "5_one_credit_per_charge",
    "6_empty_store_refuses_writes",
    "7_no_wrongful_suspension",
    "8_recharge_only_when_healthy",
    "9_no_acknowledged_money_lost",
    checker_holds.NAME,
    checker_events.NAME,
)


# -- reading the artefacts ---------------------------------------------------------------------
def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as src:
        return [json.loads(line) for line in src if line.strip()]


@dataclass
class LedgerView:
    """The ledger as plain rows (never through tally.ledger)."""

    transfers: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> row
    statuses: dict[str, str] = field(default_factory=dict)  # customer account -> status
    suspended_events: set[str] = field(default_factory=set)
    recharge_opened_ms: dict[str, int] = field(default_factory=dict)  # recharge id -> ms
    intent_created_ms: dict[str, int] = field(default_factory=dict)
    journal_conflicts: int = 0


Rows = Callable[[str], list[tuple[Any, ...]]]


def _fill(view: LedgerView, tables: set[str], rows: Rows) -> LedgerView:
    """The same plain SQL on either database (SQLite file or PostgreSQL)."""
    if "transfers" in tables:
        cols = ("id", "kind", "account_id", "debit_account_id", "credit_account_id",
                "amount_minor", "currency", "result", "ts_ms")  # fmt: skip
        for row in rows(f"SELECT {', '.join(cols)} FROM transfers"):
            view.transfers[row[0]] = dict(zip(cols, row, strict=True))
    if "accounts" in tables:
        view.statuses = dict(rows("SELECT id, status FROM accounts WHERE kind = 'customer'"))
    if "account_events" in tables:
        sql = "SELECT DISTINCT account_id FROM account_events WHERE action = 'suspended'"
        view.suspended_events = {a for (a,) in rows(sql)}
    if "recharges" in tables:
        view.recharge_opened_ms = {
            k: int(v) for k, v in rows("SELECT id, opened_at_ms FROM recharges")
        }
    if "credit_intents" in tables:
        sql = "SELECT id, created_at_ms FROM credit_intents"
        view.intent_created_ms = {k: int(v) for k, v in rows(sql)}
    if "journal_conflicts" in tables:
        view.journal_conflicts = int(rows("SELECT COUNT(*) FROM journal_conflicts")[0][0])
    return view


def read_ledger(path: Path) -> LedgerView:
    view = LedgerView()
    if not path.is_file():
        return view
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return _fill(view, tables, lambda sql: list(conn.execute(sql)))
    finally:
        conn.close()


def read_ledger_url(url: str) -> LedgerView:
    """A PostgreSQL ledger (``postgresql://...``), read with plain SQL over its own connection."""
    import sqlalchemy as sa

    engine = sa.create_engine(_psycopg(url))
    try:
        with engine.connect() as conn:
            sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            tables = {n for (n,) in conn.execute(sa.text(sql))}
            return _fill(
                LedgerView(), tables, lambda q: [tuple(r) for r in conn.execute(sa.text(q))]
            )
    finally:
        engine.dispose()


def _psycopg(url: str) -> str:
    if url.startswith(("postgres://", "postgresql://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _ledger(run_dir: Path, setup_path: Path) -> LedgerView:
    """The ledger the run's setup names: a PostgreSQL URL, or the run's SQLite file."""
    url = _ledger_url(run_dir, setup_path)
    if url.startswith("sqlite"):
        return read_ledger(run_dir / "ledger.sqlite3")
    return read_ledger_url(url)


def _ledger_url(run_dir: Path, setup_path: Path) -> str:
    setup = json.loads(setup_path.read_text()) if setup_path.is_file() else {}
    url = setup.get("ledger_url") or ""
    if url.startswith(("postgres://", "postgresql://", "postgresql+psycopg://")):
        return str(url)
    return f"sqlite:///{run_dir / 'ledger.sqlite3'}"


def snapshot_store(client: Any, namespace: str = "tally") -> dict[str, Any]:
    """The final Redis state, read with SCAN: account hashes and ``tx`` records of the namespace.
    Bounded by ``STORE_KEYS_MAX``. Written to ``store.json`` by the runner."""
    accounts: dict[str, dict[str, str]] = {}
    tx: dict[str, str] = {}
    epochs = 0
    for seen, raw in enumerate(client.scan_iter(match=f"{namespace}:*", count=SCAN_COUNT), 1):
        if seen > STORE_KEYS_MAX:
            raise ValueError(f"more than {STORE_KEYS_MAX} keys: refusing to snapshot")
        key = raw.decode() if isinstance(raw, bytes) else raw
        if ":a:" in key:
            fields = client.hgetall(key)
            accounts[key.split(":a:", 1)[1]] = {_s(k): _s(v) for k, v in fields.items()}
        elif key.endswith((":tx", ":tx:1")):  # both generations of the idempotency window
            cursor = 0
            for _ in range(STORE_KEYS_MAX // SCAN_COUNT + 1):
                cursor, page = client.hscan(key, cursor, count=SCAN_COUNT)
                tx.update({_s(k): _s(v) for k, v in page.items()})
                if cursor == 0:
                    break
        elif key.endswith(":epoch"):
            epochs += 1
    return {"namespace": namespace, "accounts": accounts, "tx": tx, "epoch_keys": epochs}


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Artefacts:
    history: list[Operation]
    gateway: list[dict[str, Any]]
    ledger: LedgerView
    store: dict[str, Any]
    monitor: list[dict[str, Any]]
    events: list[dict[str, Any]]
    setup: dict[str, Any]
    #: invariant 11 as ``checker_events.check_events`` judged the ledger (read at load time: a
    #: run's PostgreSQL ledger is dropped once the run is checked)
    outbox: dict[str, Any]
    #: invariant 10 as ``checker_holds.check_holds`` judged the ledger and the history
    holds: dict[str, Any]

    @classmethod
    def load(cls, run_dir: Path) -> Artefacts:
        run_dir = Path(run_dir)
        history_path = run_dir / "history.jsonl"
        store_path, setup_path = run_dir / "store.json", run_dir / "setup.json"
        history = read_history(history_path) if history_path.is_file() else []
        ledger_url = _ledger_url(run_dir, setup_path)
        return cls(
            history=history,
            gateway=_jsonl(run_dir / "gateway.jsonl"),
            ledger=_ledger(run_dir, setup_path),
            store=json.loads(store_path.read_text()) if store_path.is_file() else {},
            monitor=_jsonl(run_dir / "monitor.jsonl") + _jsonl(run_dir / "ping.jsonl"),
            events=_jsonl(run_dir / "events.jsonl"),
            setup=json.loads(setup_path.read_text()) if setup_path.is_file() else {},
            outbox=checker_events.check_events(ledger_url),
            holds=checker_holds.check_holds(ledger_url, history),
        )


# -- evidence ----------------------------------------------------------------------------------
@dataclass
class Evidence:
    """Which transfer ids moved money, and when the balance got each credit (ms)."""

    moved: set[str]
    credit_at_ms: dict[str, int]
    ledger_credits: set[str]

    @classmethod
    def of(cls, a: Artefacts) -> Evidence:
        moved: set[str] = set()
        credit_at: dict[str, int] = {}
        ledger_credits: set[str] = set()
        for tid, row in a.ledger.transfers.items():
            if int(row["result"]) == 0:
                moved.add(tid)
                if row["kind"] == "credit":
                    ledger_credits.add(tid)
                    credit_at[tid] = int(row["ts_ms"])
        for tid, record in (a.store.get("tx") or {}).items():
            parts = record.split("|")
            if len(parts) >= 5 and parts[4] == "0":
                moved.add(tid)
        return cls(moved, credit_at, ledger_credits)


def _charge_credit_ids(charge: dict[str, Any]) -> list[str]:
    meta = charge.get("metadata") or {}
    ids = [charge["idempotency_key"]]
    ids += [str(meta[k]) for k in CREDIT_META_KEYS if meta.get(k)]
    return ids


def _charge_account(charge: dict[str, Any]) -> str | None:
    meta = charge.get("metadata") or {}
    return meta.get("account") or meta.get("account_id")


def _succeeded(gateway: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    rows = [r for r in gateway if r.get("kind") == kind and r.get("status") == "succeeded"]
    return sorted(rows, key=lambda r: (int(r.get("created_ms", 0)), int(r.get("seq", 0))))


def _refunded(gateway: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for r in _succeeded(gateway, "refund"):
        out[r["charge_id"]] += int(r["amount_minor"])
    return out


# -- figures -------------------------------------------------------------------------------------
def duplicate_charges(a: Artefacts, ev: Evidence) -> list[dict[str, Any]]:
    """Every succeeded charge made while an earlier one of its card had not reached a balance."""
    by_card: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for charge in _succeeded(a.gateway, "charge"):
        by_card[charge.get("card") or ""].append(charge)
    duplicates = []
    for charges in by_card.values():
        for i, later in enumerate(charges):
            at = int(later["created_ms"])
            for earlier in charges[:i]:
                credited = [ev.credit_at_ms.get(c) for c in _charge_credit_ids(earlier)]
                if not any(ms is not None and ms <= at for ms in credited):
                    duplicates.append(later)
                    break
    return duplicates


def charges_without_credit(
    a: Artefacts, ev: Evidence, *, anywhere: bool = False
) -> list[dict[str, Any]]:
    refunded = _refunded(a.gateway)
    out = []
    for charge in _succeeded(a.gateway, "charge"):
        if refunded.get(charge["id"], 0) >= int(charge["amount_minor"]):
            continue
        found = ev.moved if anywhere else ev.ledger_credits
        if not any(c in found for c in _charge_credit_ids(charge)):
            out.append(charge)
    return out


def acknowledged_lost(
    a: Artefacts, ev: Evidence, fs: Iterable[str], accepted: tuple[str, ...] = ("ok",)
) -> list[Operation]:
    """Operations answered ``ok`` with a result in ``accepted`` (a money-in answered ``pending``
    was promised too: durable, to be applied) whose id moved no money anywhere."""
    wanted = set(fs)
    return [
        op
        for op in a.history
        if op.f in wanted
        and op.type == "ok"
        and op.result in accepted
        and op.value.get("id") not in ev.moved
    ]


def suspended_accounts(a: Artefacts) -> set[str]:
    out = set(a.ledger.suspended_events)
    out |= {acc for acc, st in a.ledger.statuses.items() if st == "suspended"}
    out |= {acc for acc, h in (a.store.get("accounts") or {}).items() if h.get("st") == "s"}
    return out


def wrongful_suspensions(a: Artefacts) -> list[str]:
    """Suspended accounts whose card neither declines by the run's setup nor was declined by
    the gateway for the card's own reasons (a chaos run makes sound cards decline for a while:
    suspending those is what the rule asks for, not a wrongful suspension)."""
    declining = {acc["id"] for acc in a.setup.get("accounts", []) if acc.get("declines")}
    card_owner = {acc.get("card"): acc["id"] for acc in a.setup.get("accounts", [])}
    for record in a.gateway:
        if record.get("status") == "declined" and record.get("reason") in FUNDING_DECLINES:
            owner = card_owner.get(record.get("card"))
            if owner is not None:
                declining.add(owner)
    return sorted(acc for acc in suspended_accounts(a) if acc not in declining)


def ledger_balances(a: Artefacts) -> tuple[dict[str, int], dict[str, int]]:
    """(balance per account, sum per currency) derived from the ledger's transfers."""
    balances: dict[str, int] = defaultdict(int)
    per_currency: dict[str, int] = defaultdict(int)
    for row in a.ledger.transfers.values():
        if int(row["result"]) != 0:
            continue
        amount = int(row["amount_minor"])
        balances[row["debit_account_id"]] -= amount
        balances[row["credit_account_id"]] += amount
    for acc, bal in balances.items():
        cur = _currency_of(a, acc)
        per_currency[cur] += bal
    return dict(balances), dict(per_currency)


def _currency_of(a: Artefacts, account_id: str) -> str:
    if account_id.startswith("@") and ":" in account_id:
        return account_id.rsplit(":", 1)[1]
    hashed = (a.store.get("accounts") or {}).get(account_id) or {}
    return str(hashed.get("cur") or a.setup.get("currency", "USD"))


def drifted_accounts(a: Artefacts) -> list[tuple[str, int | None, int | None]]:
    derived, _ = ledger_balances(a)
    redis_accounts = a.store.get("accounts") or {}
    customers = set(a.ledger.statuses) | set(redis_accounts)
    customers |= {acc for acc in derived if not acc.startswith("@")}
    out = []
    for acc in sorted(customers):
        in_redis = redis_accounts.get(acc)
        redis_bal = int(in_redis["bal"]) if in_redis and "bal" in in_redis else None
        ledger_bal = derived.get(acc, 0) if acc in a.ledger.statuses or acc in derived else None
        if redis_bal != ledger_bal:
            out.append((acc, redis_bal, ledger_bal))
    return out


def conservation_error_minor(a: Artefacts) -> int:
    _, per_currency = ledger_balances(a)
    return sum(abs(v) for v in per_currency.values())


# -- monitor-derived figures -----------------------------------------------------------------------
def sync_counts(monitor: list[dict[str, Any]]) -> tuple[int, int]:
    """Sum of counter increases per node incarnation (node, run_id). The first incarnation of a
    node counts from its first sample; later ones from 0 (counters restart with the process)."""
    first: dict[tuple[str, str], tuple[int, int]] = {}
    last: dict[tuple[str, str], tuple[int, int]] = {}
    seen_nodes: set[str] = set()
    for sample in monitor:
        if sample.get("kind") != "nodes":
            continue
        for name, node in (sample.get("nodes") or {}).items():
            run_id = node.get("run_id")
            if not run_id:
                continue
            counters = (int(node.get("sync_full", 0)), int(node.get("sync_partial_ok", 0)))
            key = (name, run_id)
            if key not in first:
                first[key] = counters if name not in seen_nodes else (0, 0)
                seen_nodes.add(name)
            last[key] = counters
    full = sum(last[k][0] - first[k][0] for k in last)
    partial = sum(last[k][1] - first[k][1] for k in last)
    return full, partial


def p99(samples: list[float]) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3)


def _fault_times(events: list[dict[str, Any]]) -> tuple[int | None, int | None]:
    faults = [e for e in events if e.get("fault")]
    first = min((int(e["t_ms"]) for e in faults), default=None)
    heals = [int(e["t_ms"]) for e in events if e.get("action") == "heal"]
    return first, min(heals, default=None)


def _replicas_up_after(monitor: list[dict[str, Any]], since_ms: int) -> int | None:
    for sample in monitor:
        if sample.get("kind") != "nodes" or int(sample["t_ms"]) <= since_ms:
            continue
        nodes = [n for n in (sample.get("nodes") or {}).values() if n.get("role") != "down"]
        replicas = [n for n in nodes if n.get("role") == "slave"]
        if replicas and all(n.get("link") == "up" for n in replicas):
            return int(sample["t_ms"])
    return None


def latency_figures(a: Artefacts) -> tuple[float, float, dict[str, Any]]:
    pings = [(int(s["t_ms"]), float(s["ms"])) for s in a.monitor if s.get("kind") == "ping"
             and s.get("ms") is not None]  # fmt: skip
    first_fault, first_heal = _fault_times(a.events)
    start = min((t for t, _ in pings), default=0)
    baseline_end = first_fault if first_fault is not None else max((t for t, _ in pings), default=0)
    baseline = [ms for t, ms in pings if start <= t < baseline_end]
    storm: list[float] = []
    window: dict[str, Any] = {}
    if first_heal is not None:
        back = _replicas_up_after(a.monitor, first_heal)
        # replicas never back (a full sync longer than the run): the storm lasted to the end
        until = back if back is not None else max((t for t, _ in pings), default=first_heal)
        storm = [ms for t, ms in pings if first_heal <= t <= until]
        window = {"from_ms": first_heal, "until_ms": until, "samples": len(storm),
                  "replicas_back": back is not None}  # fmt: skip
    return p99(baseline), p99(storm), window


def not_writable_seconds(history: list[Operation]) -> float:
    writes = [op for op in history if op.f in WRITE_FS]
    if not writes:
        return 0.0
    start = min(op.invoked_ms for op in writes)
    end = max(op.completed_ms or op.invoked_ms for op in writes)
    bins = (end - start) // BIN_MS + 1
    ok = [False] * bins
    busy = [False] * bins
    for op in writes:
        first = (op.invoked_ms - start) // BIN_MS
        last = ((op.completed_ms or end) - start) // BIN_MS
        for b in range(first, min(last, bins - 1) + 1):
            busy[b] = True
        if op.type == "ok" and op.completed_ms is not None:
            ok[(op.completed_ms - start) // BIN_MS] = True
    return round(sum(1 for b in range(bins) if busy[b] and not ok[b]) * BIN_MS / 1000, 3)


# -- health over time (invariants 6 and 8) -----------------------------------------------------------
def _unhealthy_spans(monitor: list[dict[str, Any]], *, need_epoch: bool) -> list[tuple[int, int]]:
    """Spans between consecutive node samples that BOTH showed no writable primary (with its
    epoch keys when ``need_epoch``): a write or a charge inside one happened while unhealthy."""
    states: list[tuple[int, bool]] = []
    for sample in monitor:
        if sample.get("kind") != "nodes":
            continue
        masters = [n for n in (sample.get("nodes") or {}).values() if n.get("role") == "master"]
        healthy = any((n.get("epoch", 0) > 0) if need_epoch else True for n in masters)
        states.append((int(sample["t_ms"]), healthy))
    spans = []
    for (t0, h0), (t1, h1) in itertools.pairwise(states):
        if not h0 and not h1:
            spans.append((t0, t1))
    return spans


def _inside(t: int, spans: list[tuple[int, int]]) -> bool:
    return any(lo < t < hi for lo, hi in spans)


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent unhealthy spans joined into maximal runs."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return out


def _within(invoked: int, completed: int, runs: list[tuple[int, int]]) -> bool:
    """The whole call, invocation to answer, inside one unhealthy run: then the write landed
    while no primary held the epoch. A call that began while the store was healthy may have
    landed then (a primary paused mid-call answers late, from before the pause): that is no
    evidence against the epoch guard."""
    return any(lo < invoked and completed < hi for lo, hi in runs)


# -- the verdict --------------------------------------------------------------------------------------
@dataclass
class Verdict:
    figures: dict[str, Any]
    invariants: dict[str, dict[str, Any]]
    extras: dict[str, Any]

    @property
    def ok(self) -> bool:
        return all(v["held"] for v in self.invariants.values())

    def to_dict(self) -> dict[str, Any]:
        return {"figures": self.figures, "invariants": self.invariants, "extras": self.extras}


def _held(ok: bool, detail: str) -> dict[str, Any]:
    return {"held": bool(ok), "detail": detail}


def _examples(items: Iterable[Any]) -> str:
    listed = list(items)
    shown = ", ".join(str(x) for x in listed[:DETAIL_ITEMS_MAX])
    return shown + (
        f" (+{len(listed) - DETAIL_ITEMS_MAX} more)" if len(listed) > DETAIL_ITEMS_MAX else ""
    )


def _replay_conflicts(history: list[Operation]) -> list[str]:
    """Operations of one kind on one id that were answered differently (a hold, its capture
    and its void share the hold's id, and are three operations, not replays of one)."""
    first: dict[tuple[str, str], str] = {}
    bad = []
    for op in history:
        tid = op.value.get("id")
        if op.type != "ok" or not tid or op.result is None:
            continue
        key = (op.f, str(tid))
        if key in first and first[key] != op.result:
            bad.append(f"{tid}: {first[key]} then {op.result}")
        first.setdefault(key, op.result)
    return bad


def _ledger_first_violations(a: Artefacts) -> list[str]:
    bad = []
    for charge in sorted(a.gateway, key=lambda r: int(r.get("seq", 0))):
        if charge.get("kind") != "charge":
            continue
        key, at = charge["idempotency_key"], int(charge["created_ms"])
        opened = a.ledger.recharge_opened_ms.get(key, a.ledger.intent_created_ms.get(key))
        if opened is None or opened > at:
            bad.append(f"{charge['id']} (key {key})")
    return bad


def check(a: Artefacts) -> Verdict:
    ev = Evidence.of(a)
    dups = duplicate_charges(a, ev)
    no_credit = charges_without_credit(a, ev)
    lost_charges = charges_without_credit(a, ev, anywhere=True)
    lost_credits = acknowledged_lost(a, ev, MONEY_IN_FS, ("ok", "pending"))
    # a capture is a debit of held money: one the ledger does not show counts with the debits
    lost_debits: list[Operation | str] = [*acknowledged_lost(a, ev, ("debit",)),
                                          *a.holds.get("captures_lost", [])]  # fmt: skip
    wrongful = wrongful_suspensions(a)
    drifted = drifted_accounts(a)
    conservation = conservation_error_minor(a)
    full, partial = sync_counts(a.monitor)
    p99_base, p99_storm, storm_window = latency_figures(a)
    dup_cards = {c.get("card") for c in dups}
    figures = {
        "full_syncs": full,
        "partial_syncs": partial,
        "primary_latency_ms_p99_during_storm": p99_storm,
        "primary_latency_ms_p99_baseline": p99_base,
        "seconds_not_writable": not_writable_seconds(a.history),
        "cards_charged_more_than_once": len(dup_cards),
        "charges_without_credit": len(no_credit),
        "payments_lost": len(lost_charges) + len(lost_credits),
        "debits_acknowledged_lost": len(lost_debits),
        "wrongful_suspensions": len(wrongful),
        "accounts_drifted": len(drifted),
        "conservation_error_minor": conservation,
    }
    invariants = _invariants(a, figures, dups, no_credit, lost_charges, lost_credits, lost_debits,
                             wrongful, drifted)  # fmt: skip
    extras = {
        "duplicate_charges": len(dups),
        "duplicate_charges_minor": sum(int(c["amount_minor"]) for c in dups),
        "charges_succeeded": len(_succeeded(a.gateway, "charge")),
        "charges_declined": sum(
            1 for r in a.gateway if r.get("kind") == "charge" and r.get("status") == "declined"
        ),
        "refunds_succeeded": len(_succeeded(a.gateway, "refund")),
        "operations": len(a.history),
        "operations_by_type": _count_types(a.history),
        "storm_window": storm_window,
        "drift_examples": [list(d) for d in drifted[:DETAIL_ITEMS_MAX]],
        "captures_acknowledged_lost": len(a.holds.get("captures_lost", [])),
        "voids_acknowledged_lost": len(a.holds.get("voids_lost", [])),
    }
    return Verdict(figures, invariants, extras)


def _count_types(history: list[Operation]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for op in history:
        out[f"{op.f}:{op.type}"] += 1
    return dict(sorted(out.items()))


def _invariants(
    a: Artefacts,
    figures: dict[str, Any],
    dups: list[dict[str, Any]],
    no_credit: list[dict[str, Any]],
    lost_charges: list[dict[str, Any]],
    lost_credits: list[Operation],
    lost_debits: list[Operation | str],
    wrongful: list[str],
    drifted: list[tuple[str, int | None, int | None]],
) -> dict[str, dict[str, Any]]:
    conflicts = _replay_conflicts(a.history)
    jc = a.ledger.journal_conflicts
    late_charges = _ledger_first_violations(a)
    lost_spans = _unhealthy_spans(a.monitor, need_epoch=True)
    ev = Evidence.of(a)
    lost_runs = _merged(lost_spans)
    writes_when_lost = [  # acknowledged AND landed: a store without its epoch took the write
        op for op in a.history
        if op.f in WRITE_FS and op.moved_money and op.completed_ms is not None
        and _within(op.invoked_ms, op.completed_ms, lost_runs) and op.value.get("id") in ev.moved
    ]  # fmt: skip
    blind = [c for c in a.gateway if c.get("kind") == "charge"
             and _inside(int(c["created_ms"]), lost_spans)]  # fmt: skip
    bound = int(a.setup.get("debits_lost_bound", 0))
    voids_lost = a.holds.get("voids_lost", [])  # acknowledged writes lost, bounded the same way
    out = {
        "1_transfer_id_used_once": _held(
            not conflicts and jc == 0,
            f"{len(conflicts)} ids answered differently on replay; {jc} journal conflicts"
            + (f": {_examples(conflicts)}" if conflicts else ""),
        ),
        "2_conservation": _held(
            figures["conservation_error_minor"] == 0,
            f"ledger accounts sum to {figures['conservation_error_minor']} minor units",
        ),
        "3_balance_equals_ledger": _held(
            not drifted,
            f"{len(drifted)} accounts differ (account, redis, ledger): {_examples(drifted)}"
            if drifted
            else "every Redis balance equals the ledger-derived balance",
        ),
        "4_money_in_ledger_first": _held(
            not late_charges,
            f"{len(late_charges)} charges without an earlier intent in SQL: {_examples(late_charges)}"
            if late_charges
            else "every charge had its intent in SQL first",
        ),
        "5_one_credit_per_charge": _held(
            not dups and not no_credit,
            f"{len(dups)} duplicate charges on {figures['cards_charged_more_than_once']} cards; "
            f"{len(no_credit)} charges without a credit: {_examples(c['id'] for c in no_credit)}",
        ),
        "6_empty_store_refuses_writes": _held(
            not writes_when_lost,
            f"{len(writes_when_lost)} writes acknowledged while no primary held the epoch"
            + (
                f": {_examples(op.value.get('id') for op in writes_when_lost)}"
                if writes_when_lost
                else ""
            ),
        ),
        "7_no_wrongful_suspension": _held(
            not wrongful,
            f"{len(wrongful)} accounts suspended without a funding failure: {_examples(wrongful)}"
            if wrongful
            else "only declining cards' accounts were suspended",
        ),
        "8_recharge_only_when_healthy": _held(
            not blind,
            f"{len(blind)} charges attempted while the store was unhealthy: "
            f"{_examples(c['id'] for c in blind)}"
            if blind
            else "no charge while unhealthy",
        ),
        "9_no_acknowledged_money_lost": _held(
            not lost_credits and not lost_charges and len(lost_debits) <= bound,
            f"{len(lost_credits)} acknowledged credits and {len(lost_charges)} paid charges in no "
            f"balance; {len(lost_debits)} acknowledged debits lost (bound {bound})"
            + (
                f", {captures} of them captures"
                if (captures := len(a.holds.get("captures_lost", [])))
                else ""
            ),
        ),
        checker_holds.NAME: _held(
            bool(a.holds["held"]) and len(voids_lost) <= bound,
            str(a.holds["detail"])
            + (f" (bound {bound}, as for lost debits)" if voids_lost else ""),
        ),
        checker_events.NAME: _held(bool(a.outbox["held"]), str(a.outbox["detail"])),
    }
    return out


def check_dir(run_dir: Path) -> Verdict:
    return check(Artefacts.load(run_dir))


def iter_figures(verdict: Verdict) -> Iterator[tuple[str, Any]]:
    for name in FIGURES:
        yield name, verdict.figures[name]
