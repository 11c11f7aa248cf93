"""tally gateway serve | export | faults: the payment gateway simulator (``tally.gateway``).

Fault knobs are ``--fault KNOB=VALUE`` (VALUE is JSON, or a bare word for strings), the same
names as ``POST /v1/admin/faults``: seed, latency_ms, decline_rate, card_decline_rates,
velocity_max_charges, velocity_window_s, timeout_after_commit, timeout_mode, timeout_delay_ms,
outage. Example: ``--fault velocity_max_charges=3 --fault 'card_decline_rates={"c1": 1.0}'``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from tally.cli.output import handles_errors
from tally.errors import UsageError
from tally.gateway.client import SimulatorAdmin
from tally.gateway.faults import Faults
from tally.gateway.records import export_jsonl, open_records, write_jsonl
from tally.gateway.server import serve as serve_simulator

FAULT_ITEMS_MAX = 32

fault_option = click.option(
    "--fault",
    "fault_items",
    multiple=True,
    metavar="KNOB=VALUE",
    help="Set a fault knob (repeatable); see `tally gateway --help`.",
)


def parse_fault_items(items: tuple[str, ...]) -> dict[str, Any]:
    if len(items) > FAULT_ITEMS_MAX:
        raise UsageError(f"at most {FAULT_ITEMS_MAX} --fault options")
    patch: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--fault takes KNOB=VALUE, got {item!r:.60}")
        try:
            patch[name.strip()] = json.loads(raw)
        except ValueError:
            patch[name.strip()] = raw  # a bare word such as timeout_mode=delay
    Faults().merged(patch)  # refuse unknown knobs and bad values before anything starts
    return patch


@click.group()
def gateway() -> None:
    """The payment gateway simulator: a Stripe-like HTTP API on loopback with its own records."""


@gateway.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="A loopback address.")
@click.option("--port", type=int, default=0, help="0: the kernel picks one (see simulator.json).")
@click.option("--data-dir", type=click.Path(path_type=Path), required=True)
@fault_option
@handles_errors
def serve(host: str, port: int, data_dir: Path, fault_items: tuple[str, ...]) -> None:
    """Run the simulator in the foreground until Ctrl-C / SIGTERM."""
    faults = Faults.from_dict(parse_fault_items(fault_items))
    serve_simulator(host, port, data_dir, faults)


@gateway.command()
@click.option("--data-dir", type=click.Path(path_type=Path), help="Read the records file.")
@click.option("--url", help="Or ask a running simulator, e.g. http://127.0.0.1:8099.")
@click.option("--out", type=click.Path(path_type=Path), help="JSONL file (default: stdout).")
@handles_errors
def export(data_dir: Path | None, url: str | None, out: Path | None) -> None:
    """Every charge and refund the simulator processed, as JSONL (the lab's gateway.jsonl)."""
    if (data_dir is None) == (url is None):
        raise UsageError("give exactly one of --data-dir and --url")
    if data_dir is not None and out is not None:
        count = export_jsonl(data_dir, out)
    elif data_dir is not None:
        count = _export_dir_to_stdout(data_dir)
    else:
        assert url is not None
        count = _export_url(url, out)
    click.echo(f"exported {count} records", err=True)


def _export_dir_to_stdout(data_dir: Path) -> int:
    with contextlib.closing(open_records(data_dir)) as store:
        return write_jsonl(store.iter_all(), sys.stdout)


def _export_url(url: str, out: Path | None) -> int:
    with SimulatorAdmin(url) as admin:
        if out is None:
            return write_jsonl(admin.iter_records(), sys.stdout)
        with open(out, "w", encoding="utf-8") as handle:
            return write_jsonl(admin.iter_records(), handle)


@gateway.command()
@click.option("--url", required=True, help="The running simulator, e.g. http://127.0.0.1:8099.")
@fault_option
@handles_errors
def faults(url: str, fault_items: tuple[str, ...]) -> None:
    """Show the simulator's fault knobs; with --fault, change them first."""
    with SimulatorAdmin(url) as admin:
        current = admin.set_faults(**parse_fault_items(fault_items)) if fault_items else None
        click.echo((current or admin.faults()).to_json())


if __name__ == "__main__":
    gateway()
