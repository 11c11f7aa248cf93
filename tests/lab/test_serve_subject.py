"""The lab's subject is real `tally serve` processes: how their HTTP answers become history
completions, how a serve's traffic is kept on its data center's routes (``--source-address``),
and the figures the serve scenarios state."""

from __future__ import annotations

import socket
import subprocess
import sys

import httpx
import pytest
from click.testing import CliRunner

from tally.cli.serve_cmd import serve
from tally.lab.figures import charges_after, first_failover_ms, ids_retried_through_other_dc
from tally.lab.history import Operation
from tally.lab.serve_billing import classify


def _answer(status: int, body: dict[str, object]) -> httpx.Response:
    return httpx.Response(status, json=body)


def test_http_answers_become_completions_honestly() -> None:
    """2xx ok (202 pending stays pending), a transfer refusal is the service's decision (ok with
    its result), another 4xx or a 503 that applied nothing is fail, and outcome_unknown or a 500
    is info: without the mapping a refused or unknown write would count as applied."""
    assert classify(_answer(201, {"result": "ok", "balance_minor": 7})) == (
        "ok", {"result": "ok", "http": 201, "balance_minor": 7})  # fmt: skip
    assert classify(_answer(202, {"result": "pending", "balance_minor": None}))[1]["result"] == (
        "pending"
    )
    refused = classify(_answer(402, {"code": "insufficient_funds", "result": "insufficient_funds"}))
    assert refused[0] == "ok" and refused[1]["result"] == "insufficient_funds"
    assert classify(_answer(401, {"code": "unauthorized"}))[0] == "fail"
    assert classify(_answer(503, {"code": "store_read_only"}))[0] == "fail"
    assert classify(_answer(503, {"code": "store_not_enough_replicas"}))[0] == "fail"
    assert classify(_answer(503, {"code": "outcome_unknown"}))[0] == "info"
    assert classify(_answer(503, {"code": "store_unavailable"}))[0] == "info"
    assert classify(_answer(500, {"code": "internal_error"}))[0] == "info"


def _op(n: int, tid: str, via: str) -> Operation:
    return Operation(n, "debit", 0, 0, {"id": tid, "via": via})


def test_only_ids_tried_through_two_data_centers_count_as_retried_elsewhere() -> None:
    history = [_op(1, "u1", "dc1"), _op(2, "u1", "dc2"), _op(3, "u2", "dc1"), _op(4, "u2", "dc1")]
    assert ids_retried_through_other_dc(history) == 1


def test_charges_after_the_first_failover_the_monitor_saw() -> None:
    monitor = [
        {"kind": "nodes", "t_ms": 10, "nodes": {"r1": {"role": "master"}}},
        {"kind": "nodes", "t_ms": 20, "nodes": {"r1": {}, "r2": {"role": "master"}}},
    ]
    gateway = [
        {"kind": "charge", "status": "succeeded", "created_ms": 15},
        {"kind": "charge", "status": "succeeded", "created_ms": 25},
        {"kind": "charge", "status": "declined", "created_ms": 26},
    ]
    assert first_failover_ms(monitor) == 20
    assert charges_after(gateway, 20) == 1
    assert first_failover_ms(monitor[:1]) is None


SOURCE_PROBE = """
import socket, sys
from tally.cli.serve_cmd import bind_outgoing
if sys.argv[2] == "bind":
    bind_outgoing("127.0.2.1")
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as s:
    s.recv(1)
"""


@pytest.mark.parametrize("mode,expected", [("bind", "127.0.2.1"), ("plain", "127.0.0.1")])
def test_source_address_is_the_address_every_outgoing_connection_comes_from(
    mode: str, expected: str
) -> None:
    """What keeps a lab serve on its data center's routes: the fronts route by source address.
    Without ``bind_outgoing`` the connection comes from 127.0.0.1 (the default route)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(20)
        port = listener.getsockname()[1]
        child = subprocess.Popen([sys.executable, "-c", SOURCE_PROBE, str(port), mode])
        try:
            conn, peer = listener.accept()
            conn.close()
        finally:
            child.wait(20)
    assert peer[0] == expected


def test_serve_refuses_a_source_address_with_uvloop_or_several_workers(tmp_path: object) -> None:
    """uvloop and worker processes open sockets the binding does not reach: refused before
    anything starts (exit 2), not silently half-applied."""
    for extra in (["--loop", "uvloop", "--workers", "1"], ["--loop", "asyncio", "--workers", "2"]):
        result = CliRunner().invoke(serve, ["--source-address", "127.0.2.1", *extra])
        assert result.exit_code == 2, result.output
        assert "--source-address needs --server uvicorn --loop asyncio --workers 1" in result.output
