"""tally serve: the embedded deployment and the HTTP API, in one command."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import NoReturn

import click

from tally.cli.output import handles_errors
from tally.service.runner import ServeOptions, Service

SERVE_STATE = "serve.json"
SWITCH_INTERVAL_S = 0.0005


def bind_outgoing(address: str) -> None:
    """Every outgoing IPv4 TCP connection this process makes from now on is bound to
    ``address`` first (port chosen by the kernel): redis-py, Sentinel discovery, httpx and
    asyncio all connect through ``socket.socket.connect``; a socket already bound is left as
    it is. An address this host does not have is refused here, before anything starts."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
    except OSError as exc:
        raise click.UsageError(f"--source-address {address}: cannot bind it ({exc})") from exc
    original = socket.socket.connect
    original_ex = socket.socket.connect_ex

    def _bind(sock: socket.socket) -> None:
        stream = sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
        if stream and sock.getsockname()[1] == 0:
            sock.bind((address, 0))

    def connect(self: socket.socket, target: object) -> None:
        _bind(self)
        original(self, target)  # type: ignore[arg-type]

    def connect_ex(self: socket.socket, target: object) -> int:
        _bind(self)
        return original_ex(self, target)  # type: ignore[arg-type]

    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]


def _interrupt(_sig: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt


@click.command()
@click.option("--home", envvar="TALLY_HOME", help="State dir (default ./.tally).")
@click.option(
    "--host", envvar="TALLY_HOST", default="127.0.0.1", show_default=True, help="Listen address."
)
@click.option(
    "--port", envvar="TALLY_PORT", default=8080, show_default=True, type=click.IntRange(1, 65535)
)
@click.option(
    "--redis-url", envvar="TALLY_REDIS_URL", help="A real Redis primary (default: embedded)."
)
@click.option(
    "--redis-sentinel", help="sentinel://h:p,h:p/MASTER: find the primary through Sentinel."
)
@click.option("--ledger-url", envvar="TALLY_LEDGER_URL", help="sqlite:///... or postgresql://...")
@click.option(
    "--gateway-url",
    envvar="TALLY_GATEWAY_URL",
    help="The payment gateway (default: the simulator, dev mode).",
)
@click.option("--no-gateway", is_flag=True, help="Start no gateway simulator.")
@click.option(
    "--rebuild",
    "rebuild_if_lost",
    is_flag=True,
    help="Rebuild an empty store from the ledger before serving.",
)
@click.option("--skip-preflight", is_flag=True, help="Do not refuse on preflight errors.")
@click.option(
    "--http",
    type=click.Choice(["httptools", "httptools-split", "h11"]),
    default="httptools",
    show_default=True,
    help="HTTP/1.1 parser (httptools measured fastest, with a response in one write; "
    "httptools-split: uvicorn's own two writes; h11 is pure Python).",
)
@click.option(
    "--loop",
    type=click.Choice(["uvloop", "asyncio"]),
    default="uvloop",
    show_default=True,
    help="Event loop.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="HTTP worker processes on the one port (default: the number of cores). Background "
    "work (drainer, credit applier, recharge completer, embedded Redis) runs once.",
)
@click.option(
    "--server",
    type=click.Choice(["uvicorn", "granian"]),
    default="uvicorn",
    show_default=True,
    help="HTTP server (uvicorn measured fastest with tally's routes; granian needs the "
    "`bench` extra).",
)
@click.option(
    "--source-address",
    envvar="TALLY_SOURCE_ADDRESS",
    help="Local IPv4 address every outgoing TCP connection of this process (Redis, Sentinel, "
    "the gateway) is made from: a multi-homed host whose firewall or fault proxy tells clients "
    "apart by source address. Needs --loop asyncio and --workers 1 (uvloop and worker "
    "processes open their own sockets).",
)
@handles_errors
def serve(
    home: str | None,
    host: str,
    port: int,
    redis_url: str | None,
    redis_sentinel: str | None,
    ledger_url: str | None,
    gateway_url: str | None,
    no_gateway: bool,
    rebuild_if_lost: bool,
    skip_preflight: bool,
    http: str,
    loop: str,
    workers: int | None,
    server: str,
    source_address: str | None,
) -> None:
    """Run tally: the HTTP API on HOST:PORT over an embedded deployment in $TALLY_HOME (a local
    redis-server, the SQLite ledger, the drainer, the gateway simulator), or over real
    infrastructure with --redis-url/--redis-sentinel, --ledger-url and --gateway-url.

    The first start initialises the deployment and prints an admin API key. Ctrl-C or SIGTERM
    stops accepting, finishes in-flight requests, drains the journal and stops everything."""
    if redis_url and redis_sentinel:
        raise click.UsageError("give --redis-url or --redis-sentinel, not both")
    from tally.service.api_wiring import require_server

    require_server(server)  # granian is an optional extra: say so before anything starts
    if source_address is not None:
        if loop != "asyncio" or server != "uvicorn" or (workers or os.cpu_count() or 1) != 1:
            raise click.UsageError(
                "--source-address needs --server uvicorn --loop asyncio --workers 1"
            )
        bind_outgoing(source_address)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    signal.signal(signal.SIGTERM, _interrupt)  # during start-up: unwind and stop what started
    # Request threads wait on sockets and hand the GIL back and forth with the drainer thread:
    # the default 5 ms switch interval made every such handoff a 5 ms stall (measured: single
    # debits at 32 in flight went from ~150/s to the figures in `tally bench http`).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    base = Path(home or os.environ.get("TALLY_HOME") or ".tally")
    options = ServeOptions(
        home=base,
        host=host,
        port=port,
        redis_url=redis_sentinel or redis_url,
        ledger_url=ledger_url,
        gateway_url=gateway_url,
        no_gateway=no_gateway,
        rebuild_if_lost=rebuild_if_lost,
        preflight=not skip_preflight,
        http=http,
        loop=loop,
        workers=workers or os.cpu_count() or 1,
        server=server,
    )

    def say(text: str) -> None:
        click.echo(text)
        sys.stdout.flush()

    service = Service(options, say=say)
    state_path = base / SERVE_STATE
    try:
        service.start()
    except KeyboardInterrupt:
        say("interrupted during start-up; stopped")
        sys.exit(2)

    def listening() -> None:
        state_path.write_text(json.dumps({"url": service.url, "pid": os.getpid()}))

    try:
        service.serve(on_listening=listening)
    finally:
        say("stopping: in-flight requests done; draining the journal")
        summary = service.stop()
        state_path.unlink(missing_ok=True)
        say(f"stopped ({', '.join(f'{k}={v}' for k, v in summary.items())})")


if (
    __name__ == "__main__"
):  # `python -m tally.cli.serve_cmd`: serve alone, without the other commands
    serve()
