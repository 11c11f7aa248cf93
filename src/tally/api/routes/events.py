"""Events for dependents over HTTP: the pull API (``GET /v1/events?after=CURSOR``) and
per-account low-balance thresholds. Webhook endpoints are in ``routes/webhooks.py``; both are
installed by ``EventsExtension``.

Scopes: reading events and setting an account's alert take a service key (like the accounts
they are about); webhook endpoints are admin routes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from tally.api.auth import service_key
from tally.api.problems import Problem, refusal
from tally.api.routes.common import AccountId, ctx, mark, problems
from tally.api.routes.webhooks import router as webhooks_router
from tally.api.schemas import BalanceAlertIn, BalanceAlertOut, EventsPage
from tally.domain.events import EventType
from tally.domain.results import Result
from tally.ledger import sql_outbox
from tally.ledger.sql_ledger import SqlLedger
from tally.ledger.sql_webhooks import WebhookBook
from tally.ledger.sqlutil import now_ms

NAME = "events"
PAGE_MAX = sql_outbox.PAGE_MAX


@dataclass
class EventsExtension:
    """Installs the events and webhook routes and the delivery metrics (read from the ledger)."""

    ledger: SqlLedger
    name: str = NAME

    def routers(self) -> Sequence[APIRouter]:
        return [router, alerts_router, webhooks_router]

    def collectors(self) -> Sequence[Collector]:
        return [DeliveryCollector(self)]

    def account_fields(self, account_id: str) -> dict[str, Any]:
        return {}


router = APIRouter(prefix="/v1/events", tags=["events"], dependencies=[Depends(service_key)])


@router.get("", name="events_list", response_model=EventsPage, responses=problems())
def list_events(
    request: Request,
    after: Annotated[
        int, Query(ge=0, le=sql_outbox.CURSOR_MAX, description="the last cursor seen")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 100,
    type_: Annotated[
        list[EventType] | None, Query(alias="type", description="only these types")
    ] = None,
) -> dict[str, Any]:
    """Events in cursor order, after ``after``: a consumer that was down reads on from the
    last cursor it processed (at least once: dedupe on ``id``). The same events the webhooks
    deliver; cursors increase in commit order, so nothing appears behind a cursor later."""
    types = None if type_ is None else [t.value for t in type_]
    with ctx(request).ledger.transaction() as conn:
        page = sql_outbox.events_after(conn, after, limit, types)
    return {
        "items": [e.payload() for e in page],
        "next_cursor": page[-1].cursor if page else after,
    }


alerts_router = APIRouter(
    prefix="/v1/accounts", tags=["events"], dependencies=[Depends(service_key)]
)


@alerts_router.put(
    "/{account_id}/balance-alert",
    name="balance_alert_set",
    response_model=BalanceAlertOut,
    responses=problems(404),
)
def set_balance_alert(
    account_id: AccountId, body: BalanceAlertIn, request: Request
) -> dict[str, Any]:
    """Emit ``balance.low`` when the ledger balance falls below ``threshold_minor`` (once per
    crossing: it re-arms when the balance is back at or above the threshold). Checked as the
    drainer records debits, in the same transaction."""
    with ctx(request).ledger.transaction(write=True) as conn:
        if not sql_outbox.set_alert(conn, account_id, body.threshold_minor):
            raise refusal(Result.account_not_found, f"no account {account_id!r}")
    mark(request, "ok")
    return {"account_id": account_id, "threshold_minor": body.threshold_minor, "below": False}


@alerts_router.get(
    "/{account_id}/balance-alert",
    name="balance_alert_get",
    response_model=BalanceAlertOut,
    responses=problems(404),
)
def get_balance_alert(account_id: AccountId, request: Request) -> dict[str, Any]:
    with ctx(request).ledger.transaction() as conn:
        found = sql_outbox.get_alert(conn, account_id)
    if found is None:
        raise Problem(404, "balance_alert_not_found", f"no balance alert for {account_id!r}")
    return {"account_id": account_id, "threshold_minor": found[0], "below": found[1]}


@alerts_router.delete(
    "/{account_id}/balance-alert",
    name="balance_alert_delete",
    status_code=204,
    responses=problems(404),
)
def delete_balance_alert(account_id: AccountId, request: Request) -> None:
    with ctx(request).ledger.transaction(write=True) as conn:
        if sql_outbox.get_alert(conn, account_id) is None:
            raise Problem(404, "balance_alert_not_found", f"no balance alert for {account_id!r}")
        sql_outbox.set_alert(conn, account_id, None)
    mark(request, "ok")


class DeliveryCollector(Collector):
    """Webhook deliveries by state (dead = dead letters), attempts made, the oldest pending
    delivery's age, the outbox cursor; read from the ledger at scrape time, so every HTTP
    worker process reports the same numbers. A failing read leaves them out."""

    def __init__(self, ext: EventsExtension) -> None:
        self.ext = ext

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        try:
            stats = WebhookBook(self.ext.ledger).stats()
        except Exception:  # a scrape must not fail because the ledger is briefly unavailable
            return
        states = GaugeMetricFamily(
            "tally_webhook_deliveries", "webhook deliveries by state", labels=["state"]
        )
        for state in ("pending", "delivered", "dead"):
            states.add_metric([state], stats["by_state"].get(state, 0))
        yield states
        yield CounterMetricFamily(
            "tally_webhook_delivery_attempts", "webhook POSTs made", value=stats["attempts"]
        )
        oldest = stats["oldest_pending_ms"]
        yield GaugeMetricFamily(
            "tally_webhook_oldest_pending_age_seconds",
            "age of the oldest undelivered webhook delivery (0: none)",
            value=0 if oldest is None else max(0, now_ms() - oldest) / 1000,
        )
        yield GaugeMetricFamily(
            "tally_events_outbox_cursor", "the newest event's cursor", value=stats["cursor"]
        )

    def describe(self) -> list[Any]:
        return []
