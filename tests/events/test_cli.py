"""``tally events list`` and ``tally webhook add|list|remove`` against a ledger (no Redis)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from tally.cli.main import cli
from tally.ledger.sql_ledger import SqlLedger


def _run(args: list[str], ledger_url: str, home: Path) -> tuple[int, str]:
    argv = [*args, "--ledger-url", ledger_url, "--home", str(home), "--json"]
    result = CliRunner().invoke(cli, argv, catch_exceptions=False)
    return result.exit_code, result.output


def test_webhook_add_list_remove_and_events_list(sqlite_ledger_url: str, tmp_path: Path) -> None:
    with SqlLedger.open(sqlite_ledger_url) as ledger, ledger.unit() as uow:
        uow.emit("billing.frozen", {"reason": "r", "actor": "a"}, source="freeze:1")
    code, out = _run(
        ["webhook", "add", "http://127.0.0.1:9/t", "--type", "billing.frozen"],
        sqlite_ledger_url,
        tmp_path,
    )
    assert code == 0, out
    added = json.loads(out)
    assert added["secret"].startswith("whsec_") and added["event_types"] == ["billing.frozen"]
    code, out = _run(["webhook", "list"], sqlite_ledger_url, tmp_path)
    assert [e["id"] for e in json.loads(out)["items"]] == [added["id"]]
    assert "secret" not in json.loads(out)["items"][0]
    code, out = _run(["events", "list", "--after", "0"], sqlite_ledger_url, tmp_path)
    page = json.loads(out)
    assert [e["type"] for e in page["items"]] == ["billing.frozen"] and page["next_cursor"] == 1
    code, out = _run(["webhook", "remove", added["id"]], sqlite_ledger_url, tmp_path)
    assert code == 0 and json.loads(out)["removed"] is True
    code, out = _run(["webhook", "remove", added["id"]], sqlite_ledger_url, tmp_path)
    assert code == 1 and json.loads(out)["error"] == "webhook_endpoint_not_found"


def test_webhook_add_refuses_a_non_http_url_with_its_code_and_writes_nothing(
    sqlite_ledger_url: str, tmp_path: Path
) -> None:
    SqlLedger.open(sqlite_ledger_url).close()
    code, out = _run(["webhook", "add", "file:///etc/passwd"], sqlite_ledger_url, tmp_path)
    assert code == 2 and json.loads(out)["error"] == "webhook_url_invalid"
    code, out = _run(["webhook", "list"], sqlite_ledger_url, tmp_path)
    assert json.loads(out)["items"] == []


def test_webhook_add_keeps_to_the_egress_policy(sqlite_ledger_url: str, tmp_path: Path) -> None:
    """The CLI registers through the same check as the API (TALLY_WEBHOOK_HOSTS, set to
    loopback for the suite by tests/conftest.py): refused with its code, nothing written."""
    SqlLedger.open(sqlite_ledger_url).close()  # the schema, as `tally init` makes it
    code, out = _run(["webhook", "add", "https://hooks.example.com/t"], sqlite_ledger_url, tmp_path)
    assert code != 0 and json.loads(out)["error"] == "webhook_url_not_allowed", out
    code, out = _run(["webhook", "list"], sqlite_ledger_url, tmp_path)
    assert json.loads(out)["items"] == []
