"""The ceiling for ``tally bench http``: a bare endpoint (Starlette, JSON POST -> 201 JSON, no
auth, no store) served by the same server stack and worker count as ``tally serve``.

    python -m tally.bench.bare --port P [--workers N] [--http httptools] [--loop uvloop]
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import click
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tally.service.http_protocol import http_impl as protocol
from tally.service.http_workers import die_with_parent, listening_sockets


async def _post(request: Request) -> Response:
    body = json.loads(await request.body())
    out = {"transfer_id": body.get("transfer_id"), "status": "ok", "result": "ok"}
    return Response(json.dumps(out), status_code=201, media_type="application/json")


async def _ready(_request: Request) -> Response:
    return Response(b'{"ready":true}', media_type="application/json")


app = Starlette(routes=[Route("/v1/debits", _post, methods=["POST"]), Route("/readyz", _ready)])


@click.command()
@click.option("--host", default="127.0.0.1")
@click.option("--port", type=int, required=True)
@click.option("--workers", type=click.IntRange(1, 64), default=1)
@click.option("--http", "http_impl", default="httptools")
@click.option("--loop", default="uvloop")
@click.option("--server", type=click.Choice(["uvicorn", "granian"]), default="uvicorn")
def main(host: str, port: int, workers: int, http_impl: str, loop: str, server: str) -> None:
    """Served the way ``tally serve`` serves: the sockets made by ``listening_sockets`` (one
    per process), one uvicorn server per process on its own; or, with granian, each process
    binds host:port itself (SO_REUSEPORT), as tally's granian workers do."""
    each: list[tuple[Callable[..., None], tuple[Any, ...]]]
    if server == "granian":
        each = [(_serve_granian, (host, port, loop))] * workers
    else:
        socks = listening_sockets(host, port, workers)
        each = [(_serve, (sock, http_impl, loop)) for sock in socks]
    if workers == 1:
        target, args = each[0]
        target(*args)
        return
    signal.signal(signal.SIGTERM, _interrupt)  # stop the children, not just this process
    ctx = multiprocessing.get_context("spawn")
    processes = [ctx.Process(target=t, args=(*a, os.getpid())) for t, a in each]
    for p in processes:
        p.start()
    try:
        for p in processes:
            p.join()
    except KeyboardInterrupt:
        pass
    finally:
        for p in processes:
            p.terminate()
            p.join(10)


def _interrupt(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _serve(sock: socket.socket, http_impl: str, loop: str, parent_pid: int = 0) -> None:
    if parent_pid:
        die_with_parent(parent_pid)
    config = uvicorn.Config(
        app,
        http=protocol(http_impl),
        loop=loop,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    uvicorn.Server(config).run(sockets=[sock])


def _serve_granian(host: str, port: int, loop: str, parent_pid: int = 0) -> None:
    if parent_pid:
        die_with_parent(parent_pid)
    from tally.service.api_wiring import serve_granian

    serve_granian(app, host, port, _NoDebits(), loop=loop)  # type: ignore[arg-type]


class _NoDebits:
    async def close(self) -> None:
        return None


if __name__ == "__main__":
    main()
