"""``tally hold place|capture|void|show`` on real processes: JSON shapes, replays, exit codes
(0 ok, 1 business refusal, 2 bad input) and nothing written for bad input."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_cli import env as env  # the fixture: init + account alice
from tests.cli.test_cli import tally


@pytest.fixture
def funded(env: dict[str, str]) -> dict[str, str]:
    assert tally(env, "credit", "alice", "50.00", "--id", "top-1").returncode == 0
    return env


def _balance(env: dict[str, str]) -> int:
    return int(json.loads(tally(env, "balance", "alice", "--json").stdout)["balance_minor"])


def test_place_capture_show_and_replay(funded: dict[str, str]) -> None:
    env = funded
    first = tally(
        env, "hold", "place", "alice", "20.00", "--id", "h1", "--expires-in", "60", "--json"
    )
    again = tally(
        env, "hold", "place", "alice", "20.00", "--id", "h1", "--expires-in", "60", "--json"
    )
    assert first.returncode == again.returncode == 0, first.stderr
    placed, replay = json.loads(first.stdout), json.loads(again.stdout)
    assert (placed["result"], placed["status"], placed["held_minor"]) == ("ok", "open", 2000)
    assert replay == {**placed, "replayed": True}
    captured = tally(env, "hold", "capture", "h1", "12.50", "--json")
    assert captured.returncode == 0, captured.stderr
    assert json.loads(captured.stdout)["captured_minor"] == 1250
    assert _balance(env) == 5000 - 1250
    shown = json.loads(tally(env, "hold", "show", "h1", "--json").stdout)
    assert (shown["status"], shown["captured_minor"]) == ("captured", 1250)
    refused = tally(env, "hold", "void", "h1", "--json")
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["result"] == "hold_already_captured"


@pytest.mark.parametrize(
    "args",
    [
        ("alice", "0", "--id", "b1", "--expires-in", "60"),
        ("alice", "-1.00", "--id", "b1", "--expires-in", "60"),
        ("alice", "1.001", "--id", "b1", "--expires-in", "60"),
        ("alice", "1.00", "--id", "b1", "--expires-in", "0"),
        ("alice", "1.00", "--id", "b1", "--expires-in", str(7 * 86400 + 1)),
        ("alice", "1.00", "--id", "b|1", "--expires-in", "60"),
    ],
    ids=["zero", "negative", "too precise", "zero expiry", "expiry past the bound", "bad id"],
)
def test_bad_input_exits_2_and_writes_nothing(
    funded: dict[str, str], args: tuple[str, ...]
) -> None:
    reply = tally(funded, "hold", "place", *args, "--json")
    assert reply.returncode == 2, reply.stdout + reply.stderr
    missing = tally(funded, "hold", "show", "b1", "--json")
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["result"] == "hold_not_found"
    assert _balance(funded) == 5000


def test_unknown_hold_and_over_capture_are_refusals(funded: dict[str, str]) -> None:
    env = funded
    assert tally(env, "hold", "capture", "nope", "1.00", "--json").returncode == 1
    assert (
        tally(env, "hold", "place", "alice", "5.00", "--id", "h2", "--expires-in", "60").returncode
        == 0
    )
    over = tally(env, "hold", "capture", "h2", "5.01", "--json")
    assert over.returncode == 1
    assert json.loads(over.stdout)["result"] == "capture_exceeds_hold"
    assert _balance(env) == 5000
