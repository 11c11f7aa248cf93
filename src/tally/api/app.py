"""The FastAPI application: routes, error translation, body cap, metrics. ``create_app`` takes
an ``ApiContext`` that the composition root (``tally.service``) builds; nothing here opens
connections or starts processes."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from tally import __version__
from tally.api import problems
from tally.api.auth import KeyCache
from tally.api.context import ApiContext
from tally.api.hot import HotDebits
from tally.api.limits import BodyLimitMiddleware
from tally.api.metrics import ApiMetrics, MetricsMiddleware, ReadinessCollector
from tally.api.routes import accounts, admin, docs, health, holds, transfers
from tally.errors import TallyError

DESCRIPTION = """Prepaid balances, debits and credits over HTTP.

Send an API key as `Authorization: Bearer <key>` (or `X-API-Key`); `tally apikey create` makes
one. Errors are `application/problem+json` with a stable `code`; see each route for statuses.
Amounts are integers of minor units (cents): `amount_minor`.
"""


class TallyApp(FastAPI):
    """FastAPI, with the hot route (``api.hot``) answered before the middleware stack."""

    hot: HotDebits | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.hot is not None:
            scope["app"] = self  # as Starlette sets it: routes find the context through it
            await self.hot(scope, receive, send)
        else:
            await self.full(scope, receive, send)

    async def full(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Every request but the hot path's: FastAPI with every middleware."""
        await super().__call__(scope, receive, send)


def create_app(context: ApiContext) -> TallyApp:
    # /docs is ours (local assets, no CDN); ReDoc would load from a CDN, so there is none.
    app = TallyApp(
        title="tally", version=__version__, description=DESCRIPTION, docs_url=None, redoc_url=None
    )
    app.state.tally = context
    app.state.key_cache = KeyCache(context.key_cache_s)
    metrics = ApiMetrics()
    metrics.add(ReadinessCollector(context.readiness))
    for collector in context.collectors:
        metrics.add(collector)
    app.state.metrics = metrics
    for router in (health.router, accounts.router, transfers.router, holds.router, admin.router):
        app.include_router(router)
    docs.mount(app)
    for extension in context.extensions:
        for router in extension.routers():
            app.include_router(router)
        for collector in extension.collectors():
            metrics.add(collector)
    app.add_exception_handler(problems.Problem, problems.on_problem)
    app.add_exception_handler(TallyError, problems.on_tally_error)
    app.add_exception_handler(RequestValidationError, problems.on_validation_error)
    app.add_exception_handler(StarletteHTTPException, problems.on_http_exception)
    app.add_exception_handler(Exception, problems.on_unexpected)
    debit_route = next(r for r in transfers.router.routes if getattr(r, "name", None) == "debit")
    batch_route = next(
        r for r in transfers.router.routes if getattr(r, "name", None) == "debit_batch"
    )
    app.hot = HotDebits(
        app.full, context, app.state.key_cache, debit_route, metrics, batch_route=batch_route
    )
    app.add_middleware(BodyLimitMiddleware, body_bytes_max=context.body_bytes_max)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
