"""Health without a key: ``/healthz`` (the process answers) and ``/readyz`` (it should get
traffic: store writable, epoch valid, drain and replication lag under bounds); metrics with one."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tally.api.auth import service_key
from tally.api.routes.common import ctx, mark
from tally.api.schemas import ReadinessOut

router = APIRouter(tags=["health"])


@router.get("/healthz", name="healthz")
def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    name="readyz",
    response_model=ReadinessOut,
    responses={503: {"model": ReadinessOut, "description": "not ready; reason names why"}},
)
def readyz(request: Request) -> JSONResponse:
    state = ctx(request).readiness()
    mark(request, "ready" if state.ready else (state.reason or "not_ready"))
    body = {
        "ready": state.ready,
        "reason": state.reason,
        "checks": {name: asdict(check) for name, check in state.checks.items()},
    }
    headers = {} if state.ready else {"Retry-After": "1"}
    return JSONResponse(body, status_code=200 if state.ready else 503, headers=headers)


@router.get("/metrics", name="metrics", dependencies=[Depends(service_key)])
def metrics(request: Request) -> Response:
    """Prometheus text format (any valid key; scrapers send it as a bearer token)."""
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
