"""tally demo: a five-minute tour on the embedded default, in a temporary dir, leaving nothing
behind. It runs the 2013 AOF defect for real and shows tally refuse, rebuild and reconcile."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

from tally.cli.output import handles_errors


@click.command()
@click.option(
    "--keep",
    type=click.Path(file_okay=False),
    help="Keep the data in this dir instead of a temp dir.",
)
@handles_errors
def demo(keep: str | None) -> None:
    """Run a guided tour: accounts, idempotent debits, the 2013 AOF defect, rebuild, reconcile."""
    from tally.demo import Tour

    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        ok = Tour(Path(keep), click.echo).run()
    else:
        with tempfile.TemporaryDirectory(prefix="tally-demo-") as tmp:
            ok = Tour(Path(tmp), click.echo).run()
    sys.exit(0 if ok else 1)
