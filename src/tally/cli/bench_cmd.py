"""tally bench debits | http: measured throughput on this machine."""

from __future__ import annotations

import json
from typing import Any

import click


def _table(rows: dict[str, dict[str, Any]], columns: list[str]) -> str:
    header = ["path", *columns]
    lines = [header]
    for name, row in rows.items():
        lines.append([name, *(str(row.get(c, "")) for c in columns)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines)


@click.group()
def bench() -> None:
    """Benchmarks of tally's debit paths (library and HTTP) on this machine."""


@bench.command("debits")
@click.option("--accounts", default=10_000, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--batch-debits", default=300_000, show_default=True, type=click.IntRange(1000, 10_000_000))
@click.option("--single-debits", default=5_000, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test", show_default=True)
@click.option("--no-postgres", is_flag=True, help="Skip the PostgreSQL peer.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def debits(accounts: int, batch_debits: int, single_debits: int, postgres_url: str, no_postgres: bool, as_json: bool) -> None:
    """The library path: tally batch and single debits vs raw Redis vs a PostgreSQL peer."""
    from tally.bench.debits import BenchConfig, run

    cfg = BenchConfig(
        accounts=accounts,
        batch_debits=batch_debits,
        single_debits=single_debits,
        raw_debits=batch_debits,
        postgres_url=None if no_postgres else postgres_url,
    )
    result = run(cfg, progress=lambda text: click.echo(f"... {text}", err=True))
    data = result.to_json()
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
        return
    click.echo(_table(result.rows, ["debits", "debits_per_s", "p50_us", "p99_us", "x_postgres_peer", "durability"]))


@bench.command("http")
@click.option("--debits", "count", default=20_000, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--concurrency", default=32, show_default=True, type=click.IntRange(1, 1024))
@click.option("--accounts", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--batch-requests", default=20, show_default=True, type=click.IntRange(0, 10_000))
@click.option("--seconds-max", default=60.0, show_default=True, type=click.FloatRange(1, 3600), help="Per phase.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def http(count: int, concurrency: int, accounts: int, batch_requests: int, seconds_max: float, as_json: bool) -> None:
    """The HTTP path: POST /v1/debits at a stated concurrency, and /v1/debits/batch, against a
    `tally serve` started for the run on loopback."""
    from tally.bench.http import HttpBenchConfig, run

    cfg = HttpBenchConfig(
        accounts=accounts,
        debits=count,
        concurrency=concurrency,
        batch_requests=batch_requests,
        seconds_max=seconds_max,
    )
    data = run(cfg, progress=lambda text: click.echo(f"... {text}", err=True))
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
        return
    click.echo(_table(data["results"], ["debits", "concurrency", "debits_per_s", "p50_ms", "p99_ms", "request_p99_ms"]))


if __name__ == "__main__":
    bench()
