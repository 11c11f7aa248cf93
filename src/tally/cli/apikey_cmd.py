"""tally apikey create | list | revoke: API keys for the HTTP service, stored hashed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from tally.cli.context import settings_from
from tally.cli.output import emit, handles_errors, json_option
from tally.ledger.sql_api_keys import ApiKeyStore
from tally.ledger.sql_ledger import SqlLedger


def _options(func: F) -> F:
    func = click.option("--home", envvar="TALLY_HOME", help="Local state dir (default ./.tally).")(
        func
    )
    return click.option(
        "--ledger-url", envvar="TALLY_LEDGER_URL", help="sqlite:///... or postgresql://..."
    )(func)


F = TypeVar("F", bound=Callable[..., Any])


@click.group()
def apikey() -> None:
    """API keys for `tally serve` (admin: everything; service: accounts and transfers)."""


@apikey.command("create")
@click.option("--scope", type=click.Choice(["admin", "service"]), required=True)
@click.option("--label", default="", help="What the key is for (shown in `tally apikey list`).")
@_options
@json_option
@handles_errors
def create(scope: str, label: str, home: str | None, ledger_url: str | None, as_json: bool) -> None:
    """Create a key and print it ONCE: only its SHA-256 is stored."""
    settings = settings_from(None, ledger_url, home)
    settings.home.mkdir(parents=True, exist_ok=True)
    with SqlLedger.open(settings.ledger_url) as ledger:
        made = ApiKeyStore(ledger).create(scope, label)
    emit(as_json, {"key": made.key, "key_id": made.info.key_id, "scope": scope}, made.key)


@apikey.command("list")
@_options
@json_option
@handles_errors
def list_keys(home: str | None, ledger_url: str | None, as_json: bool) -> None:
    """Key ids, scopes and labels (never the keys)."""
    settings = settings_from(None, ledger_url, home)
    with SqlLedger.open(settings.ledger_url) as ledger:
        keys = ApiKeyStore(ledger).list()
    rows = [
        {
            "key_id": k.key_id,
            "scope": k.scope.value,
            "label": k.label,
            "revoked": k.revoked_at_ms is not None,
        }
        for k in keys
    ]
    human = "\n".join(
        f"{r['key_id']}  {r['scope']:<7}  {'revoked ' if r['revoked'] else ''}{r['label']}"
        for r in rows
    )
    emit(as_json, {"keys": rows}, human or "no keys")


@apikey.command("revoke")
@click.argument("key_id")
@_options
@json_option
@handles_errors
def revoke(key_id: str, home: str | None, ledger_url: str | None, as_json: bool) -> None:
    """Revoke a key by its id (the 12 hex after `tk_`); takes effect within seconds."""
    settings = settings_from(None, ledger_url, home)
    with SqlLedger.open(settings.ledger_url) as ledger:
        done = ApiKeyStore(ledger).revoke(key_id)
    emit(as_json, {"revoked": done, "key_id": key_id}, "revoked" if done else "no such active key")


if __name__ == "__main__":
    apikey()
