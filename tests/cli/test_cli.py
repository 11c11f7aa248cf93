"""The CLI contract other tools rely on (issue 2): JSON shapes and exit codes, on real processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tally.config import child_env
from tally.ops.node import RedisNode
from tests.waiting import wait_for


def tally(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tally.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture
def env(redis_node: RedisNode, tmp_path: Path) -> dict[str, str]:
    e = {
        **os.environ,
        "TALLY_REDIS_URL": redis_node.url,
        "TALLY_HOME": str(tmp_path / "home"),
        "TALLY_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
    }
    assert tally(e, "init", "--json").returncode == 0
    assert tally(e, "account", "create", "alice", "--currency", "USD").returncode == 0
    return e


def test_debit_prints_the_result_and_balance_and_a_retry_moves_no_money(
    env: dict[str, str],
) -> None:
    assert tally(env, "credit", "alice", "50.00", "--id", "top-1").returncode == 0
    first = tally(env, "debit", "alice", "12.34", "--id", "call-1", "--json")
    again = tally(env, "debit", "alice", "12.34", "--id", "call-1", "--json")
    assert first.returncode == again.returncode == 0
    assert json.loads(first.stdout) == {"result": "ok", "balance_minor": 3766, "replayed": False}
    assert json.loads(again.stdout) == {"result": "ok", "balance_minor": 3766, "replayed": True}
    bal = json.loads(tally(env, "balance", "alice", "--json").stdout)
    assert bal == {
        "account": "alice",
        "balance_minor": 3766,
        "currency": "USD",
        "status": "active",
        "credit_limit_minor": 0,
    }


def test_a_business_refusal_exits_1(env: dict[str, str]) -> None:
    out = tally(env, "debit", "alice", "1.00", "--id", "call-1", "--json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["result"] == "insufficient_funds"


@pytest.mark.parametrize("command", ["debit", "credit"])
def test_a_transfer_to_a_missing_account_is_a_refusal_exiting_1(
    env: dict[str, str], command: str
) -> None:
    """As over HTTP (404 account_not_found): a business answer, not a usage error."""
    out = tally(env, command, "nobody", "1.00", "--id", "x-1", "--json")
    assert out.returncode == 1, out.stderr
    assert json.loads(out.stdout) == {
        "result": "account_not_found",
        "balance_minor": None,
        "replayed": False,
    }


def test_bad_amounts_exit_2_with_a_clear_error(env: dict[str, str]) -> None:
    out = tally(env, "debit", "alice", "1.001", "--id", "x")
    assert out.returncode == 2
    assert "refusing to round" in out.stderr


def test_reconcile_reports_no_drift_after_a_drain(env: dict[str, str]) -> None:
    tally(env, "credit", "alice", "5", "--id", "top-1")
    tally(env, "debit", "alice", "1", "--id", "d-1")
    assert tally(env, "drain").returncode == 0
    out = tally(env, "reconcile", "--json")
    report = json.loads(out.stdout)
    assert out.returncode == 0
    assert (report["accounts_checked"], report["accounts_drifted"], report["drift"]) == (1, 0, [])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_drain_follow_drains_until_a_signal_then_exits_0_with_its_stats(
    env: dict[str, str], sig: signal.Signals
) -> None:
    """`tally drain --follow` keeps draining until SIGINT or SIGTERM (its handler takes no
    lock: tally.ops.signals), sent twice here as a process group and uv's forwarding give it."""
    tally(env, "credit", "alice", "5", "--id", "top-1")
    follow = subprocess.Popen(
        [sys.executable, "-m", "tally.cli", "drain", "--follow", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    ledger = env["TALLY_LEDGER_URL"].removeprefix("sqlite:///")

    def drained() -> int:
        with contextlib.closing(sqlite3.connect(ledger)) as db:
            return int(
                db.execute("SELECT count(*) FROM transfers WHERE id = 'top-1'").fetchone()[0]
            )

    try:
        wait_for(drained, "drain --follow draining the credit", timeout_s=30, pace_s=0.2)
        follow.send_signal(sig)
        follow.send_signal(sig)
        out, err = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait(5)
    assert follow.returncode == 0, err
    assert json.loads(out)["entries"] >= 1


def test_drain_fences_on_replicas_and_settles_nothing_no_replica_holds(
    env: dict[str, str],
) -> None:
    """`tally drain` honours TALLY_DRAIN_REPLICAS: this node has no replica, so with a fence of
    1 nothing is settled (a failover could still lose it), and the round says it was fenced."""
    tally(env, "credit", "alice", "5", "--id", "top-1")
    fenced = tally({**env, "TALLY_DRAIN_REPLICAS": "1"}, "drain", "--json")
    assert fenced.returncode == 0, fenced.stderr
    stats = json.loads(fenced.stdout)
    assert stats["fenced"] >= 1 and stats["last_fence_acked"] == 0
    drift = json.loads(tally(env, "reconcile", "--json").stdout)
    assert drift["accounts_drifted"] == 0  # undrained entries still count: nothing was lost
    unfenced = json.loads(tally({**env, "TALLY_DRAIN_REPLICAS": "0"}, "drain", "--json").stdout)
    assert unfenced["fenced"] == 0 and unfenced["entries"] >= 1


def test_reconcile_finds_an_injected_drift_and_exits_1(
    env: dict[str, str], redis_node: RedisNode
) -> None:
    tally(env, "credit", "alice", "5", "--id", "top-1")
    tally(env, "drain")
    client = redis_node.client()
    (key,) = [k for k in client.scan_iter(match="tally:*:a:alice")]
    client.hincrby(key, "bal", 100)
    out = tally(env, "reconcile", "--json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["accounts_drifted"] == 1


def test_a_write_against_a_wiped_dataset_names_store_lost_and_exits_2(
    env: dict[str, str], redis_node: RedisNode
) -> None:
    tally(env, "credit", "alice", "5", "--id", "top-1")
    redis_node.client().flushall()
    out = tally(env, "debit", "alice", "1", "--id", "d-1", "--json")
    assert out.returncode == 2
    assert "store_lost" in out.stderr and json.loads(out.stdout)["error"] == "store_lost"
    assert redis_node.client().dbsize() == 0
    rebuilt = tally(env, "rebuild", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads(tally(env, "balance", "alice", "--json").stdout)["balance_minor"] == 500


def test_no_redis_configured_is_a_usage_error_that_says_what_to_do(tmp_path: Path) -> None:
    e = child_env()
    e["TALLY_HOME"] = str(tmp_path)
    out = tally(e, "init")
    assert out.returncode == 2
    assert "tally local up" in out.stderr
