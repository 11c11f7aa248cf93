"""A real worker process SIGKILLed right after the gateway charged the card: the completer in
another process finishes the recharge, and the card carries exactly one charge."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tally.bootstrap import Deployment
from tally.config import Settings
from tally.domain.recharge import RechargePhase
from tally.gateway.process import SimulatorProcess

from .conftest import balance, complete_all, open_customer, wire

MARKER_WAIT_S = 30.0


def test_a_worker_killed_after_the_card_was_charged_is_finished_once_by_the_completer(
    dep: Deployment, simulator: SimulatorProcess, settings: Settings, tmp_path: Path
) -> None:
    with simulator.gateway() as gateway:
        r = wire(dep, gateway)
        open_customer(r, dep)
        opened = dep.engine.debit("u1", "acme", 600)
        assert opened.recharge_id is not None
        r.service.notice("acme", 600, opened, drive=False)
        marker = tmp_path / "reached"
        child = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("saga_child.py")),
                settings.require_redis_url(),
                settings.ledger_url,
                str(settings.home),
                simulator.url,
                opened.recharge_id,
                "after_charge",
                str(marker),
            ],
        )
        try:
            deadline = time.monotonic() + MARKER_WAIT_S
            while not marker.exists() and time.monotonic() < deadline and child.poll() is None:
                time.sleep(0.05)
            assert marker.exists(), "the worker never reached the recovery point"
        finally:
            child.kill()
            child.wait(timeout=10)
        stuck = r.saga.book.get(opened.recharge_id)
        assert stuck is not None and stuck.phase is RechargePhase.intent  # charged, not recorded
        complete_all(r)
    with simulator.admin() as admin:
        charged = [x for x in admin.records() if x.kind == "charge"]
    assert [(c.idempotency_key, c.status) for c in charged] == [(opened.recharge_id, "succeeded")]
    assert r.saga.metrics.charges_sent == 0  # resolved by lookup, not by charging again
    assert balance(dep) == 2000
