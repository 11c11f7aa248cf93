"""tally bench debits | http | sustained | storm: measured throughput, and the F1 storm, on this machine."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import click

from tally.cli.output import handles_errors
from tally.domain.limits import DRAIN_WORKERS_DEFAULT, DRAIN_WORKERS_MAX

#: ``--drain-workers`` of the drain and sustained benches: TALLY_DRAIN_WORKERS's default and bound.
_drain_workers = click.option(
    "--drain-workers",
    default=DRAIN_WORKERS_DEFAULT,
    show_default=True,
    type=click.IntRange(1, DRAIN_WORKERS_MAX),
)


def _table(rows: dict[str, dict[str, Any]], columns: list[str]) -> str:
    header = ["path", *columns]
    lines = [header]
    for name, row in rows.items():
        lines.append([name, *(str(row.get(c, "")) for c in columns)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines
    )


@click.group()
def bench() -> None:
    """Benchmarks on this machine: tally's debit paths (library and HTTP) and the F1 storm."""


@bench.command("debits")
@click.option("--accounts", default=10_000, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option(
    "--batch-debits", default=300_000, show_default=True, type=click.IntRange(100, 10_000_000)
)
@click.option(
    "--single-debits", default=5_000, show_default=True, type=click.IntRange(1, 1_000_000)
)
@click.option(
    "--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test", show_default=True
)
@click.option("--no-postgres", is_flag=True, help="Skip the PostgreSQL peer.")
@click.option(
    "--cluster",
    "cluster",
    default=None,
    metavar="M1,M2,...",
    help="Instead: tally's batch path on a Redis Cluster of each many primaries, formed on "
    "loopback for the run and stopped after (e.g. 1,3); rows carry primaries, debits_per_s, "
    "CPU per process and what bounds the run.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@handles_errors
def debits(
    accounts: int,
    batch_debits: int,
    single_debits: int,
    postgres_url: str,
    no_postgres: bool,
    cluster: str | None,
    as_json: bool,
) -> None:
    """The library path: tally batch and single debits vs raw Redis vs a PostgreSQL peer; with
    --cluster, the batch path on Redis Clusters of M primaries, each M in one run."""
    from tally.bench.debits import BenchConfig, run, run_cluster

    cfg = BenchConfig(
        accounts=accounts,
        batch_debits=batch_debits,
        batch_size=min(BenchConfig.batch_size, batch_debits),
        single_debits=single_debits,
        raw_debits=batch_debits,
        postgres_url=None if no_postgres else postgres_url,
    )
    progress = lambda text: click.echo(f"... {text}", err=True)  # noqa: E731
    if cluster is not None:
        from tally.bench.cluster import parse_primaries

        result = run_cluster(cfg, parse_primaries(cluster), progress=progress)
        columns = ["primaries", "ids", "debits_per_s", "x_m1", "cpu_load", "cpu_redis", "bound"]
        shown = {
            name: {
                **row,
                "cpu_load": row["cpu_cores"]["load_process"],  # type: ignore[index]
                "cpu_redis": " ".join(map(str, row["cpu_cores"]["redis_primaries"])),  # type: ignore[index]
            }
            for name, row in result.rows.items()
        }
    else:
        result = run(cfg, progress=progress)
        columns = ["debits", "debits_per_s", "p50_us", "p99_us", "x_postgres_peer", "durability"]
        shown = result.rows
    if as_json:
        click.echo(json.dumps(result.to_json(), sort_keys=True))
        return
    click.echo(_table(shown, columns))


@bench.command("http")
@click.option(
    "--concurrency",
    "levels",
    default="64,1",
    show_default=True,
    help="Connections in flight, one single-debit phase each (comma-separated).",
)
@click.option("--seconds", default=8.0, show_default=True, type=click.FloatRange(1, 600))
@click.option("--accounts", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--batch-requests", default=40, show_default=True, type=click.IntRange(0, 10_000))
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="tally serve --workers (default: its default, the number of cores).",
)
@click.option(
    "--http",
    "http_impl",
    type=click.Choice(["httptools", "httptools-split", "h11"]),
    default="httptools",
)
@click.option("--loop", type=click.Choice(["uvloop", "asyncio"]), default="uvloop")
@click.option(
    "--generator",
    type=click.Choice(["auto", "native"]),
    default="auto",
    show_default=True,
    help="auto: wrk when on PATH; native: the multi-process generator.",
)
@click.option(
    "--seconds-max",
    default=60.0,
    show_default=True,
    type=click.FloatRange(1, 3600),
    help="Batch phase bound.",
)
@click.option(
    "--server",
    "servers",
    default="uvicorn",
    show_default=True,
    help="HTTP server(s) for tally and its ceiling, one run each, in this order "
    "(comma-separated: uvicorn,granian compares them in one run; granian needs the `bench` "
    "extra).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@handles_errors
def http(
    levels: str,
    seconds: float,
    accounts: int,
    batch_requests: int,
    workers: int | None,
    http_impl: str,
    loop: str,
    generator: str,
    seconds_max: float,
    servers: str,
    as_json: bool,
) -> None:
    """The HTTP path against a `tally serve` started for the run on loopback: POST /v1/debits at
    each concurrency, /v1/debits/batch, and the ceiling (a bare endpoint on the same server
    stack and worker count) with the same load generator; tally / ceiling in `of_bare`."""
    from tally.bench.http import HttpBenchConfig, run

    try:
        concurrency_levels = tuple(int(x) for x in levels.split(",") if x.strip())
    except ValueError as exc:
        raise click.BadParameter("give numbers, e.g. 64,1", param_hint="--concurrency") from exc
    from tally.service.api_wiring import SERVERS, require_server

    chosen = [x.strip() for x in servers.split(",") if x.strip()]
    if not chosen or any(x not in SERVERS for x in chosen):
        raise click.BadParameter(f"one or more of {', '.join(SERVERS)}", param_hint="--server")
    for name in chosen:
        require_server(name)  # ConfigError, with the hint, before anything starts
    runs = []
    for name in chosen:
        cfg = HttpBenchConfig(
            accounts=accounts,
            concurrency_levels=concurrency_levels,
            seconds=seconds,
            batch_requests=batch_requests,
            seconds_max=seconds_max,
            workers=workers,
            http=http_impl,
            loop=loop,
            generator=generator,
            server=name,
        )
        runs.append(run(cfg, progress=lambda text: click.echo(f"... {text}", err=True)))
    if as_json:
        click.echo(json.dumps(runs[0] if len(runs) == 1 else {"runs": runs}, sort_keys=True))
        return
    for data in runs:
        click.echo(data["server"])
        click.echo(
            _table(
                data["results"],
                [
                    "connections",
                    "per_s",
                    "of_bare",
                    "p50_ms",
                    "p99_ms",
                    "request_p99_ms",
                    "non_2xx",
                    "dropped",
                    "generator",
                    "cpu_us_total",
                    "cpu_us",
                ],
            )
        )


@bench.command("sustained")
@click.option(
    "--duration-s",
    default=180.0,
    show_default=True,
    type=click.FloatRange(5, 86_400),
    help="The run at the highest rate kept up with (the search steps come before it).",
)
@click.option(
    "--ledger-url",
    default=None,
    help="A PostgreSQL server (a database is created for the run and dropped); default: SQLite.",
)
@click.option("--accounts", default=2000, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--batch-size", default=5000, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--step-s", default=15.0, show_default=True, type=click.FloatRange(1, 3600))
@click.option("--ceiling-s", default=10.0, show_default=True, type=click.FloatRange(1, 3600))
@click.option("--lag-p99-s-max", default=5.0, show_default=True, type=click.FloatRange(0.1, 600))
@_drain_workers
@click.option(
    "--rate",
    default=None,
    type=click.FloatRange(1, 10_000_000),
    help="Offer this many transfers/s instead of searching (same rate before and after a change).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@handles_errors
def sustained(
    duration_s: float,
    ledger_url: str | None,
    accounts: int,
    batch_size: int,
    step_s: float,
    ceiling_s: float,
    lag_p99_s_max: float,
    drain_workers: int,
    rate: float | None,
    as_json: bool,
) -> None:
    """The store load and the deployment's own drainer together, at the highest offered rate
    whose drain lag p99 stays within the bound: transfers settled in the ledger per second,
    drain lag, journal length at the end, Redis memory per transfer, and the store-only
    ceiling of the same run (tally.bench.sustained)."""
    from tally.bench.sustained import SustainedConfig, run, summary_rows

    cfg = SustainedConfig(
        duration_s=duration_s,
        ledger_url=ledger_url,
        accounts=accounts,
        batch_size=batch_size,
        step_s=step_s,
        ceiling_s=ceiling_s,
        lag_p99_s_max=lag_p99_s_max,
        drain_workers=drain_workers,
        rate_per_s=rate,
    )
    data = run(cfg, progress=lambda text: click.echo(f"... {text}", err=True))
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
        return
    columns = [
        "transfers_per_s",
        "lag_p50_s",
        "lag_p99_s",
        "kept_up",
        "journal_end",
        "redis_B_per_transfer",
        "redis_B_per_live_record",
        "x_ceiling",
    ]
    click.echo(_table(summary_rows(data), columns))


@bench.command("drain")
@click.option(
    "--ledger-url",
    default=None,
    help="A PostgreSQL server (a database is created for the run and dropped); default: SQLite.",
)
@click.option("--transfers", default=200_000, show_default=True, type=click.IntRange(1, 5_000_000))
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1, 50))
@click.option("--accounts", default=2000, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--batch-size", default=5000, show_default=True, type=click.IntRange(1, 10_000))
@_drain_workers
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@handles_errors
def drain(
    ledger_url: str | None,
    transfers: int,
    rounds: int,
    accounts: int,
    batch_size: int,
    drain_workers: int,
    as_json: bool,
) -> None:
    """The deployment's drainer alone: per round the store takes TRANSFERS debits, then the
    drainer settles them into the ledger; transfers settled per second and where the time went
    (tally.bench.drain)."""
    from tally.bench.drain import DrainBenchConfig, run

    cfg = DrainBenchConfig(
        ledger_url=ledger_url,
        transfers=transfers,
        rounds=rounds,
        accounts=accounts,
        batch_size=batch_size,
        drain_workers=drain_workers,
    )
    data = run(cfg, progress=lambda text: click.echo(f"... {text}", err=True))
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
        return
    rows = {f"round {i + 1}": r for i, r in enumerate(data["rounds"])}
    columns = ["store_per_s", "drain_per_s", "drain_s", "read_s", "parse_s", "apply_s", "ack_s"]
    columns += ["drainer_cpu_s_per_100k", "ledger_cpu_s_per_100k"]
    click.echo(_table(rows, columns))


@bench.command("storm")
@click.option(
    "--topology",
    "topology_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="A topology file (e.g. examples/topology-3dc.toml); it runs in a temporary dir.",
)
@click.option(
    "--profile",
    "profiles",
    type=click.Choice(["2013", "hardened"]),
    multiple=True,
    help="Profiles to run, in order (default: both).",
)
@click.option("--partition-s", default=5.0, show_default=True, type=click.FloatRange(0.5, 600))
@click.option("--dataset-mb", default=20, show_default=True, type=click.IntRange(0, 10_000))
@click.option(
    "--write-rate",
    default=500,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Writes/s.",
)
@click.option("--value-bytes", default=200, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@handles_errors
def storm(
    topology_path: Path,
    profiles: tuple[str, ...],
    partition_s: float,
    dataset_mb: int,
    write_rate: int,
    value_bytes: int,
    as_json: bool,
) -> None:
    """F1 on real processes: partition every remote replica from the primary while writing,
    heal, and report full/partial syncs, time to all-in-sync and the primary's PING p99 during
    the resync against its baseline (tally.ops.storm)."""
    from tally.ops.storm import run_storm
    from tally.ops.topology import load_topology

    topology = load_topology(topology_path)
    rows: dict[str, dict[str, Any]] = {}
    for profile in profiles or ("2013", "hardened"):
        click.echo(f"... {profile}: partition {partition_s} s, {dataset_mb} MB dataset", err=True)
        with tempfile.TemporaryDirectory(prefix="tally-storm-") as base:
            result = run_storm(
                topology.with_base_dir(Path(base)),
                profile=profile,
                partition_s=partition_s,
                dataset_bytes=dataset_mb * 1_000_000,
                write_rate_per_s=write_rate,
                value_bytes=value_bytes,
            )
        rows[profile] = result.to_dict()
    if as_json:
        click.echo(json.dumps(rows, sort_keys=True))
        return
    columns = [
        "replicas_remote",
        "full_syncs",
        "partial_syncs",
        "seconds_to_in_sync",
        "primary_latency_ms_p99_baseline",
        "primary_latency_ms_p99_during_storm",
        "writes_failed",
    ]
    click.echo(_table(rows, columns))


if __name__ == "__main__":
    bench()
