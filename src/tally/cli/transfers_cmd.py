"""tally debit | credit | balance | account ..."""

from __future__ import annotations

import sys

import click

from tally.bootstrap import Deployment
from tally.cli.context import connection_options, deployment
from tally.cli.output import EXIT_REFUSED, emit, handles_errors, json_option
from tally.domain.accounts import Account, AccountStatus, SystemAccount
from tally.domain.money import format_amount, parse_amount
from tally.domain.results import Result
from tally.domain.transfers import parse_occurred_at


def _currency_of(dep: Deployment, account_id: str, as_json: bool) -> str:
    """Amounts on the command line are in the account's currency: the ledger knows it. A missing
    account is a business refusal (exit 1), as it is over HTTP (404 account_not_found)."""
    account = dep.ledger.get_account(account_id)
    if account is None:
        data = {"result": Result.account_not_found.name, "balance_minor": None, "replayed": False}
        emit(as_json, data, f"{Result.account_not_found.name}: {account_id}")
        sys.exit(EXIT_REFUSED)
    return account.currency


def _finish(result: Result) -> None:
    if not result.is_success:
        sys.exit(EXIT_REFUSED)


@click.command()
@click.argument("account")
@click.argument("amount")
@click.option("--id", "transfer_id", required=True, help="Client-chosen transfer id (idempotency).")
@click.option(
    "--occurred-at",
    "occurred_at",
    default=None,
    help="When the usage happened: epoch ms or RFC 3339 with an offset. Default: now (the "
    "store's clock). Pass the original value when retrying later than the idempotency window.",
)
@connection_options
@json_option
@handles_errors
def debit(
    account: str,
    amount: str,
    transfer_id: str,
    occurred_at: str | None,
    as_json: bool,
    **conn: str | None,
) -> None:
    """Debit AMOUNT (a decimal in the account's currency, e.g. 12.34) from ACCOUNT."""
    occurred_ms = None if occurred_at is None else parse_occurred_at(occurred_at)
    with deployment(**conn) as dep:
        currency = _currency_of(dep, account, as_json)
        r = dep.engine.debit(
            transfer_id, account, parse_amount(amount, currency), currency, occurred_ms
        )
        data = {"result": r.result.name, "balance_minor": r.balance_minor, "replayed": r.replayed}
        shown = (
            ""
            if r.balance_minor is None
            else f", balance {format_amount(r.balance_minor, currency)} {currency}"
        )
        emit(as_json, data, f"{r.result.name}{' (replay)' if r.replayed else ''}{shown}")
        _finish(r.result)


@click.command()
@click.argument("account")
@click.argument("amount")
@click.option("--id", "transfer_id", required=True, help="Client-chosen transfer id (idempotency).")
@click.option(
    "--source",
    type=click.Choice([s.value for s in SystemAccount if s is not SystemAccount.usage_revenue]),
    default=SystemAccount.adjustments.value,
    show_default=True,
    help="Where the money comes from (the other side of the entry).",
)
@connection_options
@json_option
@handles_errors
def credit(
    account: str, amount: str, transfer_id: str, source: str, as_json: bool, **conn: str | None
) -> None:
    """Credit AMOUNT to ACCOUNT: written to the ledger first, then to the store."""
    with deployment(**conn) as dep:
        currency = _currency_of(dep, account, as_json)
        out = dep.engine.credit(
            transfer_id, account, parse_amount(amount, currency), currency, SystemAccount(source)
        )
        name = "pending" if out.result is None else out.result.name
        data = {"result": name, "balance_minor": out.balance_minor, "replayed": out.replayed}
        human = (
            name
            if out.result is not None
            else "pending: recorded in the ledger, applied when the store is back"
        )
        emit(as_json, data, human)
        if out.result is not None:
            _finish(out.result)


@click.command()
@click.argument("account")
@connection_options
@json_option
@handles_errors
def balance(account: str, as_json: bool, **conn: str | None) -> None:
    """Show ACCOUNT's balance and status from the store."""
    with deployment(**conn) as dep:
        state = dep.engine.account(account)
        if state is None:
            emit(as_json, {"account": account, "result": "account_not_found"}, "account_not_found")
            sys.exit(EXIT_REFUSED)
        acc = state.account
        data = {
            "account": acc.id,
            "balance_minor": state.balance_minor,
            "currency": acc.currency,
            "status": acc.status.value,
            "credit_limit_minor": acc.credit_limit_minor,
        }
        emit(
            as_json,
            data,
            f"{acc.id}: {format_amount(state.balance_minor, acc.currency)} {acc.currency} ({acc.status.value})",
        )


@click.group()
def account() -> None:
    """Create accounts and change their status."""


@account.command("create")
@click.argument("account_id")
@click.option("--currency", required=True, help="ISO 4217 code, e.g. USD.")
@click.option(
    "--credit-limit", default="0", show_default=True, help="How far below zero (decimal)."
)
@connection_options
@json_option
@handles_errors
def account_create(
    account_id: str, currency: str, credit_limit: str, as_json: bool, **conn: str | None
) -> None:
    """Create a prepaid account (ledger first, then the store)."""
    limit = parse_amount(credit_limit, currency.upper(), allow_zero=True)
    acc = Account(account_id, currency.upper(), limit)
    with deployment(**conn) as dep:
        result = dep.engine.create_account(acc)
        emit(
            as_json, {"result": result.name, "account": account_id}, f"{result.name}: {account_id}"
        )
        _finish(result)


def _status_command(name: str, status: AccountStatus, help_text: str) -> click.Command:
    @account.command(name, help=help_text)
    @click.argument("account_id")
    @connection_options
    @json_option
    @handles_errors
    def command(account_id: str, as_json: bool, **conn: str | None) -> None:
        with deployment(**conn) as dep:
            result = dep.engine.set_status(account_id, status)
            emit(
                as_json,
                {"result": result.name, "account": account_id, "status": status.value},
                result.name,
            )
            _finish(result)

    return command


_status_command("suspend", AccountStatus.suspended, "Suspend an account (debits refused).")
_status_command("reinstate", AccountStatus.active, "Make a suspended account active again.")
_status_command("close", AccountStatus.closed, "Close an account for good.")
