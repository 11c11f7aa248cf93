"""tally events list | webhook add/list/remove: the outbox and webhook endpoints, straight from
the ledger of record (no Redis needed). The delivery itself runs in ``tally serve``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from tally.cli.context import connection_options, settings_from
from tally.cli.output import EXIT_ERROR, EXIT_REFUSED, emit, handles_errors, json_option
from tally.domain.events import EndpointRefused, EventType
from tally.ledger import sql_outbox
from tally.ledger.sql_ledger import SqlLedger
from tally.ledger.sql_webhooks import WebhookBook


@contextmanager
def _ledger(conn: dict[str, str | None]) -> Iterator[SqlLedger]:
    settings = settings_from(conn.get("redis_url"), conn.get("ledger_url"), conn.get("home"))
    with SqlLedger.open(settings.ledger_url, migrate=False) as ledger:
        yield ledger


@click.group()
def events() -> None:
    """Events for dependents, from the outbox (the same events the webhooks deliver)."""


@events.command("list")
@click.option(
    "--after", default=0, type=click.IntRange(0, sql_outbox.CURSOR_MAX), help="Last cursor seen."
)
@click.option("--limit", default=100, type=click.IntRange(1, sql_outbox.PAGE_MAX))
@click.option("--type", "types", multiple=True, type=click.Choice([t.value for t in EventType]))
@connection_options
@json_option
@handles_errors
def list_events(
    after: int, limit: int, types: tuple[str, ...], as_json: bool, **conn: str | None
) -> None:
    with _ledger(conn) as ledger, ledger.transaction() as tx:
        page = sql_outbox.events_after(tx, after, limit, list(types) or None)
    items = [e.payload() for e in page]
    next_cursor = page[-1].cursor if page else after
    human = "\n".join(
        f"{e['cursor']:>8} {e['timestamp']} {e['type']:<20} {e['id']} "
        f"{json.dumps(e['data'], sort_keys=True)}"
        for e in items
    )
    emit(as_json, {"items": items, "next_cursor": next_cursor}, human or "no events")


@click.group()
def webhook() -> None:
    """Webhook endpoints: signed (Standard Webhooks) POSTs of every event."""


@webhook.command("add")
@click.argument("url")
@click.option("--type", "types", multiple=True, help="Only these event types (repeatable).")
@connection_options
@json_option
@handles_errors
def add(url: str, types: tuple[str, ...], as_json: bool, **conn: str | None) -> None:
    """Register URL; prints its signing secret (shown once)."""
    hosts = settings_from(
        conn.get("redis_url"), conn.get("ledger_url"), conn.get("home")
    ).webhook_hosts
    with _ledger(conn) as ledger:
        try:
            endpoint, secret = WebhookBook(ledger).register(url, list(types) or None, hosts=hosts)
        except EndpointRefused as exc:
            refused = {"error": exc.code, "message": str(exc.args[0])}
            emit(as_json, refused, f"error: {exc.code}: {exc.args[0]}")
            raise SystemExit(EXIT_ERROR) from None
    data: dict[str, Any] = {
        "id": endpoint.id,
        "url": endpoint.url,
        "event_types": list(types) or None,
        "secret": secret,
    }
    emit(as_json, data, f"{endpoint.id} {endpoint.url}\nsigning secret (shown once): {secret}")


@webhook.command("list")
@connection_options
@json_option
@handles_errors
def list_endpoints(as_json: bool, **conn: str | None) -> None:
    with _ledger(conn) as ledger:
        found = WebhookBook(ledger).active()
    items = [
        {"id": e.id, "url": e.url, "event_types": e.event_types, "created_at_ms": e.created_at_ms}
        for e in found
    ]
    human = "\n".join(f"{e.id} {e.url} {','.join(e.event_types or ('*',))}" for e in found)
    emit(as_json, {"items": items}, human or "no webhook endpoints")


@webhook.command("remove")
@click.argument("endpoint_id")
@connection_options
@json_option
@handles_errors
def remove(endpoint_id: str, as_json: bool, **conn: str | None) -> None:
    with _ledger(conn) as ledger:
        removed = WebhookBook(ledger).delete(endpoint_id)
    if not removed:
        data = {"error": "webhook_endpoint_not_found", "id": endpoint_id}
        emit(as_json, data, f"no webhook endpoint {endpoint_id!r}")
        raise SystemExit(EXIT_REFUSED)
    emit(as_json, {"id": endpoint_id, "removed": True}, f"removed {endpoint_id}")
