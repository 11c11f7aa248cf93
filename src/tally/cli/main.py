"""``tally``: the command line entry point. Commands live in the modules beside this one."""

from __future__ import annotations

import importlib

import click

from tally import __version__
from tally.cli import admin_cmd, local_cmd, transfers_cmd

# Command groups other parts of tally provide; each is optional until its part exists.
_OPTIONAL: dict[str, tuple[str, ...]] = {
    "tally.cli.gateway_cmd": ("gateway",),
    "tally.cli.proxy_cmd": ("proxy",),
    "tally.cli.preflight_cmd": ("preflight",),
    "tally.cli.cluster_cmd": ("cluster",),
    "tally.cli.node_cmd": ("node",),
    "tally.cli.bench_cmd": ("bench",),
    "tally.cli.demo_cmd": ("demo",),
    "tally.cli.serve_cmd": ("serve",),
    "tally.cli.apikey_cmd": ("apikey",),
    "tally.cli.recharge_cmd": ("recharge", "freeze", "remediate"),
    "tally.cli.lab_cmd": ("lab",),
}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tally")
def cli() -> None:
    """tally: a prepaid-balance billing engine that survives Twilio's incident #28.

    Amounts on the command line are decimals in the account's currency (12.34). Exit codes:
    0 ok, 1 business refusal (e.g. insufficient_funds), 2 usage or infrastructure error.
    """


for command in (
    transfers_cmd.debit,
    transfers_cmd.credit,
    transfers_cmd.balance,
    transfers_cmd.account,
    admin_cmd.init,
    admin_cmd.reconcile,
    admin_cmd.rebuild,
    admin_cmd.drain,
    local_cmd.local,
):
    cli.add_command(command)

for module_name, attributes in _OPTIONAL.items():
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        continue
    for attribute in attributes:
        cli.add_command(getattr(module, attribute))


def main() -> None:
    cli()
