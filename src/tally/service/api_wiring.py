"""The API's parts, wired once for both ways ``tally serve`` serves, and served so they close.

``build_api`` makes the ``ApiContext`` (and the ``AsyncDebits`` behind its hot path) for the
single-process server (``Service``) and for every HTTP worker process (``http_workers``) alike:
two places wiring the same parts is how one of them stops matching the other. What differs
between the two is passed in (the recharge extension: the parent's own, or a worker's view of
the parent's export).

``serve_uvicorn`` runs uvicorn on a bound socket and, on the same event loop once uvicorn has
stopped, closes the async Redis pool (``AsyncDebits.close``): a pool left to the loop's end is
sockets left open to the primary, one set per worker and per restart.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

from tally.api import ApiContext
from tally.api.context import Extension
from tally.api.metrics import FailoverCollector
from tally.api.routes.events import EventsExtension
from tally.bootstrap import Deployment
from tally.ledger.sql_api_keys import ApiKeyStore
from tally.service.fast_debit import AsyncDebits
from tally.service.health import HealthProbe
from tally.service.operations import Operations


@dataclass
class ApiParts:
    context: ApiContext
    #: Owned by whoever serves the context: closed by ``serve_uvicorn`` (or ``aclose``).
    debits: AsyncDebits


def build_api(
    dep: Deployment,
    probe: HealthProbe,
    operations: Operations,
    recharge_extension: Extension,
    failovers: Any = None,  # a SwitchMasterListener, or None (no Sentinel)
) -> ApiParts:
    """The one place the API's context is wired (see the module docstring)."""
    debits = AsyncDebits(dep.engine)
    context = ApiContext(
        engine=dep.engine,
        ledger=dep.ledger,
        keys=ApiKeyStore(dep.ledger),
        readiness=probe,
        admin=operations,
        extensions=[recharge_extension, EventsExtension(dep.ledger)],
        async_debit=debits.debit,
        collectors=[FailoverCollector(failovers)] if failovers else [],
        webhook_hosts=dep.settings.webhook_hosts,
    )
    return ApiParts(context, debits)


def serve_uvicorn(
    server: uvicorn.Server,
    sock: socket.socket,
    debits: AsyncDebits,
    *,
    on_loop: Callable[[], None] | None = None,
) -> None:
    """``server.run(sockets=[sock])``, then ``debits.close()`` on the same loop (also when
    serving failed). ``on_loop`` runs first thing on the loop (tests use it)."""

    async def serve_then_close() -> None:
        try:
            if on_loop is not None:
                on_loop()
            await server.serve(sockets=[sock])
        finally:
            await debits.close()

    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        runner.run(serve_then_close())
