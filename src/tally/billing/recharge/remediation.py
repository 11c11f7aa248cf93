"""Remediation after an incident (F7): the gateway's own records against the ledger.

For each account (``metadata.account`` of its charges), succeeded and unrefunded charges in time
order are cut into *shortfall episodes*: an episode ends with the first charge whose credit is in
the ledger (a drained ok credit, or a credit intent still pending). Within an episode one charge
is the payment and every other one is a duplicate:

- the credited charge (if any) is the payment; every uncredited charge of the episode is a
  duplicate -> refund;
- an episode with no credited charge (the incident's tail): its first charge is the payment ->
  credit (or refund, with ``refund_uncredited``), the rest -> refund;
- a suspended account whose newest suspension is not tally's own funding-failure decision
  (legacy billing, or no recorded cause), or that this run credits -> reinstate.

Every action has a deterministic id (``rm-credit-<charge>``, ``rm-refund-<charge>``,
``rm-reinstate-<account>-<n>``) recorded in ``remediations``; refunds carry that id as their
gateway idempotency key and credits use the charge's own transfer id, so running ``--apply`` twice
changes nothing the second time. ``apply=False`` (dry run) only reports.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tally.billing.engine import Engine
from tally.domain.accounts import AccountStatus, SystemAccount
from tally.domain.ids import is_valid_id
from tally.errors import UsageError
from tally.gateway.port import Gateway, OutcomeStatus
from tally.gateway.records import Record
from tally.ledger.sql_recharge import PAGE_MAX, RechargeLedger, iter_pages

RECORDS_MAX = 10_000_000
FUNDING_CAUSE = "funding_failure"


@dataclass(frozen=True, slots=True)
class Action:
    id: str
    kind: str  # credit | refund | reinstate
    account_id: str
    charge_id: str | None
    amount_minor: int | None
    currency: str | None
    why: str
    transfer_id: str | None = None  # credits: the charge's own credit transfer id
    done: bool = False  # already applied by an earlier run


@dataclass
class RemediationReport:
    applied: bool
    charges_seen: int = 0
    charges_without_credit: int = 0
    duplicate_charges: int = 0
    wrongful_suspensions: int = 0
    charges_in_flight: int = 0  # their recharge saga is still running: left to it
    unattributed_charges: list[str] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def pending(self) -> list[Action]:
        return [a for a in self.actions if not a.done]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["pending_actions"] = len(self.pending)
        return out


def _credit_id(record: Record) -> str:
    """The transfer id a charge's credit uses: the one its biller named, else the key."""
    named = record.metadata.get("transfer_id", "")
    return named if is_valid_id(named) else record.idempotency_key


def _live_charges(records: Iterable[Record]) -> tuple[list[Record], int]:
    charges: dict[str, Record] = {}
    refunded: set[str] = set()
    for n, rec in enumerate(records):
        if n >= RECORDS_MAX:
            raise UsageError(f"more than {RECORDS_MAX} gateway records")
        if rec.kind == "charge" and rec.status == "succeeded":
            charges[rec.id] = rec
        elif rec.kind == "refund" and rec.status == "succeeded" and rec.charge_id:
            refunded.add(rec.charge_id)
    live = sorted((c for c in charges.values() if c.id not in refunded), key=lambda r: r.seq)
    return live, len(charges)


class Remediator:
    def __init__(
        self, engine: Engine, gateway: Gateway, *, refund_uncredited: bool = False
    ) -> None:
        self.engine, self.gateway = engine, gateway
        self.book: RechargeLedger = engine.ledger.recharges
        self.refund_uncredited = refund_uncredited

    def run(self, records: Iterable[Record], *, apply: bool) -> RemediationReport:
        live, seen = _live_charges(records)
        report = RemediationReport(applied=apply, charges_seen=seen)
        live = self._settled(live, report)
        by_account: dict[str, list[Record]] = defaultdict(list)
        for rec in live:
            account = rec.metadata.get("account", "")
            if is_valid_id(account):
                by_account[account].append(rec)
            else:
                report.unattributed_charges.append(rec.id)
        credited = self.book.credited_ids([_credit_id(r) for r in live])
        states = self.book.remediation_states([f"rm-refund-{r.id}" for r in live])
        credited_now: set[str] = set()
        for account_id, charges in sorted(by_account.items()):
            # A refund decided by an earlier run stays a refund (even if it failed then).
            decided = [r for r in charges if f"rm-refund-{r.id}" in states]
            open_charges = [r for r in charges if f"rm-refund-{r.id}" not in states]
            for rec in decided:
                report.actions.append(self._action("refund", account_id, rec, "decided earlier"))
            for action in self._charge_actions(account_id, open_charges, credited, report):
                report.actions.append(action)
                if action.kind == "credit":
                    credited_now.add(account_id)
        report.actions += self._reinstatements(credited_now, report)
        done = self.book.remediation_done([a.id for a in report.actions])  # applied before
        report.actions = [_with_done(a, a.id in done) for a in report.actions]
        if apply:
            for action in report.pending:
                self._apply(action, report)
        return report

    def _settled(self, live: list[Record], report: RemediationReport) -> list[Record]:
        """Charges whose recharge saga has not reached its outcome are the saga's (its completer
        credits or refunds them, under the same ids): judging them now would race it, and on a
        live deployment a charge between the gateway's answer and its credit is normal."""
        out = []
        for rec in live:
            key = rec.idempotency_key
            rc = self.book.get(key) if is_valid_id(key) else None
            if rc is not None and not rc.phase.is_outcome:
                report.charges_in_flight += 1
                continue
            out.append(rec)
        return out

    def _charge_actions(
        self,
        account_id: str,
        charges: Sequence[Record],
        credited: set[str],
        report: RemediationReport,
    ) -> list[Action]:
        actions: list[Action] = []
        episode: list[Record] = []
        for rec in [*charges, None]:
            if rec is not None:
                episode.append(rec)
                if _credit_id(rec) not in credited:
                    continue
            actions += self._episode(account_id, episode, credited, report)
            episode = []
        return actions

    def _episode(
        self,
        account_id: str,
        episode: Sequence[Record],
        credited: set[str],
        report: RemediationReport,
    ) -> list[Action]:
        if not episode:
            return []
        paid = next((r for r in episode if _credit_id(r) in credited), None)
        actions: list[Action] = []
        if paid is None:  # nothing of this shortfall reached the ledger
            paid = episode[0]
            report.charges_without_credit += 1
            kind = "refund" if self.refund_uncredited else "credit"
            actions.append(self._action(kind, account_id, paid, "charge without a credit"))
        for rec in episode:
            if rec is not paid:
                report.duplicate_charges += 1
                actions.append(
                    self._action(
                        "refund",
                        account_id,
                        rec,
                        f"duplicate charge for the shortfall paid by {paid.id}",
                    )
                )
        return actions

    def _action(self, kind: str, account_id: str, rec: Record, why: str) -> Action:
        return Action(
            f"rm-{kind}-{rec.id}"[:64],
            kind,
            account_id,
            rec.id,
            rec.amount_minor,
            rec.currency,
            why,
            _credit_id(rec) if kind == "credit" else None,
        )

    def _reinstatements(self, credited_now: set[str], report: RemediationReport) -> list[Action]:
        actions: list[Action] = []
        pages = iter_pages(
            lambda after, n: self.book.suspended_accounts(after=after, limit=n),
            lambda account_id: account_id,
            PAGE_MAX,
        )
        for account_id in pages:
            last = self.book.last_event(account_id)
            justified = (
                last is not None and last.action == "suspended" and last.cause == FUNDING_CAUSE
            )
            if justified and account_id not in credited_now:
                continue
            report.wrongful_suspensions += 1
            tag = f"{last.at_ms}" if last is not None else "0"
            why = f"suspended by {last.cause if last else 'an unknown cause'}"
            actions.append(
                Action(
                    f"rm-reinstate-{account_id}-{tag}"[:80],
                    "reinstate",
                    account_id,
                    None,
                    None,
                    None,
                    why,
                )
            )
        return actions

    def _apply(self, action: Action, report: RemediationReport) -> None:
        ok, detail = self._execute(action)
        self.book.record_remediation(
            action.id,
            action.kind,
            account_id=action.account_id,
            charge_id=action.charge_id,
            amount_minor=action.amount_minor,
            currency=action.currency,
            detail=f"{action.why}: {detail}",
            done=ok,
        )
        if not ok:
            report.failures.append(f"{action.id}: {detail}")

    def _execute(self, action: Action) -> tuple[bool, str]:
        if action.kind == "reinstate":
            # The status and its event (with the outbox event) in one transaction, then Redis.
            with self.engine.ledger.unit() as uow:
                uow.set_status(action.account_id, AccountStatus.active)
                uow.add_event(action.account_id, "reinstated", "remediation")
            self.engine.mirror_account(action.account_id)
            return True, "reinstated"
        assert action.charge_id is not None and action.amount_minor is not None
        if action.kind == "refund":
            refund = self.gateway.refund(action.id, action.charge_id, action.amount_minor)
            return (
                refund.status is OutcomeStatus.succeeded,
                f"refund {refund.status.value} {refund.refund_id or refund.detail}",
            )
        assert action.transfer_id is not None
        transfer_id, currency = action.transfer_id, action.currency or "USD"
        out = self.engine.credit(
            transfer_id,
            action.account_id,
            action.amount_minor,
            currency,
            SystemAccount.card_clearing,
            system=True,  # the recharge's own credit id (rc-…), or the operator's named one
        )
        if out.result is None:
            return True, f"credit {transfer_id} recorded, pending (store unavailable)"
        if out.result.is_replay_conflict:
            return False, f"credit {transfer_id} conflicts: {out.result.name}"
        return True, f"credit {transfer_id} {out.result.name}"


def _with_done(action: Action, done: bool) -> Action:
    return Action(
        action.id,
        action.kind,
        action.account_id,
        action.charge_id,
        action.amount_minor,
        action.currency,
        action.why,
        action.transfer_id,
        done,
    )
