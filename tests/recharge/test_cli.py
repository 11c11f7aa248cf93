"""``tally recharge set/show/disable/run --once`` end to end on a real deployment."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tally.bootstrap import Deployment
from tally.cli.main import cli
from tally.config import Settings
from tally.domain.accounts import Account
from tally.gateway.process import SimulatorProcess

from .conftest import balance, drain_all


def test_an_operator_sets_a_rule_and_the_completer_command_tops_the_account_up(
    dep: Deployment, settings: Settings, simulator: SimulatorProcess
) -> None:
    conn = [
        "--redis-url",
        settings.require_redis_url(),
        "--ledger-url",
        settings.ledger_url,
        "--home",
        str(settings.home),
    ]
    runner = CliRunner()
    dep.engine.create_account(Account("acme", "USD"))
    dep.engine.credit("seed", "acme", 1000, "USD")
    set_rule = [
        "recharge",
        "set",
        "acme",
        "--card",
        "card_1",
        "--threshold",
        "5.00",
        "--target",
        "20.00",
        "--daily-cap",
        "100.00",
        "--json",
        *conn,
    ]
    assert json.loads(runner.invoke(cli, set_rule).output)["result"] == "ok"
    assert dep.engine.debit("u1", "acme", 600).recharge_id is not None
    drain_all(dep)
    ran = runner.invoke(
        cli, ["recharge", "run", "--once", "--gateway-url", simulator.url, "--json", *conn]
    )
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.output)["finished"] == 1
    assert balance(dep) == 2000
    shown = json.loads(runner.invoke(cli, ["recharge", "show", "acme", "--json", *conn]).output)
    assert shown["rule"]["autopay"] is True
    assert [h["phase"] for h in shown["recharges"]] == ["succeeded"]
    off = runner.invoke(cli, ["recharge", "disable", "acme", "--json", *conn])
    assert off.exit_code == 0
    assert dep.engine.debit("u2", "acme", 1900).recharge_id is None  # autopay off in Redis too
    missing = runner.invoke(
        cli,
        [
            "recharge",
            "set",
            "nobody",
            "--card",
            "c",
            "--threshold",
            "1",
            "--amount",
            "2",
            "--daily-cap",
            "3",
            *conn,
        ],
    )
    assert missing.exit_code == 2
