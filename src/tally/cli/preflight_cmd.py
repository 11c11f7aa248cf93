"""``tally preflight``: check a redis.conf (before start) or a live node against the TP rules.

Exit status: 1 when any error-level rule fires, 0 otherwise, 2 on usage or setup errors.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

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
    has_errors,
)
from tally.ops.preflight.conf import parse_memory

EXIT_ERRORS, EXIT_USAGE = 1, 2


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
    "--write-rate",
    type=_Size(),
    default=PreflightParams.write_rate_bytes_s,
    show_default=True,
    help="Replication stream bytes per second (units ok: 2mb).",
)
@click.option(
    "--partition-s",
    type=click.FloatRange(0, 86_400),
    default=PreflightParams.partition_s,
    show_default=True,
    help="Longest partition that must end in a partial resync.",
)
@click.option(
    "--bandwidth",
    type=_Size(),
    default=PreflightParams.bandwidth_bytes_s,
    show_default=True,
    help="Slowest link, bytes per second (units ok: 10mb).",
)
@click.option(
    "--replicas",
    type=click.IntRange(0, 1000),
    default=PreflightParams.replicas_expected,
    show_default=True,
    help="Replicas the primary is expected to have.",
)
@click.option(
    "--dataset-bytes",
    type=_Size(),
    default=None,
    help="Dataset size (default: the RDB file size, or INFO used_memory).",
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
    write_rate: int,
    partition_s: float,
    bandwidth: int,
    replicas: int,
    dataset_bytes: int | None,
    redis_version: str | None,
    as_json: bool,
) -> None:
    """Check Redis settings against the incident-28 rules (TP001...)."""
    if (config_path is None) == (live_url is None):
        raise click.UsageError("give exactly one of --config FILE or --live URL")
    if live_url is not None and data_dir is not None:
        raise click.UsageError("--data-dir goes with --config; a live node reports its own dir")
    if bandwidth <= 0:
        raise click.BadParameter("must be positive", param_hint="--bandwidth")
    params = PreflightParams(
        write_rate, partition_s, bandwidth, replicas, dataset_bytes, _version(redis_version)
    )
    try:
        findings = _run(config_path, data_dir, live_url, role, params)
    except TallyError as exc:
        click.echo(f"preflight: {exc}", err=True)
        ctx.exit(EXIT_USAGE)
    _print(findings, as_json)
    ctx.exit(EXIT_ERRORS if has_errors(findings) else 0)


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
