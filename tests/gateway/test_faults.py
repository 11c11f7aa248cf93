"""Fault knobs: validated and bounded; declines reproducible from the seed alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tally.gateway import FakeGateway, Faults, Gateway, InvalidFaults, OutcomeStatus
from tally.gateway.process import SimulatorProcess

KEYS = [f"intent-{i}" for i in range(40)]


def declined_keys(gateway: Gateway) -> list[str]:
    outcomes = [gateway.charge(key, "card_1", 500, "USD") for key in KEYS]
    return [o.idempotency_key for o in outcomes if o.status is OutcomeStatus.declined]


def test_decline_rate_with_a_seed_declines_the_same_charges_in_fake_and_simulator(
    simulator: SimulatorProcess,
) -> None:
    simulator.set_faults(seed=7, decline_rate=0.5)
    with simulator.gateway() as http:
        over_http = declined_keys(http)
    in_memory = declined_keys(FakeGateway(Faults(seed=7, decline_rate=0.5)))
    assert over_http == in_memory
    assert 0 < len(in_memory) < len(KEYS)


def test_decline_rate_is_reproducible_across_simulator_runs(tmp_path: Path) -> None:
    runs = []
    for run in ("a", "b"):
        sim = SimulatorProcess(tmp_path / run, faults=Faults(seed=11, decline_rate=0.3))
        with sim, sim.gateway() as http:
            runs.append(declined_keys(http))
    assert runs[0] == runs[1]


def test_another_seed_declines_other_charges() -> None:
    first = declined_keys(FakeGateway(Faults(seed=1, decline_rate=0.5)))
    second = declined_keys(FakeGateway(Faults(seed=2, decline_rate=0.5)))
    assert first != second


def test_a_card_rate_overrides_the_default_rate() -> None:
    fake = FakeGateway(Faults(decline_rate=1.0, card_decline_rates={"card_ok": 0.0}))
    assert fake.charge("a", "card_ok", 500, "USD").status is OutcomeStatus.succeeded
    assert fake.charge("b", "card_1", 500, "USD").status is OutcomeStatus.declined


def test_velocity_window_forgets_charges_older_than_the_window() -> None:
    now = [1_000_000.0]
    fake = FakeGateway(Faults(velocity_max_charges=2, velocity_window_s=60), clock_s=lambda: now[0])
    statuses = [fake.charge(f"k{i}", "card_1", 500, "USD").status for i in range(3)]
    now[0] += 61
    later = fake.charge("k3", "card_1", 500, "USD")
    assert statuses[-1] is OutcomeStatus.declined
    assert later.status is OutcomeStatus.succeeded


def test_fake_latency_goes_through_the_injected_sleep() -> None:
    slept: list[float] = []
    fake = FakeGateway(Faults(latency_ms=250), sleep_s=slept.append)
    fake.charge("k", "card_1", 500, "USD")
    assert slept == [0.25]


@pytest.mark.parametrize(
    "patch",
    [
        {"latency_ms": -1},
        {"latency_ms": 10**9},
        {"decline_rate": 1.5},
        {"decline_rate": True},
        {"card_decline_rates": {"bad card": 0.5}},
        {"timeout_mode": "explode"},
        {"velocity_window_s": 0},
        {"outage": "yes"},
        {"no_such_knob": 1},
    ],
)
def test_bad_fault_knobs_are_refused(patch: dict[str, object]) -> None:
    with pytest.raises(InvalidFaults):
        Faults().merged(patch)


def test_faults_round_trip_through_json_names() -> None:
    faults = Faults(seed=3, card_decline_rates={"c1": 1.0}, velocity_max_charges=4)
    assert Faults.from_dict(faults.to_dict()) == faults
