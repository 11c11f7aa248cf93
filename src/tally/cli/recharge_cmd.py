"""tally recharge (rules, completer) | freeze on/off/status | remediate: thin wrappers over
``tally.billing.recharge``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from tally.billing import recharge as rc
from tally.billing.recharge.remediation import RECORDS_MAX, Remediator
from tally.bootstrap import Deployment, recharging
from tally.cli.context import connection_options, deployment
from tally.cli.output import EXIT_REFUSED, emit, handles_errors, json_option, usage
from tally.domain.money import format_amount, parse_amount
from tally.domain.recharge import RechargeRule
from tally.domain.results import Result
from tally.gateway.client import HttpGateway, SimulatorAdmin
from tally.gateway.records import Record
from tally.ops.signals import SignalStop

gateway_option = click.option(
    "--gateway-url", envvar="TALLY_GATEWAY_URL", help="Payment gateway base URL (loopback)."
)


def _currency(dep: Deployment, account_id: str) -> str:
    account = dep.ledger.get_account(account_id)
    if account is None:
        raise usage(f"no account {account_id!r}")
    return account.currency


@click.group()
def recharge() -> None:
    """Auto-recharge rules and the completer that drives recharges to their end."""


@recharge.command("set")
@click.argument("account_id")
@click.option("--card", "card_id", required=True, help="The stored card id.")
@click.option("--threshold", required=True, help="Recharge when the balance falls below this.")
@click.option("--target", default=None, help="Top the balance up to this ...")
@click.option("--amount", default=None, help="... or charge this fixed amount each time.")
@click.option("--daily-cap", required=True, help="Most that may be charged in 24 hours.")
@click.option("--declines-max", default=3, type=click.IntRange(1, 100), show_default=True)
@connection_options
@json_option
@handles_errors
def set_rule(
    account_id: str,
    card_id: str,
    threshold: str,
    target: str | None,
    amount: str | None,
    daily_cap: str,
    declines_max: int,
    as_json: bool,
    **conn: str | None,
) -> None:
    """Give ACCOUNT_ID a card and a recharge rule (re-enables autopay)."""
    if (target is None) == (amount is None):
        raise usage("give exactly one of --target and --amount")
    with deployment(**conn) as dep:
        cur = _currency(dep, account_id)
        rule = RechargeRule(
            account_id,
            card_id,
            parse_amount(threshold, cur, allow_zero=True),
            parse_amount(daily_cap, cur),
            declines_max,
            target_minor=None if target is None else parse_amount(target, cur),
            fixed_minor=None if amount is None else parse_amount(amount, cur),
        )
        result = rc.RechargeService(dep.engine).set_rule(rule)
    emit(as_json, {"account": account_id, "result": result.name}, f"{account_id}: {result.name}")
    if result is not Result.ok:
        raise SystemExit(EXIT_REFUSED)


@recharge.command("show")
@click.argument("account_id")
@connection_options
@json_option
@handles_errors
def show(account_id: str, as_json: bool, **conn: str | None) -> None:
    """The rule of ACCOUNT_ID and its recent recharges."""
    with deployment(**conn) as dep:
        stored = dep.ledger.recharges.get_rule(account_id)
        history = dep.ledger.recharges.all_for_account(account_id, limit=20)
    data: dict[str, Any] = {"account": account_id, "rule": None, "recharges": []}
    if stored is not None:
        r = stored.rule
        data["rule"] = {
            "card": r.card_id,
            "threshold_minor": r.threshold_minor,
            "target_minor": r.target_minor,
            "fixed_minor": r.fixed_minor,
            "daily_cap_minor": r.daily_cap_minor,
            "declines_max": r.declines_max,
            "autopay": stored.autopay_enabled,
            "consecutive_declines": stored.consecutive_declines,
            "disabled_reason": stored.disabled_reason,
        }
    data["recharges"] = [
        {
            "id": h.id,
            "phase": h.phase.value,
            "amount_minor": h.amount_minor,
            "finished": h.finished,
            "wait_reason": h.wait_reason,
            "reason": h.outcome_reason,
        }
        for h in history
    ]
    lines = [f"{account_id}: {'no rule' if stored is None else data['rule']}"]
    lines += [
        f"  {h['id']} {h['phase']} {h['amount_minor']} {h['wait_reason'] or ''}"
        for h in data["recharges"]
    ]
    emit(as_json, data, "\n".join(lines))


@recharge.command("disable")
@click.argument("account_id")
@click.option("--reason", default="operator", show_default=True)
@connection_options
@json_option
@handles_errors
def disable(account_id: str, reason: str, as_json: bool, **conn: str | None) -> None:
    """Turn autopay off for ACCOUNT_ID (``recharge set`` turns it back on)."""
    with deployment(**conn) as dep:
        changed = rc.RechargeService(dep.engine).disable_autopay(account_id, reason)
    emit(as_json, {"account": account_id, "changed": changed}, f"{account_id}: autopay off")
    if not changed:
        raise SystemExit(EXIT_REFUSED)


@recharge.command("run")
@gateway_option
@click.option("--once", is_flag=True, help="One bounded batch, then exit.")
@click.option("--limit", default=100, type=click.IntRange(1, 1000), show_default=True)
@click.option("--pace", "pace_s", default=0.5, type=click.FloatRange(0.01, 60), show_default=True)
@connection_options
@json_option
@handles_errors
def run(
    gateway_url: str | None,
    once: bool,
    limit: int,
    pace_s: float,
    as_json: bool,
    **conn: str | None,
) -> None:
    """Drive unfinished recharges (the completer) until SIGINT/SIGTERM, or one batch."""
    if not gateway_url:
        raise usage("--gateway-url (or TALLY_GATEWAY_URL) is required")
    with deployment(**conn) as dep, HttpGateway(gateway_url) as gateway:
        wiring = recharging(dep, gateway)
        if once:
            finished = wiring.completer.run_once(limit)
        else:
            # kept installed after: a second Ctrl-C must not cut the completer's stop short
            stop = SignalStop.install()
            wiring.completer.run(stop.event, limit=limit, pace_s=pace_s)
            finished = wiring.completer.stats.finished
        stats = wiring.completer.stats
    data = {
        "finished": finished,
        "driven": stats.driven,
        "errors": stats.errors,
        "waiting": dict(stats.waiting),
    }
    emit(
        as_json, data, f"finished {finished}, driven {stats.driven}, waiting {dict(stats.waiting)}"
    )


@click.group()
def freeze() -> None:
    """The global billing freeze switch: no card is charged while it is on."""


@freeze.command("on")
@click.option("--reason", required=True, help="Why (shown by status and in the log).")
@click.option("--actor", default="operator", show_default=True)
@connection_options
@json_option
@handles_errors
def freeze_on(reason: str, actor: str, as_json: bool, **conn: str | None) -> None:
    with deployment(**conn) as dep:
        state = rc.RechargeService(dep.engine).freeze(reason, actor)
    emit(as_json, _freeze_json(state), f"billing frozen: {state.reason}")


@freeze.command("off")
@click.option("--reason", default="resumed", show_default=True)
@click.option("--actor", default="operator", show_default=True)
@connection_options
@json_option
@handles_errors
def freeze_off(reason: str, actor: str, as_json: bool, **conn: str | None) -> None:
    with deployment(**conn) as dep:
        state = rc.RechargeService(dep.engine).unfreeze(reason, actor)
    emit(as_json, _freeze_json(state), "billing resumed")


@freeze.command("status")
@connection_options
@json_option
@handles_errors
def freeze_status(as_json: bool, **conn: str | None) -> None:
    with deployment(**conn) as dep:
        state = rc.RechargeService(dep.engine).freeze_state()
    human = f"frozen: {state.reason} (by {state.actor})" if state.frozen else "not frozen"
    emit(as_json, _freeze_json(state), human)


def _freeze_json(state: Any) -> dict[str, Any]:
    return {
        "frozen": state.frozen,
        "reason": state.reason,
        "actor": state.actor,
        "at_ms": state.at_ms,
    }


def _records_from_file(path: Path) -> Iterator[Record]:
    with path.open() as handle:
        for n, line in enumerate(handle):
            if n >= RECORDS_MAX:
                raise usage(f"{path} has more than {RECORDS_MAX} records")
            if line.strip():
                yield Record.from_json_dict(json.loads(line))


@click.command()
@click.option("--dry-run", "mode", flag_value="dry-run", help="Report what would be done.")
@click.option("--apply", "mode", flag_value="apply", help="Do it (idempotent).")
@click.option(
    "--records",
    "records_path",
    type=click.Path(exists=True, path_type=Path),
    help="The gateway's records as JSONL (default: ask --gateway-url).",
)
@click.option(
    "--refund-uncredited",
    is_flag=True,
    help="Refund a charge that has no credit instead of crediting it.",
)
@gateway_option
@connection_options
@json_option
@handles_errors
def remediate(
    mode: str | None,
    records_path: Path | None,
    refund_uncredited: bool,
    gateway_url: str | None,
    as_json: bool,
    **conn: str | None,
) -> None:
    """Compare the gateway's records with the ledger; credit charges without a credit, refund
    duplicate charges, reinstate wrongful suspensions. Running --apply twice changes nothing
    the second time."""
    if mode is None:
        raise usage("give --dry-run or --apply")
    if not gateway_url:
        raise usage("--gateway-url (or TALLY_GATEWAY_URL) is required: refunds go through it")
    with deployment(**conn) as dep, HttpGateway(gateway_url) as gateway:
        if records_path is not None:
            records: list[Record] = list(_records_from_file(records_path))
        else:
            with SimulatorAdmin(gateway_url) as admin:
                records = list(admin.iter_records())
        remediator = Remediator(dep.engine, gateway, refund_uncredited=refund_uncredited)
        report = remediator.run(records, apply=mode == "apply")
    data = report.to_json()
    human = (
        f"{'applied' if report.applied else 'dry run'}: {len(report.actions)} actions "
        f"({len(report.pending)} pending), charges without credit "
        f"{report.charges_without_credit}, duplicates {report.duplicate_charges}, "
        f"wrongful suspensions {report.wrongful_suspensions}, failures {len(report.failures)}"
    )
    for a in report.actions:
        amount = (
            "" if a.amount_minor is None else format_amount(a.amount_minor, a.currency or "USD")
        )
        human += (
            f"\n  {'done ' if a.done else ''}{a.kind} {a.account_id} {a.charge_id or ''} {amount}"
        )
    emit(as_json, data, human)
    if report.failures:
        raise SystemExit(EXIT_REFUSED)
