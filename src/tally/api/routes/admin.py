"""Admin operations (admin keys only): reconcile, rebuild, drain. The recharge extension adds
freeze on/off and remediation here once it is installed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from tally.api.auth import admin_key
from tally.api.routes.common import ctx, mark, problems
from tally.api.schemas import RebuildIn

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    dependencies=[Depends(admin_key)],
    responses=problems(403),
)


@router.post("/reconcile", name="admin_reconcile")
def reconcile(request: Request) -> dict[str, Any]:
    """Every store balance against the ledger (exact, while writes continue)."""
    report = ctx(request).admin.reconcile()
    mark(request, "ok" if report.get("ok") else "drift")
    return report


@router.post("/rebuild", name="admin_rebuild")
def rebuild(request: Request, body: RebuildIn | None = None) -> dict[str, Any]:
    """Restore an empty (with ``force``: foreign) store from the ledger under a new epoch, then
    re-apply credits the lost store held but the journal had not settled. ``shard`` (a Redis
    Cluster): that logical shard only, under a new epoch of its own; the others keep serving."""
    body = body if body is not None else RebuildIn()
    report = ctx(request).admin.rebuild(force=body.force, shard=body.shard)
    mark(request, "ok")
    return report


@router.post("/drain", name="admin_drain")
def drain(request: Request) -> dict[str, Any]:
    """Drain the journal into the ledger now (the background drainer does this continuously)."""
    report = ctx(request).admin.drain()
    mark(request, "ok")
    return report
