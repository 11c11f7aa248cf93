"""Webhook endpoints (admin): register a URL (the answer carries its signing secret, once),
list, remove, and see an endpoint's deliveries (``?state=dead``: its dead letters).

Bad input is a 400 problem with a stable code and writes nothing: ``webhook_url_invalid`` (not
http(s), no host, credentials in it), ``webhook_secret_invalid`` (a caller-given secret that is
not ``whsec_`` + base64 of 24..64 bytes), ``event_types_invalid``; an unknown endpoint is 404
``webhook_endpoint_not_found``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from tally.api.auth import admin_key
from tally.api.problems import Problem
from tally.api.routes.common import ctx, mark, problems
from tally.api.schemas import (
    WebhookDeliveriesPage,
    WebhookEndpointIn,
    WebhookEndpointOut,
    WebhookEndpointsPage,
)
from tally.domain.events import EndpointRefused
from tally.ledger.sql_webhooks import Endpoint, WebhookBook

PAGE_MAX = 1000
ENDPOINT_ID_PATTERN = r"^we_[0-9a-f]{32}$"

EndpointId = Annotated[
    str, Path(min_length=35, max_length=35, pattern=ENDPOINT_ID_PATTERN, description="endpoint id")
]

router = APIRouter(
    prefix="/v1/webhook-endpoints",
    tags=["webhooks"],
    dependencies=[Depends(admin_key)],
    responses=problems(403),
)


def _book(request: Request) -> WebhookBook:
    return WebhookBook(ctx(request).ledger)


def endpoint_view(endpoint: Endpoint, *, secret: str | None = None) -> dict[str, Any]:
    return WebhookEndpointOut(
        id=endpoint.id,
        url=endpoint.url,
        event_types=None if endpoint.event_types is None else list(endpoint.event_types),
        created_at_ms=endpoint.created_at_ms,
        secret=secret,
    ).model_dump()


def _not_found(endpoint_id: str) -> Problem:
    return Problem(404, "webhook_endpoint_not_found", f"no webhook endpoint {endpoint_id!r}")


@router.post(
    "",
    name="webhook_endpoint_create",
    status_code=201,
    response_model=WebhookEndpointOut,
    responses=problems(),
)
def create_endpoint(body: WebhookEndpointIn, request: Request) -> JSONResponse:
    """Register an endpoint: it receives every event emitted from now on (or only
    ``event_types``), signed per Standard Webhooks with the ``secret`` in this answer (shown
    once; it is never listed again). Past events: ``GET /v1/events``."""
    try:
        endpoint, secret = _book(request).register(
            body.url, body.event_types, body.secret, hosts=ctx(request).webhook_hosts
        )
    except EndpointRefused as exc:
        raise Problem(400, exc.code, str(exc.args[0])) from None
    mark(request, "ok")
    return JSONResponse(endpoint_view(endpoint, secret=secret), status_code=201)


@router.get("", name="webhook_endpoint_list", response_model=WebhookEndpointsPage)
def list_endpoints(request: Request) -> dict[str, Any]:
    """The registered endpoints (without their secrets)."""
    return {"items": [endpoint_view(e) for e in _book(request).active()]}


@router.get(
    "/{endpoint_id}",
    name="webhook_endpoint_get",
    response_model=WebhookEndpointOut,
    responses=problems(404),
)
def get_endpoint(endpoint_id: EndpointId, request: Request) -> dict[str, Any]:
    found = _book(request).get(endpoint_id)
    if found is None:
        raise _not_found(endpoint_id)
    return endpoint_view(found)


@router.delete(
    "/{endpoint_id}",
    name="webhook_endpoint_delete",
    status_code=204,
    responses=problems(404),
)
def delete_endpoint(endpoint_id: EndpointId, request: Request) -> None:
    """Stop delivering to it (its delivery history stays). A second delete is 404."""
    if not _book(request).delete(endpoint_id):
        raise _not_found(endpoint_id)
    mark(request, "ok")


@router.get(
    "/{endpoint_id}/deliveries",
    name="webhook_deliveries",
    response_model=WebhookDeliveriesPage,
    responses=problems(404),
)
def list_deliveries(
    endpoint_id: EndpointId,
    request: Request,
    state: Annotated[Literal["pending", "delivered", "dead"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 100,
) -> dict[str, Any]:
    """The endpoint's deliveries in event order; ``state=dead`` lists its dead letters."""
    book = _book(request)
    if book.get(endpoint_id) is None:
        raise _not_found(endpoint_id)
    items = [
        {
            "id": d.id,
            "event_cursor": d.event_seq,
            "state": d.state,
            "attempts": d.attempts,
            "next_attempt_at_ms": d.next_attempt_at_ms,
            "last_status": d.last_status,
            "last_error": d.last_error,
        }
        for d in book.deliveries(endpoint_id, state=state, limit=limit)
    ]
    return {"items": items}
