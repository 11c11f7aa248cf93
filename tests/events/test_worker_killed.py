"""The delivery worker killed (SIGKILL) mid-batch loses no event (issue 16, item 6): its state
is in the ledger; the restarted worker sends the event that was in flight again, under the same
``webhook-id`` (at least once: the receiver dedupes on it), then the rest, in order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tally.ledger.sql_ledger import SqlLedger
from tally.ledger.sql_webhooks import WebhookBook
from tests.waiting import wait_for

from .conftest import Receiver

EVENTS = 12
STALL_AT = 5  # the 6th request is received, then the worker is killed waiting for the answer


def _child(ledger_url: str) -> subprocess.Popen[bytes]:
    script = str(Path(__file__).with_name("delivery_child.py"))
    return subprocess.Popen([sys.executable, script, ledger_url, "owner-1"])


def test_a_worker_killed_mid_batch_loses_no_event_and_resends_the_one_in_flight(
    sqlite_ledger_url: str, receiver: Receiver
) -> None:
    with SqlLedger.open(sqlite_ledger_url) as ledger:
        endpoint, receiver.secret = WebhookBook(ledger).register(receiver.url, None)
        ids = []
        for i in range(EVENTS):
            with ledger.unit() as uow:
                ids.append(uow.emit("hold.expired", {"n": i}).event_id)
        receiver.stall_at = STALL_AT
        child = _child(sqlite_ledger_url)
        try:
            assert receiver.stalled.wait(60), "the worker never reached the stalled request"
            child.kill()
            child.wait(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)
        receiver.release.set()
        book = WebhookBook(ledger)
        states = [d.state for d in book.deliveries(endpoint.id)]
        assert states == ["delivered"] * STALL_AT + ["pending"] * (EVENTS - STALL_AT)
        restarted = _child(sqlite_ledger_url)
        try:
            wait_for(
                lambda: [d.state for d in book.deliveries(endpoint.id)] == ["delivered"] * EVENTS,
                "every event delivered after the restart",
            )
        finally:
            restarted.kill()
            restarted.wait(timeout=10)
    got = receiver.ids()
    assert receiver.rejected == []
    assert got == ids[: STALL_AT + 1] + ids[STALL_AT:]  # the in-flight one twice, same id
    assert list(dict.fromkeys(got)) == ids  # deduped by webhook-id: each once, in order
