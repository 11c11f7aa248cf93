"""The simulator as a real process over HTTP: durability, the wire format, lost responses,
hung and dead gateways, and the process helper. No timed assertions."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tally.errors import ProcessError, UsageError
from tally.gateway import GatewayUnavailable, OutcomeStatus
from tally.gateway.client import HttpGateway
from tally.gateway.process import SimulatorProcess
from tally.gateway.server import BODY_BYTES_MAX, check_loopback
from tests.gateway.conftest import assert_gone

RECORD_FIELDS = {
    "seq", "kind", "id", "idempotency_key", "card", "amount_minor", "currency", "metadata",
    "charge_id", "status", "reason", "response_fault", "created_ms", "created_at",
}  # fmt: skip


def post_charge(sim: SimulatorProcess, key: str | None, body: object) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return httpx.post(f"{sim.url}/v1/charges", json=body, headers=headers, trust_env=False)


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_records_survive_a_restart_and_replays_still_return_the_first_result(
    simulator: SimulatorProcess, how: str, tmp_path: Path
) -> None:
    with simulator.gateway() as gw:
        first = gw.charge("intent-1", "card_1", 500, "USD", metadata={"account": "acc-1"})
        assert first.charge_id is not None
        gw.refund("refund-1", first.charge_id, 200)
    port = simulator.port
    simulator.stop() if how == "stop" else simulator.kill()
    simulator.start()
    assert simulator.port == port
    with simulator.gateway() as gw:
        replay = gw.charge("intent-1", "card_1", 500, "USD", metadata={"account": "acc-1"})
        later = gw.charge("intent-2", "card_1", 500, "USD")
    assert replay.replayed and replay.charge_id == first.charge_id
    assert later.charge_id not in (first.charge_id, None)
    assert simulator.export_jsonl(tmp_path / "gateway.jsonl") == 3


def test_export_writes_one_json_record_per_line_with_key_card_amount_outcome_and_time(
    simulator: SimulatorProcess, tmp_path: Path
) -> None:
    simulator.set_faults(card_decline_rates={"card_bad": 1.0})
    with simulator.gateway() as gw:
        gw.charge("intent-1", "card_1", 500, "USD")
        gw.charge("intent-2", "card_bad", 700, "EUR")
    simulator.stop()
    out = tmp_path / "gateway.jsonl"
    assert simulator.export_jsonl(out) == 2
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(set(line) == RECORD_FIELDS for line in lines)
    assert [(r["idempotency_key"], r["card"], r["amount_minor"], r["status"]) for r in lines] == [
        ("intent-1", "card_1", 500, "succeeded"),
        ("intent-2", "card_bad", 700, "declined"),
    ]
    assert lines[1]["reason"] == "card_declined" and lines[0]["created_at"].endswith("Z")


def test_a_response_delayed_past_the_client_timeout_is_unknown_and_lookup_resolves_it(
    simulator: SimulatorProcess,
) -> None:
    simulator.set_faults(timeout_after_commit=1.0, timeout_mode="delay", timeout_delay_ms=2000)
    with simulator.gateway(read_timeout_s=0.2) as gw:
        lost = gw.charge("intent-1", "card_1", 500, "USD")
        found = gw.lookup("intent-1")
    assert lost.status is OutcomeStatus.unknown and "Timeout" in lost.detail
    assert found is not None and found.status is OutcomeStatus.succeeded


def test_a_stopped_gateway_gives_unknown_charges_and_unavailable_lookups(
    simulator: SimulatorProcess,
) -> None:
    gw = simulator.gateway(connect_timeout_s=1.0)
    simulator.stop()
    try:
        outcome = gw.charge("intent-1", "card_1", 500, "USD")
        assert outcome.status is OutcomeStatus.unknown and "Connect" in outcome.detail
        with pytest.raises(GatewayUnavailable):
            gw.lookup("intent-1")
    finally:
        gw.close()


def test_a_retry_with_the_same_key_after_a_hung_gateway_charges_once(
    simulator: SimulatorProcess,
) -> None:
    with simulator.gateway(read_timeout_s=0.2) as gw:
        simulator.pause()
        try:
            hung = gw.charge("intent-1", "card_1", 500, "USD")
        finally:
            simulator.resume()
    with simulator.gateway() as gw:
        retried = gw.charge("intent-1", "card_1", 500, "USD")
    assert hung.status is OutcomeStatus.unknown
    assert retried.status is OutcomeStatus.succeeded
    with simulator.admin() as admin:
        assert [r.idempotency_key for r in admin.records()] == ["intent-1"]


def test_concurrent_requests_with_one_key_make_one_charge(simulator: SimulatorProcess) -> None:
    with simulator.gateway() as gw, ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda _: gw.charge("k", "card_1", 500, "USD"), range(24)))
    assert {o.charge_id for o in outcomes} != {None}
    assert len({o.charge_id for o in outcomes}) == 1
    assert sum(not o.replayed for o in outcomes) == 1


def test_wire_format_answers_402_for_declines_and_marks_replays(
    simulator: SimulatorProcess,
) -> None:
    simulator.set_faults(card_decline_rates={"card_bad": 1.0})
    body = {"card": "card_bad", "amount_minor": 500, "currency": "USD"}
    first, again = post_charge(simulator, "k", body), post_charge(simulator, "k", body)
    assert first.status_code == again.status_code == 402
    assert first.json()["error"]["code"] == "card_declined"
    assert first.headers["idempotent-replayed"] == "false"
    assert again.headers["idempotent-replayed"] == "true"


def test_wire_format_answers_409_naming_the_differing_parameters(
    simulator: SimulatorProcess,
) -> None:
    post_charge(simulator, "k", {"card": "card_1", "amount_minor": 500, "currency": "USD"})
    other = post_charge(simulator, "k", {"card": "card_1", "amount_minor": 501, "currency": "USD"})
    assert other.status_code == 409
    assert other.json()["error"]["fields"] == ["amount_minor"]


@pytest.mark.parametrize(
    ("key", "body", "status"),
    [
        (None, {"card": "card_1", "amount_minor": 500, "currency": "USD"}, 400),
        ("k", {"card": "card_1", "amount_minor": 500, "currency": "USD", "x": 1}, 400),
        ("k", {"card": "card_1", "amount_minor": "500", "currency": "USD"}, 400),
        ("k", [1, 2], 400),
        ("k", {"card": "card_1", "metadata": {"n": "x" * BODY_BYTES_MAX}}, 413),
    ],
    ids=["no-key", "unknown-field", "string-amount", "not-object", "too-large"],
)
def test_malformed_requests_are_refused_and_not_recorded(
    simulator: SimulatorProcess, key: str | None, body: object, status: int
) -> None:
    assert post_charge(simulator, key, body).status_code == status
    with simulator.admin() as admin:
        assert admin.records() == []


def test_records_are_paged_oldest_first(simulator: SimulatorProcess) -> None:
    with simulator.gateway() as gw:
        for i in range(3):
            gw.charge(f"k{i}", "card_1", 500, "USD")
    page = httpx.get(f"{simulator.url}/v1/records?limit=2", trust_env=False).json()
    rest = httpx.get(
        f"{simulator.url}/v1/records?after_seq={page['next_after_seq']}", trust_env=False
    ).json()
    assert [r["idempotency_key"] for r in page["records"]] == ["k0", "k1"] and page["has_more"]
    assert [r["idempotency_key"] for r in rest["records"]] == ["k2"]


def test_faults_set_at_start_apply_and_survive_a_restart(tmp_path: Path) -> None:
    sim = SimulatorProcess(tmp_path / "gw")
    with sim:
        sim.set_faults(velocity_max_charges=1)
        sim.restart()
        with sim.gateway() as gw:
            outcomes = [gw.charge(f"k{i}", "card_1", 500, "USD").status for i in range(2)]
    assert outcomes == [OutcomeStatus.succeeded, OutcomeStatus.declined]


def test_start_on_a_taken_port_fails_fast_and_leaves_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        sim = SimulatorProcess(tmp_path / "gw", port=taken.getsockname()[1])
        with pytest.raises(ProcessError, match="exited"):
            sim.start()
    assert sim.process is None


def test_stop_reaps_the_simulator_even_when_paused(tmp_path: Path) -> None:
    sim = SimulatorProcess(tmp_path / "gw")
    sim.start()
    pid = sim.pid
    sim.pause()
    sim.stop()
    assert_gone(pid)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "example.com"])
def test_the_simulator_binds_loopback_only(host: str) -> None:
    with pytest.raises(UsageError):
        check_loopback(host)


def test_http_gateway_talks_to_loopback_only() -> None:
    with pytest.raises(UsageError):
        HttpGateway("http://203.0.113.5:8080")
