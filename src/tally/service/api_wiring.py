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
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

from tally.api import ApiContext
from tally.api.context import Extension
from tally.api.metrics import FailoverCollector
from tally.api.routes.events import EventsExtension
from tally.bootstrap import Deployment
from tally.errors import ConfigError
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
        async_credit=debits.credit,
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


SERVERS = ("uvicorn", "granian")


def granian_available() -> bool:
    try:
        import granian  # noqa: F401
    except ImportError:
        return False
    return True


def require_server(name: str) -> None:
    """A clear error when the chosen HTTP server cannot run here."""
    if name not in SERVERS:
        raise ConfigError(f"unknown HTTP server {name!r}", hint=f"one of: {', '.join(SERVERS)}")
    if name == "granian" and not granian_available():
        raise ConfigError(
            "granian is not installed",
            hint="install the optional benchmark extra: `uv sync --extra bench`",
        )


def serve_granian(
    app: Any,
    host: str,
    port: int,
    debits: AsyncDebits,
    *,
    loop: str = "uvloop",
    on_server: Callable[[Any], None] | None = None,
) -> None:
    """Serve ``app`` with granian's embedded server (one Rust HTTP worker on this process's
    event loop) until SIGINT/SIGTERM, then close ``debits`` on the same loop.

    Granian binds its listener itself; on Linux it sets SO_REUSEPORT, so N worker processes
    each serving this way share the port (the kernel spreads connections over them) the way
    they share ``listening_socket`` under uvicorn. ``ASGINL``: no lifespan, as with uvicorn's
    ``lifespan="off"``. On SIGTERM granian stops accepting and lets in-flight requests finish.
    """
    import signal

    from granian.constants import Interfaces
    from granian.server.embed import Server

    async def serve_then_close() -> None:
        server = Server(
            app,
            address=host,
            port=port,
            interface=Interfaces.ASGINL,
            log_enabled=False,
            backlog=2048,
        )
        running = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        here = threading.current_thread() is threading.main_thread()  # signals: main thread only
        previous = {sig: signal.getsignal(sig) for sig in signals} if here else {}
        for sig in previous:
            running.add_signal_handler(sig, server.stop)
        try:
            if on_server is not None:
                on_server(server)
            await server.serve()
        finally:
            for sig, handler in previous.items():  # back to the caller's (a soft one, while
                running.remove_signal_handler(sig)  # the deployment stops and drains)
                signal.signal(sig, handler)
            await debits.close()

    factory: Any = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve_then_close())
