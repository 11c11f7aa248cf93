"""The recharge extension: an account's recharge rule, its recharges, the billing freeze and
remediation over HTTP, plus their metrics. Thin: every route calls ``RechargeService``, the
freeze switch or ``Remediator``; the rules live there.

Scopes: rules and recharges take a service key; freeze and remediation are admin routes (and
remediation only reports unless the body says ``{"apply": true}``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from tally.api.auth import admin_key, service_key
from tally.api.problems import Problem, refusal
from tally.api.routes.common import AccountId, ctx, mark, problems
from tally.api.schemas import (
    ID_PATTERN,
    FreezeIn,
    FreezeOut,
    RechargeOut,
    RechargeRuleIn,
    RechargeRuleOut,
    RechargesPage,
    RemediateIn,
)
from tally.billing.recharge import Circuit, GateMetrics, RechargeService
from tally.billing.recharge.remediation import Remediator
from tally.domain.limits import ID_LEN_MAX
from tally.domain.recharge import RechargeRule
from tally.domain.results import Result
from tally.gateway.port import Gateway
from tally.gateway.records import Record
from tally.ledger.sql_recharge import FreezeState, Recharge, StoredRule

PAGE_MAX = 1000
NAME = "recharge"

RechargeId = Annotated[
    str, Path(min_length=1, max_length=ID_LEN_MAX, pattern=ID_PATTERN, description="recharge id")
]


@dataclass
class RechargeExtension:
    """What the composition root hands the API: the service (with its saga), the gate's circuit
    and metrics, and the gateway with its records (None: no gateway, remediation refused)."""

    service: RechargeService
    circuit: Circuit | None = None
    gate_metrics: GateMetrics | None = None
    gateway: Gateway | None = None
    records: Callable[[], Iterable[Record]] | None = None
    gate_reason: Callable[[], str | None] | None = None
    name: str = NAME

    def routers(self) -> Sequence[APIRouter]:
        return [accounts_router, recharges_router, admin_router]

    def collectors(self) -> Sequence[Collector]:
        return [RechargeCollector(self)]

    def account_fields(self, account_id: str) -> dict[str, Any]:
        stored = self.service.rule(account_id)
        open_rc = self.service.open_recharge(account_id)
        return {
            "recharge": {
                "rule": None if stored is None else rule_view(stored),
                "open_recharge": None if open_rc is None else recharge_view(open_rc),
            }
        }


def _ext(request: Request) -> RechargeExtension:
    for ext in ctx(request).extensions:
        if isinstance(ext, RechargeExtension):
            return ext
    raise Problem(404, "not_found", "auto-recharge is not installed")


def rule_view(stored: StoredRule) -> dict[str, Any]:
    r = stored.rule
    return RechargeRuleOut(
        account_id=r.account_id,
        card_id=r.card_id,
        threshold_minor=r.threshold_minor,
        target_minor=r.target_minor,
        fixed_minor=r.fixed_minor,
        daily_cap_minor=r.daily_cap_minor,
        declines_max=r.declines_max,
        autopay=stored.autopay_enabled,
        consecutive_declines=stored.consecutive_declines,
        disabled_reason=stored.disabled_reason,
    ).model_dump()


def recharge_view(rc: Recharge) -> dict[str, Any]:
    return RechargeOut(
        id=rc.id,
        account_id=rc.account_id,
        phase=rc.phase.value,
        finished=rc.finished,
        currency=rc.currency,
        amount_minor=rc.amount_minor,
        card_id=rc.card_id,
        charge_id=rc.charge_id,
        attempts=rc.attempts,
        balance_at_open_minor=rc.balance_at_open_minor,
        wait_reason=rc.wait_reason,
        outcome_reason=rc.outcome_reason,
        opened_at_ms=rc.opened_at_ms,
        updated_at_ms=rc.updated_at_ms,
        finished_at_ms=rc.finished_at_ms,
    ).model_dump()


def freeze_view(state: FreezeState) -> dict[str, Any]:
    return FreezeOut(
        frozen=state.frozen, reason=state.reason, actor=state.actor, at_ms=state.at_ms
    ).model_dump()


def _account_exists(request: Request, account_id: str) -> None:
    if ctx(request).ledger.get_account(account_id) is None:
        raise refusal(Result.account_not_found, f"no account {account_id!r}")


# -- rules ---------------------------------------------------------------------------------------
accounts_router = APIRouter(
    prefix="/v1/accounts", tags=["recharge"], dependencies=[Depends(service_key)]
)


@accounts_router.put(
    "/{account_id}/recharge-rule",
    name="recharge_rule_set",
    response_model=RechargeRuleOut,
    responses=problems(404),
)
def set_rule(account_id: AccountId, body: RechargeRuleIn, request: Request) -> dict[str, Any]:
    """Give the account a card and a recharge rule (replaces one, re-enables autopay). A debit
    that takes the balance below ``threshold_minor`` opens one recharge: the card is charged
    ``fixed_minor``, or up to ``target_minor``, at most ``daily_cap_minor`` a day."""
    service = _ext(request).service
    rule = RechargeRule(
        account_id,
        body.card_id,
        body.threshold_minor,
        body.daily_cap_minor,
        body.declines_max,
        target_minor=body.target_minor,
        fixed_minor=body.fixed_minor,
    )
    result = service.set_rule(rule)
    if result is not Result.ok:
        raise refusal(result, f"no account {account_id!r}")
    mark(request, "ok")
    stored = service.rule(account_id)
    assert stored is not None
    return rule_view(stored)


@accounts_router.get(
    "/{account_id}/recharge-rule",
    name="recharge_rule_get",
    response_model=RechargeRuleOut,
    responses=problems(404),
)
def get_rule(account_id: AccountId, request: Request) -> dict[str, Any]:
    """The account's recharge rule, with autopay state and consecutive declines."""
    _account_exists(request, account_id)
    stored = _ext(request).service.rule(account_id)
    if stored is None:
        raise Problem(404, "no_recharge_rule", f"account {account_id!r} has no recharge rule")
    return rule_view(stored)


@accounts_router.delete(
    "/{account_id}/recharge-rule",
    name="recharge_rule_delete",
    response_model=RechargeRuleOut,
    responses=problems(404),
)
def delete_rule(account_id: AccountId, request: Request) -> dict[str, Any]:
    """Turn autopay off (idempotent). The rule is kept, disabled, as the record; a PUT turns it
    on again. A recharge already charging finishes; none opens after this."""
    _account_exists(request, account_id)
    service = _ext(request).service
    stored = service.rule(account_id)
    if stored is None:
        raise Problem(404, "no_recharge_rule", f"account {account_id!r} has no recharge rule")
    if stored.autopay_enabled:
        service.remove_rule(account_id)
        stored = service.rule(account_id)
        assert stored is not None
    mark(request, "ok")
    return rule_view(stored)


# -- recharges -----------------------------------------------------------------------------------
recharges_router = APIRouter(
    prefix="/v1/recharges", tags=["recharge"], dependencies=[Depends(service_key)]
)


@recharges_router.get("", name="recharge_list", response_model=RechargesPage, responses=problems())
def list_recharges(
    request: Request,
    account: Annotated[
        str | None, Query(min_length=1, max_length=ID_LEN_MAX, pattern=ID_PATTERN)
    ] = None,
    after: Annotated[
        str | None, Query(min_length=1, max_length=ID_LEN_MAX, description="next_cursor")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 100,
) -> dict[str, Any]:
    """Recharges in opening order, optionally of one account, a page at a time."""
    page = _ext(request).service.page(account_id=account, after=after, limit=limit)
    return {
        "items": [recharge_view(rc) for rc in page],
        "next_cursor": page[-1].id if len(page) == limit else None,
    }


@recharges_router.get(
    "/{recharge_id}", name="recharge_get", response_model=RechargeOut, responses=problems(404)
)
def get_recharge(recharge_id: RechargeId, request: Request) -> dict[str, Any]:
    """One recharge: its phase (recovery point), amount, charge and why it waits, if it does."""
    found = _ext(request).service.get(recharge_id)
    if found is None:
        raise Problem(404, "recharge_not_found", f"no recharge {recharge_id!r}")
    return recharge_view(found)


# -- admin: freeze and remediation ---------------------------------------------------------------
admin_router = APIRouter(
    prefix="/v1/admin", tags=["admin"], dependencies=[Depends(admin_key)], responses=problems(403)
)


@admin_router.get("/freeze", name="freeze_get", response_model=FreezeOut, responses=problems())
def get_freeze(request: Request) -> dict[str, Any]:
    """The billing freeze switch: while on, no card is charged (recharges wait)."""
    return freeze_view(_ext(request).service.freeze_state())


@admin_router.post("/freeze", name="freeze_set", response_model=FreezeOut, responses=problems())
def set_freeze(body: FreezeIn, request: Request) -> dict[str, Any]:
    """Freeze all card charging (``on``: true, with a reason) or resume it (``on``: false)."""
    service = _ext(request).service
    actor = f"apikey:{getattr(request.state, 'api_key_id', '?')}"
    if body.on:
        state = service.freeze(body.reason, actor)
    else:
        state = service.unfreeze(body.reason or "resumed", actor)
    mark(request, "ok")
    return freeze_view(state)


@admin_router.post("/remediate", name="admin_remediate", responses=problems(503))
def remediate(request: Request, body: RemediateIn | None = None) -> dict[str, Any]:
    """Compare the gateway's records with the ledger: charges without credit, duplicate charges,
    wrongful suspensions. A dry run (the default) only reports; ``{"apply": true}`` acts, and
    running it twice changes nothing the second time."""
    ext = _ext(request)
    if ext.gateway is None or ext.records is None:
        raise Problem(503, "gateway_unavailable", "tally runs without a gateway")
    apply = body is not None and body.apply
    refund = body is not None and body.refund_uncredited
    remediator = Remediator(ext.service.engine, ext.gateway, refund_uncredited=refund)
    report = remediator.run(ext.records(), apply=apply)
    mark(request, "failures" if report.failures else "ok")
    return report.to_json()


# -- metrics -------------------------------------------------------------------------------------
class RechargeCollector(Collector):
    """Recharges by phase (all and unfinished), freeze state, gate and circuit state with the
    reason, and the gate's wait counts by reason. Read at scrape time; a failing read leaves
    its metric out rather than failing the scrape."""

    def __init__(self, ext: RechargeExtension) -> None:
        self.ext = ext

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield from self._recharges()
        yield from self._freeze()
        yield from self._gate()

    def _recharges(self) -> Iterator[GaugeMetricFamily]:
        try:
            counts = self.ext.service.count_by_phase()
        except Exception:  # a scrape must not fail because the ledger is briefly unavailable
            return
        total = GaugeMetricFamily("tally_recharges", "recharges by phase", labels=["phase"])
        open_ = GaugeMetricFamily(
            "tally_recharges_unfinished", "unfinished recharges by phase", labels=["phase"]
        )
        for phase, (n, unfinished) in sorted(counts.items()):
            total.add_metric([phase], float(n))
            open_.add_metric([phase], float(unfinished))
        yield total
        yield open_

    def _freeze(self) -> Iterator[GaugeMetricFamily]:
        try:
            state = self.ext.service.freeze_state()
        except Exception:
            return
        frozen = GaugeMetricFamily(
            "tally_billing_frozen", "1 while the billing freeze is on", labels=["reason"]
        )
        frozen.add_metric(
            [state.reason[:100] if state.frozen else ""], 1.0 if state.frozen else 0.0
        )
        yield frozen

    def _gate(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        circuit = self.ext.circuit
        if circuit is not None:
            blocked = circuit.blocked()
            state = (
                "closed" if circuit.opened_at_s is None else ("open" if blocked else "half_open")
            )
            gauge = GaugeMetricFamily(
                "tally_recharge_circuit_open",
                "1 while the gateway circuit is open",
                labels=["state"],
            )
            gauge.add_metric([state], 1.0 if blocked else 0.0)
            yield gauge
            yield GaugeMetricFamily(
                "tally_recharge_circuit_failures",
                "consecutive gateway failures",
                value=float(circuit.failures),
            )
        if self.ext.gate_reason is not None:
            try:
                reason = self.ext.gate_reason()
            except Exception:
                reason = "unknown: the gate could not be read"
            gate = GaugeMetricFamily(
                "tally_recharge_gate_open",
                "1 while recharges may charge cards; the reason when not",
                labels=["reason"],
            )
            gate.add_metric([_code(reason)], 0.0 if reason else 1.0)
            yield gate
        if self.ext.gate_metrics is not None:
            waits = CounterMetricFamily(
                "tally_recharge_waits", "recharge waits by reason", labels=["reason"]
            )
            for why, n in sorted(self.ext.gate_metrics.waits.items()):
                waits.add_metric([why], float(n))
            yield waits

    def describe(self) -> list[Any]:
        return []  # collected lazily


def _code(reason: str | None) -> str:
    """The reason's code (``frozen``, ``store_epoch_invalid``, ``circuit_open``...)."""
    if not reason:
        return ""
    return "+".join(part.split(":", 1)[0].strip() for part in reason.split(";"))[:100]
