"""``tally preflight``: check a redis.conf (before start) or a live node against the TP rules.

Exit status: 1 when any error-level rule fires, 0 otherwise, 2 on usage or setup errors.

The sizing flags kept their names; each states one ``ProfileParams`` figure (the help names it):
--write-rate is write_rate_bytes_per_s, --partition-s partition_s_max, --bandwidth
slowest_link_bytes_per_s, --dataset-bytes dataset_bytes_max (it was the measured dataset: the
RDB file or used_memory still counts when larger), --safety-factor (new) safety_factor.
``--topology FILE`` takes them all from a topology file's [params], links and nodes; alone
(no --config, no --live) it checks the topology's placement rules (TP013).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tally.errors import TallyError
from tally.ops.preflight import (
    Finding,
    PreflightParams,
    check_config_file,
    check_live,
    check_topology,
    has_errors,
)
from tally.ops.preflight.conf import parse_memory
from tally.ops.preflight.rules import LINK_ASSUMED_BYTES_PER_S
from tally.ops.profiles import ProfileParams
from tally.ops.topology import load_topology

EXIT_ERRORS, EXIT_USAGE = 1, 2
_SIZING = ProfileParams()
F = TypeVar("F", bound=Callable[..., Any])


class _Size(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    name = "size"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_memory(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a size like 1048576, 64kb, 10mb or 1gb", param, ctx)


def _version(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        major, minor = (int(part) for part in text.split(".")[:2])
    except ValueError as exc:
        raise click.BadParameter(
            f"{text!r} is not MAJOR.MINOR", param_hint="--redis-version"
        ) from exc
    return major, minor


def _print(findings: list[Finding], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([f.to_dict() for f in findings], indent=2))
        return
    for f in findings:
        click.echo(f"{f.rule_id} {f.severity.value:<7} {f.title}")
        click.echo(f"    {f.detail}")
        click.echo(f"    fix: {f.fix}")
    errors = sum(f.severity.value == "error" for f in findings)
    click.echo(f"{len(findings)} finding(s), {errors} error(s)")


def _figure(
    flag: str, field: str, kind: click.ParamType[Any], what: str, *, default: str | None = None
) -> Callable[[F], F]:
    """A flag stating one ``ProfileParams`` figure; its value arrives under the field's name."""
    shown = default or f"the topology's [params], else {getattr(_SIZING, field)}"
    return click.option(
        flag, field, type=kind, default=None, help=f"params.{field}: {what} [default: {shown}]."
    )


@click.command(name="preflight")
@click.option(
    "--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the node keeps dump.rdb and the AOF (default: the file's dir).",
)
@click.option(
    "--live", "live_url", default=None, help="Check a running node, e.g. redis://127.0.0.1:6380"
)
@click.option(
    "--role",
    type=click.Choice(["primary", "replica"]),
    default="primary",
    show_default=True,
    help="What the node is meant to be.",
)
@click.option(
    "--topology",
    "topology_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Take the sizing figures from this topology file: its [params] (the figures its "
    "profile was sized from), its slowest link and its replica count. Flags below override.",
)
@_figure("--write-rate", "write_rate_bytes_per_s", _Size(), "replication stream (units ok: 2mb)")
@_figure(
    "--partition-s",
    "partition_s_max",
    click.FloatRange(0, 86_400, min_open=True),
    "longest partition that must end in a partial resync",
)
@_figure(
    "--safety-factor",
    "safety_factor",
    click.FloatRange(1, 1000),
    "the margin the profile sizes with; short of it is a warning",
)
@_figure(
    "--bandwidth",
    "slowest_link_bytes_per_s",
    _Size(),
    "slowest link, bytes per second (units ok: 10mb)",
    default=f"the topology's [params] or slowest link, else {LINK_ASSUMED_BYTES_PER_S}",
)
@click.option(
    "--latency-ms",
    "link_latency_ms",
    type=click.IntRange(0, 10_000),
    default=None,
    help="One-way latency of the slowest link between data centers, for cluster nodes' "
    "cluster-node-timeout (TP012) [default: the topology's, "
    f"else {PreflightParams.link_latency_ms_max}].",
)
@click.option(
    "--replicas",
    type=click.IntRange(0, 1000),
    default=None,
    help="Replicas the primary is expected to have "
    f"[default: the topology's, else {PreflightParams.replicas_expected}].",
)
@_figure(
    "--dataset-bytes",
    "dataset_bytes_max",
    _Size(),
    "largest dataset a full sync moves; the RDB file or INFO used_memory counts when larger",
)
@click.option(
    "--redis-version",
    default=None,
    help="MAJOR.MINOR the node will run (default: the redis-server tally finds).",
)
@click.option("--json", "as_json", is_flag=True, help="Findings as a JSON list.")
@click.pass_context
def preflight(
    ctx: click.Context,
    config_path: Path | None,
    data_dir: Path | None,
    live_url: str | None,
    role: str,
    topology_path: Path | None,
    write_rate_bytes_per_s: int | None,
    partition_s_max: float | None,
    safety_factor: float | None,
    slowest_link_bytes_per_s: int | None,
    link_latency_ms: int | None,
    replicas: int | None,
    dataset_bytes_max: int | None,
    redis_version: str | None,
    as_json: bool,
) -> None:
    """Check Redis settings against the incident-28 rules (TP001...).

    TP004 and TP005 use the hardened profile's formulas and figures (tally.ops.profiles):
    --topology takes them from a topology file, the flags state or override them."""
    if config_path is None and live_url is None and topology_path is not None:
        _topology_only(ctx, topology_path, as_json)
        return
    if (config_path is None) == (live_url is None):
        raise click.UsageError(
            "give exactly one of --config FILE or --live URL (or --topology FILE alone)"
        )
    if live_url is not None and data_dir is not None:
        raise click.UsageError("--data-dir goes with --config; a live node reports its own dir")
    if slowest_link_bytes_per_s is not None and slowest_link_bytes_per_s <= 0:
        raise click.BadParameter("must be positive", param_hint="--bandwidth")
    stated = {
        "write_rate_bytes_per_s": write_rate_bytes_per_s,
        "partition_s_max": partition_s_max,
        "safety_factor": safety_factor,
        "slowest_link_bytes_per_s": slowest_link_bytes_per_s,
        "dataset_bytes_max": dataset_bytes_max,
    }
    try:
        params = _params(topology_path, stated, replicas, _version(redis_version))
        if link_latency_ms is not None:
            params = dataclasses.replace(params, link_latency_ms_max=link_latency_ms)
        findings = _run(config_path, data_dir, live_url, role, params)
    except TallyError as exc:
        click.echo(f"preflight: {exc}", err=True)
        ctx.exit(EXIT_USAGE)
    _print(findings, as_json)
    ctx.exit(EXIT_ERRORS if has_errors(findings) else 0)


def _topology_only(ctx: click.Context, topology_path: Path, as_json: bool) -> None:
    try:
        findings = check_topology(load_topology(topology_path))
    except TallyError as exc:
        click.echo(f"preflight: {exc}", err=True)
        ctx.exit(EXIT_USAGE)
    _print(findings, as_json)
    ctx.exit(EXIT_ERRORS if has_errors(findings) else 0)


def _params(
    topology_path: Path | None,
    stated: dict[str, Any],
    replicas: int | None,
    redis_version: tuple[int, int] | None,
) -> PreflightParams:
    """The topology's figures (or the defaults) with what the flags state on top; a figure
    ProfileParams refuses raises ConfigError (exit 2)."""
    base = PreflightParams()
    if topology_path is not None:
        base = PreflightParams.for_topology(load_topology(topology_path))
    given = {name: value for name, value in stated.items() if value is not None}
    return dataclasses.replace(
        base,
        sizing=dataclasses.replace(base.sizing, **given),
        replicas_expected=base.replicas_expected if replicas is None else replicas,
        redis_version=redis_version,
    )


def _run(
    config_path: Path | None,
    data_dir: Path | None,
    live_url: str | None,
    role: str,
    params: PreflightParams,
) -> list[Finding]:
    if config_path is not None:
        return check_config_file(config_path, role=role, params=params, data_dir=data_dir)
    assert live_url is not None
    client = redis.Redis.from_url(
        live_url, socket_timeout=5.0, socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 0)
    )
    with contextlib.closing(client):
        return check_live(client, role=role, params=params)


if __name__ == "__main__":
    preflight()
