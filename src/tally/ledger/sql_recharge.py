"""Auto-recharge in the ledger of record: rules, recharges (the saga's recovery points), the
freeze switch, account events and remediation actions. ``RechargeLedger`` runs each method in
one SQL transaction; the module functions take an open connection (the drainer calls
``record_openings`` inside its own transaction, so an opening is never lost once drained).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tally.domain.accounts import is_system_account_id
from tally.domain.events import EventType, wait_reason
from tally.domain.recharge import DAY_MS, RechargePhase, RechargeRule
from tally.domain.results import Result
from tally.errors import LedgerError
from tally.ledger import sql_outbox
from tally.ledger.models import JournalLine
from tally.ledger.schema import (
    account_events,
    accounts,
    billing_freeze,
    credit_intents,
    recharge_rules,
    recharges,
    remediations,
    transfers,
)
from tally.ledger.sqlutil import chunks, insert_ignore, now_ms


class Transactions(Protocol):
    """What the recharge tables need of the ledger (``SqlLedger`` is one): typed here rather
    than imported, so this module does not depend on ``sql_ledger``, which depends on it."""

    def transaction(
        self, *, write: bool = False, snapshot: bool = False
    ) -> AbstractContextManager[Connection]: ...


PAGE_MAX = 1000
ERROR_LEN_MAX = 300
_SPENDING = [p.value for p in RechargePhase if p.may_have_charged] + [RechargePhase.intent.value]


@dataclass(frozen=True, slots=True)
class StoredRule:
    rule: RechargeRule
    autopay_enabled: bool
    consecutive_declines: int
    disabled_reason: str | None


@dataclass(frozen=True, slots=True)
class Recharge:
    id: str
    account_id: str
    phase: RechargePhase
    balance_at_open_minor: int
    currency: str
    opened_by: str | None
    claimed: bool  # holds the account's one in-flight slot (open_account_id)
    card_id: str | None
    amount_minor: int | None
    charge_id: str | None
    outcome_reason: str | None
    wait_reason: str | None
    attempts: int
    opened_at_ms: int
    updated_at_ms: int
    finished_at_ms: int | None

    @property
    def finished(self) -> bool:
        return self.finished_at_ms is not None


@dataclass(frozen=True, slots=True)
class FreezeState:
    frozen: bool
    reason: str
    actor: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class AccountEvent:
    account_id: str
    action: str
    cause: str
    recharge_id: str | None
    at_ms: int


def _recharge(row: Any) -> Recharge:
    return Recharge(
        id=row.id,
        account_id=row.account_id,
        phase=RechargePhase(row.phase),
        balance_at_open_minor=int(row.balance_at_open_minor),
        currency=row.currency,
        opened_by=row.opened_by,
        claimed=row.open_account_id is not None,
        card_id=row.card_id,
        amount_minor=None if row.amount_minor is None else int(row.amount_minor),
        charge_id=row.charge_id,
        outcome_reason=row.outcome_reason,
        wait_reason=row.wait_reason,
        attempts=int(row.attempts),
        opened_at_ms=int(row.opened_at_ms),
        updated_at_ms=int(row.updated_at_ms),
        finished_at_ms=None if row.finished_at_ms is None else int(row.finished_at_ms),
    )


def _rule(row: Any) -> StoredRule:
    rule = RechargeRule(
        account_id=row.account_id,
        card_id=row.card_id,
        threshold_minor=int(row.threshold_minor),
        daily_cap_minor=int(row.daily_cap_minor),
        declines_max=int(row.declines_max),
        target_minor=None if row.target_minor is None else int(row.target_minor),
        fixed_minor=None if row.fixed_minor is None else int(row.fixed_minor),
    )
    return StoredRule(
        rule, row.autopay == "enabled", int(row.consecutive_declines), row.disabled_reason
    )


# -- openings (called by the drainer inside its transaction) ------------------------------------
def record_openings(conn: Connection, lines: Sequence[JournalLine]) -> int:
    """Insert an ``opened`` recharge per journal line that opened one; a redelivery is a no-op."""
    ts = now_ms()
    rows = [
        {
            "id": line.recharge_id,
            "account_id": line.account_id,
            "open_account_id": None,
            "opened_by": line.transfer_id,
            "balance_at_open_minor": line.balance_after_minor or 0,
            "currency": line.currency,
            "phase": RechargePhase.opened.value,
            "attempts": 0,
            "opened_at_ms": line.ts_ms,
            "updated_at_ms": ts,
        }
        for line in lines
        if line.recharge_id is not None
    ]
    return len(insert_ignore(conn, recharges, rows, ["id"], returning=recharges.c.id))


def get_recharge(conn: Connection, recharge_id: str) -> Recharge | None:
    row = conn.execute(sa.select(recharges).where(recharges.c.id == recharge_id)).first()
    return None if row is None else _recharge(row)


def advance(
    conn: Connection,
    recharge_id: str,
    frm: Sequence[RechargePhase],
    to: RechargePhase,
    **values: Any,
) -> bool:
    """Compare-and-set the phase: a second worker on the same recharge changes nothing."""
    cols = recharges.c
    done = conn.execute(
        sa.update(recharges)
        .where(cols.id == recharge_id, cols.phase.in_([p.value for p in frm]))
        .values(phase=to.value, wait_reason=None, updated_at_ms=now_ms(), **values)
    )
    return done.rowcount == 1


def record_success(conn: Connection, rc: Recharge) -> bool:
    """credited -> succeeded, the rule's decline count back to zero, and ``recharge.succeeded``."""
    if not advance(conn, rc.id, [RechargePhase.credited], RechargePhase.succeeded):
        return False
    cond = recharge_rules.c.account_id == rc.account_id
    conn.execute(sa.update(recharge_rules).where(cond).values(consecutive_declines=0))
    _emit_outcome(conn, EventType.recharge_succeeded, rc, charge_id=rc.charge_id)
    return True


def record_refund(
    conn: Connection, rc: Recharge, frm: Sequence[RechargePhase], refused: str
) -> bool:
    """A charged recharge whose credit the account refused for good, its charge refunded:
    -> skipped (``refunded:<why>``) and ``recharge.refunded``, one transaction."""
    reason = f"refunded:{refused}"
    if not advance(conn, rc.id, frm, RechargePhase.skipped, outcome_reason=reason):
        return False
    _emit_outcome(conn, EventType.recharge_refunded, rc, charge_id=rc.charge_id, reason=refused)
    return True


def _emit_outcome(conn: Connection, type_: EventType, rc: Recharge, **extra: Any) -> None:
    """A recharge outcome's event (succeeded, failed, refunded), named by its decision."""
    data = {
        "recharge_id": rc.id,
        "account_id": rc.account_id,
        "amount_minor": rc.amount_minor,
        "currency": rc.currency,
        **extra,
    }
    sql_outbox.emit(conn, type_, data, account_id=rc.account_id, source=recharge_source(rc.id))


def recharge_source(recharge_id: str) -> str:
    """The outbox ``source`` of a recharge's outcome: one outcome event per recharge."""
    return f"recharge:{recharge_id}"


def account_event_source(event_id: int) -> str:
    return f"account_event:{event_id}"


ACCOUNT_EVENT_TYPES = {
    "suspended": EventType.account_suspended,
    "reinstated": EventType.account_reinstated,
}


def add_event(
    conn: Connection, account_id: str, action: str, cause: str, recharge_id: str | None
) -> int:
    """The account event and its outbox event, in the caller's transaction."""
    row = {
        "account_id": account_id,
        "action": action,
        "cause": cause,
        "recharge_id": recharge_id,
        "at_ms": now_ms(),
    }
    inserted = conn.execute(sa.insert(account_events).values(**row)).inserted_primary_key
    assert inserted is not None
    event_id = int(inserted[0])
    data = {"account_id": account_id, "cause": cause, "recharge_id": recharge_id}
    sql_outbox.emit(
        conn,
        ACCOUNT_EVENT_TYPES[action],
        data,
        account_id=account_id,
        source=account_event_source(event_id),
    )
    return event_id


def last_event(conn: Connection, account_id: str) -> AccountEvent | None:
    cols = account_events.c
    query = sa.select(account_events).where(cols.account_id == account_id)
    row = conn.execute(query.order_by(cols.id.desc()).limit(1)).first()
    if row is None:
        return None
    return AccountEvent(row.account_id, row.action, row.cause, row.recharge_id, int(row.at_ms))


class RechargeLedger:
    """The recharge tables of one ``SqlLedger``: every method is one transaction."""

    def __init__(self, ledger: Transactions) -> None:
        self.ledger = ledger

    # -- rules ---------------------------------------------------------------------------------
    def set_rule(self, rule: RechargeRule) -> Result:
        """Create or replace an account's rule; a new rule re-enables autopay."""
        if is_system_account_id(rule.account_id):
            return Result.account_not_found
        ts = now_ms()
        values = {
            "card_id": rule.card_id,
            "threshold_minor": rule.threshold_minor,
            "target_minor": rule.target_minor,
            "fixed_minor": rule.fixed_minor,
            "daily_cap_minor": rule.daily_cap_minor,
            "declines_max": rule.declines_max,
            "consecutive_declines": 0,
            "autopay": "enabled",
            "disabled_reason": None,
            "updated_at_ms": ts,
        }
        with self.ledger.transaction(write=True) as conn:
            found = conn.execute(sa.select(accounts.c.id).where(accounts.c.id == rule.account_id))
            if found.first() is None:
                return Result.account_not_found
            cond = recharge_rules.c.account_id == rule.account_id
            if conn.execute(sa.update(recharge_rules).where(cond).values(**values)).rowcount:
                return Result.ok
            row = {**values, "account_id": rule.account_id, "created_at_ms": ts}
            conn.execute(sa.insert(recharge_rules).values(**row))
            return Result.ok

    def get_rule(self, account_id: str) -> StoredRule | None:
        with self.ledger.transaction() as conn:
            cond = recharge_rules.c.account_id == account_id
            row = conn.execute(sa.select(recharge_rules).where(cond)).first()
            return None if row is None else _rule(row)

    def set_autopay(self, account_id: str, enabled: bool, reason: str | None = None) -> bool:
        with self.ledger.transaction(write=True) as conn:
            values: dict[str, Any] = {
                "autopay": "enabled" if enabled else "disabled",
                "disabled_reason": None if enabled else (reason or "operator"),
                "updated_at_ms": now_ms(),
            }
            if enabled:
                values["consecutive_declines"] = 0
            cond = recharge_rules.c.account_id == account_id
            return bool(
                conn.execute(sa.update(recharge_rules).where(cond).values(**values)).rowcount
            )

    def enabled_thresholds(self, *, after: str | None, limit: int) -> list[tuple[str, int]]:
        """(account, threshold) of rules with autopay on, by account id (for rebuild)."""
        cols = recharge_rules.c
        query = sa.select(cols.account_id, cols.threshold_minor).where(cols.autopay == "enabled")
        if after is not None:
            query = query.where(cols.account_id > after)
        query = query.order_by(cols.account_id).limit(min(limit, PAGE_MAX))
        with self.ledger.transaction() as conn:
            return [(r.account_id, int(r.threshold_minor)) for r in conn.execute(query)]

    # -- recharges -----------------------------------------------------------------------------
    def record_opening(self, line: JournalLine) -> bool:
        with self.ledger.transaction(write=True) as conn:
            return record_openings(conn, [line]) == 1

    def get(self, recharge_id: str) -> Recharge | None:
        with self.ledger.transaction() as conn:
            return get_recharge(conn, recharge_id)

    def unfinished(self, *, limit: int, older_than_ms: int | None = None) -> list[Recharge]:
        """Recharges the completer must drive on, least recently touched first."""
        query = sa.select(recharges).where(recharges.c.finished_at_ms.is_(None))
        if older_than_ms is not None:
            query = query.where(recharges.c.updated_at_ms <= now_ms() - older_than_ms)
        query = query.order_by(recharges.c.updated_at_ms, recharges.c.id)
        with self.ledger.transaction() as conn:
            return [_recharge(r) for r in conn.execute(query.limit(min(limit, PAGE_MAX)))]

    def unfinished_markers(self, *, after: str | None, limit: int) -> list[Recharge]:
        """Unfinished recharges in opening order (rebuild restores the newest per account)."""
        query = sa.select(recharges).where(recharges.c.finished_at_ms.is_(None))
        if after is not None:
            query = query.where(recharges.c.id > after)
        query = query.order_by(recharges.c.id).limit(min(limit, PAGE_MAX))
        with self.ledger.transaction() as conn:
            return [_recharge(r) for r in conn.execute(query)]

    def all_for_account(self, account_id: str, *, limit: int = PAGE_MAX) -> list[Recharge]:
        query = (
            sa.select(recharges)
            .where(recharges.c.account_id == account_id)
            .order_by(recharges.c.opened_at_ms, recharges.c.id)
            .limit(min(limit, PAGE_MAX))
        )
        with self.ledger.transaction() as conn:
            return [_recharge(r) for r in conn.execute(query)]

    def spent_since(self, account_id: str, since_ms: int, *, exclude: str) -> int:
        cols = recharges.c
        query = sa.select(sa.func.coalesce(sa.func.sum(cols.amount_minor), 0)).where(
            cols.account_id == account_id,
            cols.phase.in_(_SPENDING),
            cols.charged_at_ms >= since_ms,
            cols.id != exclude,
        )
        with self.ledger.transaction() as conn:
            return int(conn.execute(query).scalar_one())

    def spent_today(self, account_id: str, *, exclude: str) -> int:
        return self.spent_since(account_id, now_ms() - DAY_MS, exclude=exclude)

    def claim(self, rc: Recharge, card_id: str, amount_minor: int) -> bool:
        """opened -> intent: amount and card fixed, and the account's one in-flight slot taken.
        False when another recharge of the account holds the slot (this one waits)."""
        cols = recharges.c
        with self.ledger.transaction(write=True) as conn:
            holder = conn.execute(sa.select(cols.id).where(cols.open_account_id == rc.account_id))
            if holder.first() is not None:
                return False
            done = conn.execute(
                sa.update(recharges)
                .where(cols.id == rc.id, cols.phase == RechargePhase.opened.value)
                .values(
                    phase=RechargePhase.intent.value,
                    open_account_id=rc.account_id,
                    card_id=card_id,
                    amount_minor=amount_minor,
                    wait_reason=None,
                    updated_at_ms=now_ms(),
                    charged_at_ms=now_ms(),
                )
            )
            return done.rowcount == 1

    def advance(
        self, recharge_id: str, frm: Sequence[RechargePhase], to: RechargePhase, **values: Any
    ) -> bool:
        """Compare-and-set the phase: a second worker on the same recharge changes nothing."""
        with self.ledger.transaction(write=True) as conn:
            return advance(conn, recharge_id, frm, to, **values)

    def note(
        self,
        recharge_id: str,
        *,
        wait_reason: str | None = None,
        error: str | None = None,
        attempt: bool = False,
    ) -> None:
        """Why a recharge waits, or the last error; ``attempt``: a gateway call is about to go."""
        values: dict[str, Any] = {"updated_at_ms": now_ms(), "wait_reason": wait_reason}
        if error is not None:
            values["last_error"] = error[:ERROR_LEN_MAX]
        if attempt:
            values["attempts"] = recharges.c.attempts + 1
        cols = recharges.c
        with self.ledger.transaction(write=True) as conn:
            if wait_reason is not None:
                # A waiting episode starts when a recharge that was not waiting waits (the
                # compare-and-set on NULL); every later poll of the same wait only updates it.
                started = conn.execute(
                    sa.update(recharges)
                    .where(cols.id == recharge_id, cols.wait_reason.is_(None))
                    .values(**values)
                ).rowcount
                if started:
                    _waiting(conn, recharge_id, wait_reason)
                    return
            conn.execute(sa.update(recharges).where(cols.id == recharge_id).values(**values))

    def finish(self, recharge_id: str) -> bool:
        """The Redis marker is closed: release the account's slot; the recharge is done."""
        cols = recharges.c
        with self.ledger.transaction(write=True) as conn:
            done = conn.execute(
                sa.update(recharges)
                .where(cols.id == recharge_id, cols.finished_at_ms.is_(None))
                .values(open_account_id=None, finished_at_ms=now_ms(), updated_at_ms=now_ms())
            )
            return done.rowcount == 1

    def record_decline(
        self,
        rc: Recharge,
        reason: str,
        consecutive: int,
        disable: bool,
        frm: RechargePhase,
        *,
        suspend: bool = False,
    ) -> bool:
        """The decline, the rule's decline count and (when the policy says so) the suspension
        with its cause, in ONE transaction: the ledger first, Redis mirrors it afterwards."""
        cols = recharges.c
        ts = now_ms()
        with self.ledger.transaction(write=True) as conn:
            done = conn.execute(
                sa.update(recharges)
                .where(cols.id == rc.id, cols.phase == frm.value)
                .values(
                    phase=RechargePhase.declined.value,
                    outcome_reason=reason,
                    wait_reason=None,
                    updated_at_ms=ts,
                )
            )
            if done.rowcount != 1:
                return False
            values: dict[str, Any] = {"consecutive_declines": consecutive, "updated_at_ms": ts}
            if disable:
                values.update(
                    autopay="disabled", disabled_reason=f"{consecutive} declines: {reason}"
                )
            cond = recharge_rules.c.account_id == rc.account_id
            conn.execute(sa.update(recharge_rules).where(cond).values(**values))
            suspended = False
            if suspend:
                suspended = bool(
                    conn.execute(
                        sa.update(accounts)
                        .where(accounts.c.id == rc.account_id, accounts.c.status == "active")
                        .values(status="suspended", updated_at_ms=ts)
                    ).rowcount
                )
                add_event(conn, rc.account_id, "suspended", "funding_failure", rc.id)
            _emit_outcome(
                conn,
                EventType.recharge_failed,
                rc,
                reason=reason,
                consecutive_declines=consecutive,
                autopay_disabled=disable,
                account_suspended=suspended,
            )
            return True

    def record_refund(self, rc: Recharge, frm: Sequence[RechargePhase], refused: str) -> bool:
        """-> skipped with the refund as its outcome and ``recharge.refunded``, one transaction."""
        with self.ledger.transaction(write=True) as conn:
            return record_refund(conn, rc, frm, refused)

    def record_success(self, rc: Recharge) -> bool:
        """credited -> succeeded and the rule's decline count back to zero, one transaction."""
        with self.ledger.transaction(write=True) as conn:
            return record_success(conn, rc)

    def by_charge_ids(self, charge_ids: Sequence[str]) -> dict[str, Recharge]:
        found: dict[str, Recharge] = {}
        with self.ledger.transaction() as conn:
            for part in chunks(sorted(set(charge_ids))):
                for row in conn.execute(
                    sa.select(recharges).where(recharges.c.charge_id.in_(part))
                ):
                    found[row.charge_id] = _recharge(row)
        return found

    # -- freeze --------------------------------------------------------------------------------
    def set_freeze(self, frozen: bool, reason: str, actor: str = "operator") -> FreezeState:
        state = FreezeState(frozen, reason[:2000], actor[:80], now_ms())
        with self.ledger.transaction(write=True) as conn:
            inserted = conn.execute(
                sa.insert(billing_freeze).values(
                    frozen=state.frozen, reason=state.reason, actor=state.actor, at_ms=state.at_ms
                )
            ).inserted_primary_key
            assert inserted is not None
            kind = EventType.billing_frozen if frozen else EventType.billing_unfrozen
            data = {"reason": state.reason, "actor": state.actor}
            sql_outbox.emit(conn, kind, data, source=f"freeze:{int(inserted[0])}")
        return state

    def freeze_state(self) -> FreezeState:
        query = sa.select(billing_freeze).order_by(billing_freeze.c.id.desc()).limit(1)
        with self.ledger.transaction() as conn:
            row = conn.execute(query).first()
        if row is None:
            return FreezeState(False, "", "", 0)
        return FreezeState(bool(row.frozen), row.reason, row.actor, int(row.at_ms))

    # -- account events ------------------------------------------------------------------------
    def add_event(
        self, account_id: str, action: str, cause: str, recharge_id: str | None = None
    ) -> None:
        with self.ledger.transaction(write=True) as conn:
            add_event(conn, account_id, action, cause, recharge_id)

    def last_event(self, account_id: str) -> AccountEvent | None:
        with self.ledger.transaction() as conn:
            return last_event(conn, account_id)

    def event_for(self, recharge_id: str, action: str) -> bool:
        cols = account_events.c
        query = sa.select(cols.id).where(cols.recharge_id == recharge_id, cols.action == action)
        with self.ledger.transaction() as conn:
            return conn.execute(query.limit(1)).first() is not None

    def suspended_accounts(self, *, after: str | None, limit: int) -> list[str]:
        query = sa.select(accounts.c.id).where(accounts.c.status == "suspended")
        if after is not None:
            query = query.where(accounts.c.id > after)
        with self.ledger.transaction() as conn:
            rows = conn.execute(query.order_by(accounts.c.id).limit(min(limit, PAGE_MAX)))
            return [r.id for r in rows]

    # -- remediation ---------------------------------------------------------------------------
    def credited_ids(self, transfer_ids: Sequence[str]) -> set[str]:
        """Which ids are credits in the ledger: drained ok credits, or intents still pending."""
        found: set[str] = set()
        with self.ledger.transaction(snapshot=True) as conn:
            for part in chunks(sorted(set(transfer_ids))):
                t = transfers.c
                found.update(
                    conn.execute(
                        sa.select(t.id).where(
                            t.id.in_(part), t.kind == "credit", t.result == int(Result.ok)
                        )
                    ).scalars()
                )
                ci = credit_intents.c
                found.update(
                    conn.execute(
                        sa.select(ci.id).where(ci.id.in_(part), ci.state == "pending")
                    ).scalars()
                )
        return found

    def remediation_done(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        with self.ledger.transaction() as conn:
            for part in chunks(sorted(set(ids))):
                cols = remediations.c
                query = sa.select(cols.id).where(cols.id.in_(part), cols.state == "done")
                found.update(conn.execute(query).scalars())
        return found

    def remediation_states(self, ids: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        with self.ledger.transaction() as conn:
            for part in chunks(sorted(set(ids))):
                cols = remediations.c
                query = sa.select(cols.id, cols.state).where(cols.id.in_(part))
                found.update({r.id: r.state for r in conn.execute(query)})
        return found

    def record_remediation(
        self,
        action_id: str,
        kind: str,
        *,
        account_id: str | None,
        charge_id: str | None,
        amount_minor: int | None,
        currency: str | None,
        detail: str,
        done: bool,
    ) -> None:
        ts = now_ms()
        row = {
            "id": action_id,
            "kind": kind,
            "account_id": account_id,
            "charge_id": charge_id,
            "amount_minor": amount_minor,
            "currency": currency,
            "detail": detail,
            "state": "done" if done else "pending",
            "created_at_ms": ts,
            "updated_at_ms": ts,
        }
        with self.ledger.transaction(write=True) as conn:
            if not insert_ignore(conn, remediations, [row], ["id"], returning=remediations.c.id):
                conn.execute(
                    sa.update(remediations)
                    .where(remediations.c.id == action_id)
                    .values(state=row["state"], detail=detail, updated_at_ms=ts)
                )


def _waiting(conn: Connection, recharge_id: str, detail: str) -> None:
    rc = get_recharge(conn, recharge_id)
    if rc is None:
        return
    data = {
        "recharge_id": rc.id,
        "account_id": rc.account_id,
        "phase": rc.phase.value,
        "reason": wait_reason(detail).value,
        "detail": detail[:ERROR_LEN_MAX],
    }
    sql_outbox.emit(conn, EventType.recharge_waiting, data, account_id=rc.account_id)


def iter_pages(
    fetch: Any, key: Any, limit: int = PAGE_MAX, pages_max: int = 1_000_000
) -> Iterator[Any]:
    """Keyset pagination with a ceiling: ``fetch(after, limit)`` returns one page."""
    after = None
    for _ in range(pages_max):
        page = fetch(after, limit)
        yield from page
        if len(page) < limit:
            return
        after = key(page[-1])
    raise LedgerError("pagination did not end within its bound")
