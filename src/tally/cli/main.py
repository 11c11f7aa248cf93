"""``tally``: the command line entry point. Commands live in the modules beside this one and are
imported only when run (``tally --help`` must not import FastAPI, SQLAlchemy and the lab)."""

from __future__ import annotations

import importlib

import click

from tally import __version__

#: name -> (module, attribute, one-line help shown by ``tally --help``)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": (
        "tally.cli.serve_cmd",
        "serve",
        "Run tally: embedded deployment + HTTP API (or real infra).",
    ),
    "demo": ("tally.cli.demo_cmd", "demo", "A guided tour, incident #28's AOF defect included."),
    "account": (
        "tally.cli.transfers_cmd",
        "account",
        "Create accounts; suspend, reinstate, close.",
    ),
    "debit": ("tally.cli.transfers_cmd", "debit", "Debit an account (idempotent by --id)."),
    "credit": (
        "tally.cli.transfers_cmd",
        "credit",
        "Credit an account: ledger first, then the store.",
    ),
    "balance": ("tally.cli.transfers_cmd", "balance", "An account's balance and status."),
    "hold": ("tally.cli.hold_cmd", "hold", "Balance holds: place, capture, void, show."),
    "init": (
        "tally.cli.admin_cmd",
        "init",
        "Create the ledger schema and the store's first epoch.",
    ),
    "drain": ("tally.cli.admin_cmd", "drain", "Move the journal into the ledger of record."),
    "reconcile": ("tally.cli.admin_cmd", "reconcile", "Prove the store and the ledger agree."),
    "rebuild": (
        "tally.cli.admin_cmd",
        "rebuild",
        "Restore a lost store from the ledger of record.",
    ),
    "recharge": ("tally.cli.recharge_cmd", "recharge", "Auto-recharge rules and the completer."),
    "freeze": (
        "tally.cli.recharge_cmd",
        "freeze",
        "Freeze or resume all recharging, with a reason.",
    ),
    "remediate": (
        "tally.cli.recharge_cmd",
        "remediate",
        "Find and fix charges without credit, duplicates.",
    ),
    "events": ("tally.cli.events_cmd", "events", "Events for dependents, from the outbox."),
    "webhook": ("tally.cli.events_cmd", "webhook", "Webhook endpoints: add, list, remove."),
    "apikey": ("tally.cli.apikey_cmd", "apikey", "API keys for the HTTP API."),
    "local": ("tally.cli.local_cmd", "local", "A local redis-server for tally (loopback)."),
    "cluster": ("tally.cli.cluster_cmd", "cluster", "Run a multi-DC topology for real."),
    "node": ("tally.cli.node_cmd", "node", "Restart a node safely (refuses the 2013 defects)."),
    "proxy": ("tally.cli.proxy_cmd", "proxy", "Fault proxy between data centers."),
    "preflight": (
        "tally.cli.preflight_cmd",
        "preflight",
        "Check Redis settings against data-loss rules.",
    ),
    "gateway": ("tally.cli.gateway_cmd", "gateway", "The payment gateway simulator."),
    "bench": ("tally.cli.bench_cmd", "bench", "Benchmarks: debits, HTTP."),
    "lab": ("tally.cli.lab_cmd", "lab", "Replay incident #28 on real processes."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        command = getattr(importlib.import_module(entry[0]), entry[1])
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, entry[2]) for name, entry in COMMANDS.items()])


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="tally")
def cli() -> None:
    """tally: a prepaid-balance billing engine that survives Twilio's incident #28.

    Amounts on the command line are decimals in the account's currency (12.34). Exit codes:
    0 ok, 1 business refusal (e.g. insufficient_funds), 2 usage or infrastructure error.
    """


def main() -> None:
    cli()
