"""tally debit --occurred-at: the idempotency window's age guard from the command line."""

from __future__ import annotations

import json

from tests.cli.test_cli import env, tally

__all__ = ["env"]  # the fixture, shared with test_cli


def test_debit_occurred_at_outside_the_window_is_refused_and_a_bad_one_is_a_usage_error(
    env: dict[str, str],
) -> None:
    assert tally(env, "credit", "alice", "50.00", "--id", "top-1").returncode == 0
    old = tally(env, "debit", "alice", "1.00", "--id", "u1", "--occurred-at", "2001-01-01T00:00Z",
                "--json")  # fmt: skip
    assert old.returncode == 1, old.stderr
    assert json.loads(old.stdout) == {
        "result": "occurred_outside_window",
        "balance_minor": 5000,
        "replayed": False,
    }
    bad = tally(env, "debit", "alice", "1.00", "--id", "u2", "--occurred-at", "yesterday")
    assert bad.returncode == 2 and "occurred_at" in bad.stderr
    ok = tally(env, "debit", "alice", "1.00", "--id", "u1", "--json")  # now: applies
    assert json.loads(ok.stdout)["balance_minor"] == 4900
