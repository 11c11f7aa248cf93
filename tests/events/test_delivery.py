"""Webhook delivery (issue 16, item 6): signed per Standard Webhooks and verified by a real
receiver with the same library; ``webhook-id`` stable across retries; exponential backoff with
a cap and jitter; dead letters after the last attempt; ordered per endpoint, head-of-line."""

from __future__ import annotations

import random

import pytest

from tally.domain.events import backoff_ms
from tally.errors import ConfigError, UsageError
from tally.ledger.sql_ledger import SqlLedger
from tally.ledger.sql_webhooks import WebhookBook
from tally.ledger.sqlutil import now_ms
from tally.service.delivery import DeliveryOptions, DeliveryWorker

from .conftest import Receiver


class Clock:
    def __init__(self) -> None:
        self.ms = now_ms()

    def __call__(self) -> int:
        return self.ms


def _emit(ledger: SqlLedger, n: int, type_: str = "hold.expired") -> list[str]:
    ids = []
    for i in range(n):
        with ledger.unit() as uow:
            ids.append(uow.emit(type_, {"n": i}).event_id)
    return ids


def _worker(
    ledger: SqlLedger, clock: Clock, owner: str = "w1", **options: int | float
) -> DeliveryWorker:
    opts = DeliveryOptions(**{"timeout_s": 5.0, **options})  # type: ignore[arg-type]
    return DeliveryWorker(ledger, owner=owner, options=opts, clock_ms=clock, rng=random.Random(7))


def _register(ledger: SqlLedger, receiver: Receiver, types: list[str] | None = None) -> str:
    endpoint, secret = WebhookBook(ledger).register(receiver.url, types)
    receiver.secret = secret
    return endpoint.id


def test_events_are_delivered_signed_in_cursor_order_and_the_receiver_verifies_them(
    ledger: SqlLedger, receiver: Receiver
) -> None:
    _emit(ledger, 2)  # before the endpoint existed: not delivered (the pull API has them)
    endpoint_id = _register(ledger, receiver)
    ids = _emit(ledger, 5)
    worker = _worker(ledger, Clock())
    assert worker.run_once() == 5
    assert worker.run_once() == 0
    assert receiver.rejected == []
    assert receiver.ids() == ids
    first = receiver.received[0]["event"]
    assert first["id"] == ids[0] and first["type"] == "hold.expired" and first["data"] == {"n": 0}
    assert [r["event"]["cursor"] for r in receiver.received] == sorted(
        r["event"]["cursor"] for r in receiver.received
    )
    states = {d.state for d in WebhookBook(ledger).deliveries(endpoint_id)}
    assert states == {"delivered"}
    assert worker.metrics.attempts == {"delivered": 5}


def test_a_receiver_with_another_secret_rejects_the_signature(
    ledger: SqlLedger, receiver: Receiver
) -> None:
    """The check can fail: the receiver's verification is real."""
    _register(ledger, receiver)
    receiver.secret = "whsec_" + "QUJD" * 8  # another key
    _emit(ledger, 1)
    _worker(ledger, Clock()).run_once()
    assert receiver.received == [] and len(receiver.rejected) == 1


def test_only_the_endpoints_event_types_are_delivered(
    ledger: SqlLedger, receiver: Receiver
) -> None:
    _register(ledger, receiver, ["billing.frozen"])
    _emit(ledger, 2)
    wanted = _emit(ledger, 1, "billing.frozen")
    _worker(ledger, Clock()).run_once()
    assert receiver.ids() == wanted


def test_a_failing_endpoint_is_retried_with_backoff_under_the_same_webhook_id_then_dead_lettered(
    ledger: SqlLedger, receiver: Receiver
) -> None:
    """Every attempt fails: the head event is tried ``attempts_max`` times, never before its
    backoff elapsed, always with the same ``webhook-id``; then it is dead and the next event
    goes out (head-of-line until dead)."""
    receiver.status_for = lambda n: 500 if n < 3 else 200
    endpoint_id = _register(ledger, receiver)
    ids = _emit(ledger, 2)
    clock = Clock()
    worker = _worker(ledger, clock, attempts_max=3, backoff_base_ms=1000, backoff_cap_ms=3000)
    assert worker.run_once() == 1  # the head failed; the second event waits behind it
    assert worker.run_once() == 0  # not due yet: no request
    pauses = []
    for _ in range(2):
        head = WebhookBook(ledger).head(endpoint_id)
        assert head is not None
        pauses.append(head[0].next_attempt_at_ms - clock.ms)
        clock.ms = head[0].next_attempt_at_ms
        worker.run_once()
    assert 500 <= pauses[0] <= 1000 and 1000 <= pauses[1] <= 2000  # doubling, jittered
    assert receiver.ids() == [ids[0], ids[0], ids[0], ids[1]]
    book = WebhookBook(ledger)
    dead = book.deliveries(endpoint_id, state="dead")
    assert [(d.attempts, d.last_status, d.last_error) for d in dead] == [(3, 500, "HTTP 500")]
    assert [d.state for d in book.deliveries(endpoint_id)] == ["dead", "delivered"]
    assert worker.metrics.attempts == {"failed": 2, "dead": 1, "delivered": 1}


def test_an_unreachable_endpoint_fails_within_the_timeout_and_waits(ledger: SqlLedger) -> None:
    endpoint, _ = WebhookBook(ledger).register("http://127.0.0.1:9/nothing", None)
    _emit(ledger, 1)
    worker = _worker(ledger, Clock(), timeout_s=1.0)
    assert worker.run_once() == 1
    (delivery,) = WebhookBook(ledger).deliveries(endpoint.id)
    assert delivery.state == "pending" and delivery.attempts == 1
    assert delivery.last_error is not None and "Connect" in delivery.last_error


def test_one_request_in_flight_per_endpoint_across_workers(
    ledger: SqlLedger, receiver: Receiver
) -> None:
    """A second worker (another ``tally serve`` on the same ledger) finds the endpoint leased
    and sends nothing; once the lease is released, it may."""
    endpoint_id = _register(ledger, receiver)
    _emit(ledger, 1)
    book = WebhookBook(ledger)
    assert book.lease(endpoint_id, "w1", 60_000)
    assert _worker(ledger, Clock(), owner="w2").run_once() == 0
    assert receiver.ids() == []
    book.release(endpoint_id, "w1")
    assert _worker(ledger, Clock(), owner="w2").run_once() == 1


def test_a_deleted_endpoint_gets_nothing_more(ledger: SqlLedger, receiver: Receiver) -> None:
    endpoint_id = _register(ledger, receiver)
    assert WebhookBook(ledger).delete(endpoint_id)
    assert not WebhookBook(ledger).delete(endpoint_id)
    _emit(ledger, 1)
    assert _worker(ledger, Clock()).run_once() == 0
    assert receiver.requests == 0


def test_the_backoff_doubles_up_to_its_cap_with_bounded_jitter() -> None:
    rng = random.Random(1)
    for attempts in range(1, 30):
        full = min(3_600_000, 1000 * 2 ** (attempts - 1))
        pause = backoff_ms(attempts, rng=rng)
        assert full // 2 <= pause <= full
    assert {backoff_ms(1, rng=random.Random(s)) for s in range(50)} != {1000}  # jittered
    with pytest.raises(UsageError):
        backoff_ms(0)


def test_delivery_options_are_bounded() -> None:
    for bad in (
        {"timeout_s": 0},
        {"attempts_max": 0},
        {"backoff_base_ms": 10, "backoff_cap_ms": 5},
    ):
        with pytest.raises(ConfigError):
            DeliveryOptions(**bad)  # type: ignore[arg-type]
