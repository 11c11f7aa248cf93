"""The lab's supervisor of the `tally serve` processes (``ServeBilling.supervise``): a serve that
exited on its own is launched again, one a fault killed is not, and the launches are bounded.

Found with the chaos-seed-2 scenario: serve-dc2, launched again after its kill -9 while dc2 was
cut off, exited at once (``store_unavailable``: primary unreachable) and stayed down until the
run settled (reg-before run, 2026-12-04: serve-dc2.log ends with that error, starts 3). Before
``supervise`` nothing launched it again: the first test's serve stays exited (no call at all)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

import httpx
import pytest

from tally.lab import serve_billing
from tally.lab.serve_billing import ServeBilling


@dataclass
class FakeServe:
    """A ServeProcess's lifecycle with a real child process that exits at once with ``code``."""

    name: str
    dc: str
    code: int = 3
    process: subprocess.Popen[bytes] | None = None
    exits: list[int] = field(default_factory=list)
    starts: int = 0

    def launch(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({self.code})"])
        self.process.wait(timeout=30)
        self.starts += 1

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        self.process = None


def _billing(*serves: FakeServe) -> ServeBilling:
    billing = ServeBilling.__new__(ServeBilling)  # no rig: only the supervisor's state
    billing.serves = list(serves)  # type: ignore[arg-type]
    billing._stopped = set()
    billing.supervisor_starts = {s.name: 0 for s in serves}
    return billing


def test_a_serve_that_exited_on_its_own_is_launched_again_and_its_exit_kept() -> None:
    dc1, dc2 = FakeServe("serve-dc1", "dc1"), FakeServe("serve-dc2", "dc2")
    billing = _billing(dc1, dc2)
    dc2.launch()  # exits 3 at once, as a serve cut from its primary does
    assert billing.supervise() == ["serve-dc2"]
    assert dc2.starts == 2 and dc2.exits == [3]
    assert dc1.starts == 0  # never launched: nothing to supervise


def test_a_serve_a_fault_killed_stays_down_until_the_fault_launches_it() -> None:
    dc2 = FakeServe("serve-dc2", "dc2")
    billing = _billing(dc2)
    dc2.launch()
    billing._stopped.add("dc2")  # what serve_action("kill", "dc2") records
    assert billing.supervise() == []
    assert dc2.starts == 1


def test_the_supervisor_gives_up_after_its_bound() -> None:
    dc2 = FakeServe("serve-dc2", "dc2")
    billing = _billing(dc2)
    dc2.launch()
    launched = sum(len(billing.supervise()) for _ in range(serve_billing.SUPERVISOR_STARTS_MAX + 5))
    assert launched == serve_billing.SUPERVISOR_STARTS_MAX


def test_a_set_up_call_with_an_unknown_outcome_is_retried_through_the_other_serve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seen on this loaded machine (chaos seed 2, 2026-12-04): PUT recharge-rule answered 503
    outcome_unknown (a replica's WAIT outlasted its timeout) and the whole run ended in a setup
    error (exit 2); before ``_set_up`` the first 503 was final. A retried create that finds the
    account was the first attempt's."""
    answers = iter([httpx.Response(503, json={"code": "outcome_unknown"}),
                    httpx.Response(409, json={"code": "account_exists"})])  # fmt: skip
    vias: list[int] = []

    def call(via: int, *_: object, **__: object) -> httpx.Response:
        vias.append(via)
        return next(answers)

    billing = _billing()
    monkeypatch.setattr(serve_billing.time, "sleep", lambda _s: None)
    monkeypatch.setattr(billing, "_call", call)
    assert billing._set_up("POST", "/v1/accounts", {"id": "a1"}) is None
    assert vias == [0, 1]
    refused = iter([httpx.Response(422, json={"code": "invalid"})])
    monkeypatch.setattr(billing, "_call", lambda *_a, **_k: next(refused))
    assert "422" in (billing._set_up("PUT", "/v1/accounts/a1/recharge-rule", {}) or "")
