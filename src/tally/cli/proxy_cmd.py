"""``tally proxy``: run the fault proxy daemon and steer it (see ``tally.ops.faultproxy``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tally.errors import TallyError
from tally.ops.faultproxy import (
    DEFAULT_CONTROL_PORT,
    ProxyControl,
    ProxyHub,
    load_config,
    load_fronts,
    serve,
)

_control_port = click.option(
    "--control-port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_CONTROL_PORT,
    envvar="TALLY_PROXY_CONTROL_PORT",
    show_default=True,
    help="Loopback port of the proxy's control API.",
)


class _Failure(click.ClickException):
    exit_code = 2  # tally's CLI contract: 2 = usage or infrastructure error


def _fail(exc: TallyError) -> click.ClickException:
    return _Failure(str(exc))


@click.group(name="proxy")
def proxy() -> None:
    """Fault proxy between simulated data centers: partitions, latency, bandwidth, resets."""


@proxy.command(name="serve")
@click.option(
    "--config", "config_path", type=click.Path(exists=True, path_type=Path), required=True
)
@click.option(
    "--control-port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_CONTROL_PORT,
    show_default=True,
    help="0 picks a free port (see --ready-file).",
)
@click.option(
    "--ready-file",
    type=click.Path(path_type=Path),
    default=None,
    help="Written (atomically) with pid, control port and links once listening.",
)
def serve_cmd(config_path: Path, control_port: int, ready_file: Path | None) -> None:
    """Run the links (and fronts) of CONFIG until SIGTERM/SIGINT."""
    try:
        hub = ProxyHub(load_config(config_path), fronts=load_fronts(config_path))
        serve(hub, control_port, ready_file)
    except TallyError as exc:
        raise _fail(exc) from exc


@proxy.command(name="fault")
@click.argument("link")
@click.argument(
    "kind", type=click.Choice(["partition", "latency", "bandwidth", "reset", "slow_close"])
)
@click.option(
    "--direction",
    type=click.Choice(["upstream", "downstream", "both"]),
    default="both",
    show_default=True,
)
@click.option(
    "--mode",
    type=click.Choice(["drop", "refuse"]),
    default=None,
    help="partition: drop (blackhole) or refuse (connections fail).",
)
@click.option("--latency-ms", type=click.IntRange(0), default=None)
@click.option("--jitter-ms", type=click.IntRange(0), default=None)
@click.option(
    "--rate",
    "rate_bytes_s",
    type=click.IntRange(1),
    default=None,
    help="bandwidth: bytes per second.",
)
@click.option("--delay-ms", type=click.IntRange(0), default=None, help="slow_close delay.")
@_control_port
def fault_cmd(link: str, kind: str, direction: str, control_port: int, **given: Any) -> None:
    """Inject a fault on LINK."""
    params = {key: value for key, value in given.items() if value is not None}
    try:
        with ProxyControl(control_port) as control:
            control.set_fault(link, direction, kind, **params)
    except TallyError as exc:
        raise _fail(exc) from exc
    click.echo(f"{link}: {kind} {direction} {params or ''}".rstrip())


@proxy.command(name="clear")
@click.argument("link")
@click.option("--kind", default=None, help="Clear only this kind of fault.")
@click.option(
    "--direction",
    type=click.Choice(["upstream", "downstream", "both"]),
    default="both",
    show_default=True,
)
@_control_port
def clear_cmd(link: str, kind: str | None, direction: str, control_port: int) -> None:
    """Clear faults on LINK (all of them unless --kind)."""
    try:
        with ProxyControl(control_port) as control:
            control.clear(link, kind, direction)
    except TallyError as exc:
        raise _fail(exc) from exc
    click.echo(f"{link}: cleared {kind or 'all faults'} ({direction})")


@proxy.command(name="status")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON status.")
@_control_port
def status_cmd(as_json: bool, control_port: int) -> None:
    """Links (and routes), their faults and byte counts; fronts and their routing."""
    try:
        with ProxyControl(control_port) as control:
            links, fronts = control.status(), control.fronts()
    except TallyError as exc:
        raise _fail(exc) from exc
    if as_json:
        click.echo(json.dumps({"links": links, "fronts": fronts}, indent=2, sort_keys=True))
        return
    for name, info in fronts.items():
        routes = ", ".join(f"{src}->{route}" for src, route in sorted(info["routes"].items()))
        click.echo(
            f"front {name}  {info['listen'][0]}:{info['listen'][1]}  "
            f"routes: {routes or 'none'}; others->{info['default']}"
        )
    for name, info in links.items():
        stats, faults = info["stats"], {k: v for k, v in info["faults"].items() if v}
        listen = f"{info['listen'][0]}:{info['listen'][1]}" if info["listen"] else "(via front)"
        click.echo(
            f"{name}  {listen} -> "
            f"{info['upstream'][0]}:{info['upstream'][1]}  up={stats['bytes_upstream']}B "
            f"down={stats['bytes_downstream']}B open={stats['connections_open']}  "
            f"faults={json.dumps(faults) if faults else 'none'}"
        )


if __name__ == "__main__":
    proxy()
