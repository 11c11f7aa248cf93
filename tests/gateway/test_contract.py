"""The contract every gateway adapter keeps: run on FakeGateway and on HttpGateway against a
real simulator process. Nothing here measures time."""

from __future__ import annotations

import pytest

from tally.errors import InvalidAmount, InvalidId, UnknownCurrency
from tally.gateway import (
    DeclineReason,
    Gateway,
    GatewayUnavailable,
    IdempotencyConflict,
    OutcomeStatus,
)
from tally.gateway.bank import InvalidMetadata
from tests.gateway.conftest import Harness, charge_keys

succeeded, declined, unknown = (
    OutcomeStatus.succeeded,
    OutcomeStatus.declined,
    OutcomeStatus.unknown,
)


def test_adapter_is_a_gateway(harness: Harness) -> None:
    assert isinstance(harness.gateway, Gateway)


def test_charge_succeeds_once_and_its_replay_returns_the_first_result(harness: Harness) -> None:
    gw = harness.gateway
    first = gw.charge("intent-1", "card_1", 500, "USD", metadata={"account": "acc-1"})
    again = gw.charge("intent-1", "card_1", 500, "USD", metadata={"account": "acc-1"})
    assert first.status is succeeded and first.charge_id and not first.replayed
    assert again.status is succeeded and again.charge_id == first.charge_id and again.replayed
    assert [r.idempotency_key for r in harness.records()] == ["intent-1"]


def test_same_key_with_another_amount_is_a_clear_conflict_and_charges_nothing(
    harness: Harness,
) -> None:
    harness.gateway.charge("intent-1", "card_1", 500, "USD")
    with pytest.raises(IdempotencyConflict, match="amount_minor") as caught:
        harness.gateway.charge("intent-1", "card_1", 700, "USD")
    assert caught.value.fields == ("amount_minor",)
    with pytest.raises(IdempotencyConflict, match="card"):
        harness.gateway.charge("intent-1", "card_2", 500, "USD")
    assert len(harness.records()) == 1


def test_lookup_of_an_unused_key_finds_nothing(harness: Harness) -> None:
    assert harness.gateway.lookup("never-used") is None


def test_lookup_finds_the_charge_made_under_a_key(harness: Harness) -> None:
    made = harness.gateway.charge("intent-1", "card_1", 500, "USD")
    found = harness.gateway.lookup("intent-1")
    assert found is not None and found.status is succeeded and found.charge_id == made.charge_id


def test_declined_charge_replays_as_declined_even_after_the_card_recovers(harness: Harness) -> None:
    harness.set_faults(card_decline_rates={"card_bad": 1.0})
    first = harness.gateway.charge("intent-1", "card_bad", 500, "USD")
    harness.set_faults(card_decline_rates={})
    again = harness.gateway.charge("intent-1", "card_bad", 500, "USD")
    assert first.status is declined and first.reason is DeclineReason.card_declined
    assert again.status is declined and again.replayed
    assert harness.gateway.charge("intent-2", "card_bad", 500, "USD").status is succeeded


def test_velocity_rule_declines_the_charge_after_k_successes_on_one_card(harness: Harness) -> None:
    harness.set_faults(velocity_max_charges=3, velocity_window_s=3600)
    outcomes = charge_keys(harness.gateway, [f"shortfall-{i}" for i in range(5)])
    assert [o.status for o in outcomes] == [succeeded] * 3 + [declined] * 2
    assert {o.reason for o in outcomes[3:]} == {DeclineReason.velocity_limit}
    assert harness.gateway.charge("other-card", "card_2", 500, "USD").status is succeeded


def test_timeout_after_commit_is_unknown_and_lookup_finds_the_one_charge(harness: Harness) -> None:
    harness.set_faults(timeout_after_commit=1.0)
    lost = harness.gateway.charge("intent-1", "card_1", 500, "USD")
    assert lost.status is unknown and lost.charge_id is None
    found = harness.gateway.lookup("intent-1")
    assert found is not None and found.status is succeeded
    retried = harness.gateway.charge("intent-1", "card_1", 500, "USD")
    assert retried.status is succeeded and retried.charge_id == found.charge_id
    assert [(r.kind, r.response_fault) for r in harness.records()] == [("charge", "drop")]


def test_outage_is_unknown_never_declined_and_processes_nothing(harness: Harness) -> None:
    harness.set_faults(outage=True)
    during = harness.gateway.charge("intent-1", "card_1", 500, "USD")
    assert during.status is unknown
    with pytest.raises(GatewayUnavailable):
        harness.gateway.lookup("intent-1")
    harness.set_faults(outage=False)
    assert harness.gateway.lookup("intent-1") is None
    assert harness.records() == []
    assert harness.gateway.charge("intent-1", "card_1", 500, "USD").status is succeeded


def test_refund_is_idempotent_and_bounded_by_the_charge(harness: Harness) -> None:
    charge = harness.gateway.charge("intent-1", "card_1", 500, "USD")
    assert charge.charge_id is not None
    first = harness.gateway.refund("refund-1", charge.charge_id, 300)
    again = harness.gateway.refund("refund-1", charge.charge_id, 300)
    too_much = harness.gateway.refund("refund-2", charge.charge_id, 201)
    rest = harness.gateway.refund("refund-3", charge.charge_id, 200)
    assert first.status is succeeded and first.charge_id == charge.charge_id
    assert again.replayed and again.refund_id == first.refund_id
    assert too_much.reason is DeclineReason.amount_exceeds_refundable
    assert rest.status is succeeded
    with pytest.raises(IdempotencyConflict):
        harness.gateway.refund("refund-1", charge.charge_id, 100)
    succeeded_refunds = [
        r for r in harness.records() if r.kind == "refund" and r.status == "succeeded"
    ]
    assert sum(r.amount_minor for r in succeeded_refunds) == 500


def test_refund_of_an_unknown_or_declined_charge_is_declined(harness: Harness) -> None:
    harness.set_faults(card_decline_rates={"card_bad": 1.0})
    bad = harness.gateway.charge("intent-1", "card_bad", 500, "USD")
    assert bad.status is declined
    (record,) = harness.records()
    refused = harness.gateway.refund("refund-1", record.id, 100)
    missing = harness.gateway.refund("refund-2", "ch_0000009999", 100)
    assert refused.status is declined and refused.reason is DeclineReason.charge_not_refundable
    assert missing.status is declined and missing.reason is DeclineReason.charge_not_found


def test_a_charge_key_cannot_be_reused_for_a_refund(harness: Harness) -> None:
    charge = harness.gateway.charge("intent-1", "card_1", 500, "USD")
    assert charge.charge_id is not None
    with pytest.raises(IdempotencyConflict):
        harness.gateway.refund("intent-1", charge.charge_id, 500)


def test_refund_with_a_lost_response_is_unknown_and_its_replay_refunds_once(
    harness: Harness,
) -> None:
    charge = harness.gateway.charge("intent-1", "card_1", 500, "USD")
    assert charge.charge_id is not None
    harness.set_faults(timeout_after_commit=1.0)
    lost = harness.gateway.refund("refund-1", charge.charge_id, 500)
    harness.set_faults(timeout_after_commit=0.0)
    replay = harness.gateway.refund("refund-1", charge.charge_id, 500)
    assert lost.status is unknown
    assert replay.status is succeeded and replay.replayed
    assert [r.kind for r in harness.records()] == ["charge", "refund"]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("k", "card_1", 0, "USD"), InvalidAmount),
        (("k", "card_1", 5.0, "USD"), InvalidAmount),
        (("k", "card_1", True, "USD"), InvalidAmount),
        (("k", "card_1", 500, "XXX"), UnknownCurrency),
        (("k\n", "card_1", 500, "USD"), InvalidId),
        (("k", "", 500, "USD"), InvalidId),
        (("k" * 65, "card_1", 500, "USD"), InvalidId),
    ],
    ids=["zero", "float", "bool", "currency", "newline-key", "empty-card", "long-key"],
)
def test_invalid_charges_are_refused_before_anything_is_sent(
    harness: Harness, args: tuple[object, ...], error: type[Exception]
) -> None:
    with pytest.raises(error):
        harness.gateway.charge(*args)  # type: ignore[arg-type]
    assert harness.records() == []


def test_oversized_metadata_is_refused_before_anything_is_sent(harness: Harness) -> None:
    with pytest.raises(InvalidMetadata):
        harness.gateway.charge("k", "card_1", 500, "USD", metadata={"note": "x" * 501})
    with pytest.raises(InvalidMetadata):
        harness.gateway.charge("k", "card_1", 500, "USD", metadata={f"m{i}": "" for i in range(21)})
    assert harness.records() == []
