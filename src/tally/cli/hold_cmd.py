"""tally hold place | capture | void | show: balance holds (``domain.holds``)."""

from __future__ import annotations

import sys

import click

from tally.bootstrap import Deployment
from tally.cli.context import connection_options, deployment
from tally.cli.output import EXIT_REFUSED, emit, handles_errors, json_option
from tally.domain.holds import HOLD_EXPIRES_S_MAX, HoldCode, HoldOutcome, check_expires_in_s
from tally.domain.money import format_amount, parse_amount
from tally.domain.results import Result


def _currency(dep: Deployment, account_id: str | None) -> str | None:
    account = dep.ledger.get_account(account_id) if account_id else None
    return None if account is None else account.currency


def _show(o: HoldOutcome, currency: str | None, as_json: bool, *, view: bool = False) -> None:
    data = {
        "hold_id": o.hold_id,
        "result": o.code.name,
        "status": None if o.status is None else o.status.value,
        "account": o.account_id,
        "amount_minor": o.amount_minor,
        "captured_minor": o.captured_minor,
        "expires_at_ms": o.expires_at_ms,
        "balance_minor": o.balance_minor,
        "held_minor": o.held_minor,
        "capture_transfer_id": o.capture_id,
        "replayed": o.replayed,
    }

    def money(v: int | None) -> str:
        return "-" if v is None or currency is None else f"{format_amount(v, currency)} {currency}"

    status = "" if o.status is None else f" [{o.status.value}]"
    human = (
        f"{o.code.name}{' (replay)' if o.replayed else ''}: hold {o.hold_id}{status}"
        f" held {money(o.amount_minor)}"
    )
    if o.captured_minor is not None:
        human += f", captured {money(o.captured_minor)}"
    if o.balance_minor is not None:
        human += f", balance {money(o.balance_minor)}"
    emit(as_json, data, human)
    if o.code is not HoldCode.ok and not (view and o.status is not None):
        sys.exit(EXIT_REFUSED)


@click.group()
def hold() -> None:
    """Balance holds: reserve part of the available balance, then capture or void it."""


@hold.command("place")
@click.argument("account")
@click.argument("amount")
@click.option("--id", "hold_id", required=True, help="Client-chosen hold id (idempotency).")
@click.option(
    "--expires-in",
    "expires_in_s",
    type=int,
    required=True,
    help=f"Seconds until the hold expires, 1..{HOLD_EXPIRES_S_MAX}.",
)
@connection_options
@json_option
@handles_errors
def place(
    account: str, amount: str, hold_id: str, expires_in_s: int, as_json: bool, **conn: str | None
) -> None:
    """Reserve AMOUNT (a decimal in the account's currency) of ACCOUNT's available balance."""
    check_expires_in_s(expires_in_s)
    with deployment(**conn) as dep:
        currency = _currency(dep, account)
        if currency is None:
            emit(as_json, {"result": Result.account_not_found.name}, "account_not_found")
            sys.exit(EXIT_REFUSED)
        o = dep.engine.place_hold(
            hold_id, account, parse_amount(amount, currency), expires_in_s * 1000
        )
        _show(o, currency, as_json)


@hold.command("capture")
@click.argument("hold_id")
@click.argument("amount")
@connection_options
@json_option
@handles_errors
def capture(hold_id: str, amount: str, as_json: bool, **conn: str | None) -> None:
    """Capture AMOUNT (at most the held amount; once) as a debit; the rest is released."""
    with deployment(**conn) as dep:
        held = dep.engine.get_hold(hold_id)
        currency = _currency(dep, held.account_id)
        if currency is None:
            _show(held, None, as_json)
            return
        _show(dep.engine.capture_hold(hold_id, parse_amount(amount, currency)), currency, as_json)


@hold.command("void")
@click.argument("hold_id")
@connection_options
@json_option
@handles_errors
def void(hold_id: str, as_json: bool, **conn: str | None) -> None:
    """Release the whole hold."""
    with deployment(**conn) as dep:
        o = dep.engine.void_hold(hold_id)
        _show(o, _currency(dep, o.account_id), as_json)


@hold.command("show")
@click.argument("hold_id")
@connection_options
@json_option
@handles_errors
def show(hold_id: str, as_json: bool, **conn: str | None) -> None:
    """The hold as the store has it (an open hold past its expiry shows as expired)."""
    with deployment(**conn) as dep:
        o = dep.engine.get_hold(hold_id)
        _show(o, _currency(dep, o.account_id), as_json, view=True)
