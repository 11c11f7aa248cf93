"""`tally local up` leaves a redis-server running on purpose; `down` must leave nothing."""

from __future__ import annotations

import json
from pathlib import Path

from tally.config import child_env
from tally.ops.node import orphan_pids

from .test_cli import tally


def test_local_up_runs_a_detached_server_that_later_commands_find_and_down_stops_it(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    env = child_env()
    env["TALLY_HOME"] = str(home)
    env["TALLY_LEDGER_URL"] = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    try:
        up = tally(env, "local", "up", "--json")
        assert up.returncode == 0, up.stderr
        assert json.loads(tally(env, "local", "status", "--json").stdout)["running"] is True
        assert tally(env, "init").returncode == 0  # found the server through $TALLY_HOME/local.json
        assert tally(env, "account", "create", "a", "--currency", "EUR").returncode == 0
        assert len(orphan_pids(str(home))) == 1
    finally:
        down = tally(env, "local", "down", "--json")
    assert down.returncode == 0 and json.loads(down.stdout)["stopped"] is True
    assert orphan_pids(str(home)) == []
    assert json.loads(tally(env, "local", "status", "--json").stdout)["running"] is False
