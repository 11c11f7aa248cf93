"""`tally serve` started during a failover waits (bounded) for a primary instead of exiting.

Found with the lab (chaos seed 2 and its regression scenario, 2026-12-04): serve-dc2, started
again while Sentinel was promoting a replica, exited at once with ``store_unavailable`` and
stayed down, so requests sent through dc2 after the heal went unanswered (the liveness rule
failed). Without ``Service._open_when_primary`` (``prepare_store`` called once, as before) the
first test's start raises on the first ``StoreUnavailable``. The store calls are replaced at
the module seam: what is judged is the start-up's decision, not Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tally.errors import StoreLost, StoreNotEnoughReplicas, StoreUnavailable
from tally.service import runner
from tally.service.runner import ServeOptions, Service

SENTINEL_URL = "sentinel://127.0.0.1:1,127.0.0.1:2/tally"


def _service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failures: list[Exception],
             url: str = SENTINEL_URL) -> tuple[Service, list[str]]:  # fmt: skip
    """A Service whose epoch check raises each of ``failures`` once, then passes."""
    calls: list[str] = []

    def prepare(*_: Any, **__: Any) -> None:
        calls.append("prepare")
        if failures:
            raise failures.pop(0)

    monkeypatch.setattr(runner, "prepare_store", prepare)
    monkeypatch.setattr(runner, "open_deployment", lambda _settings: "deployment")
    monkeypatch.setattr(Service, "_first_writes", lambda _self, dep: dep)
    monkeypatch.setattr(runner, "STARTUP_PRIMARY_PACE_S", 0.01)
    said: list[str] = []
    service = Service(ServeOptions(home=tmp_path, redis_url=url), say=said.append)
    settings = runner.Settings.resolve(redis_url=url, ledger_url=None, home=str(tmp_path))
    opened = service._open_when_primary(settings)
    assert opened == "deployment"
    return service, calls + said


def test_a_start_during_a_failover_waits_for_the_primary_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_over = StoreUnavailable("Sentinel s1 is failing over 127.0.1.1:7001")
    _, seen = _service(tmp_path, monkeypatch, [failing_over, failing_over])
    assert seen.count("prepare") == 3
    assert any("waiting for the primary" in line and "failing over" in line for line in seen)


def test_the_wait_is_bounded_and_other_errors_fail_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "STARTUP_PRIMARY_WAIT_S", 0.0)
    with pytest.raises(StoreUnavailable):
        _service(tmp_path, monkeypatch, [StoreUnavailable("no Sentinel named a primary")])
    monkeypatch.setattr(runner, "STARTUP_PRIMARY_WAIT_S", 30.0)
    with pytest.raises(StoreLost):  # a lost store is not waited for: the operator must act
        _service(tmp_path, monkeypatch, [StoreLost("empty")])


def test_a_plain_url_is_not_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StoreUnavailable):
        _service(tmp_path, monkeypatch, [StoreUnavailable("refused")], url="redis://127.0.0.1:1/0")


def test_a_primary_with_too_few_replicas_for_the_first_writes_is_waited_for_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 20-seed chaos run, seed 3 (2026-12-04): serve-dc2 started again, found the primary,
    and exited with store_not_enough_replicas when it loaded its scripts and re-applied pending
    credits; started again by the lab's supervisor, it was not answering yet when liveness was
    judged. The first writes now sit inside the wait; a deployment whose first writes failed
    is closed before the next attempt."""
    closed: list[str] = []

    class Dep:
        def __init__(self, fail: bool) -> None:
            self.fail = fail

        def close(self) -> None:
            closed.append("closed")

    deps = iter([Dep(True), Dep(False)])
    monkeypatch.setattr(runner, "prepare_store", lambda *_a, **_k: None)
    monkeypatch.setattr(runner, "open_deployment", lambda _settings: next(deps))
    monkeypatch.setattr(runner, "STARTUP_PRIMARY_PACE_S", 0.01)

    def first_writes(self: Service, dep: Any) -> Any:
        if dep.fail:
            dep.close()
            raise StoreNotEnoughReplicas("NOREPLICAS Not enough good replicas to write")
        return dep

    monkeypatch.setattr(Service, "_first_writes", first_writes)
    service = Service(ServeOptions(home=tmp_path, redis_url=SENTINEL_URL), say=lambda _m: None)
    settings = runner.Settings.resolve(redis_url=SENTINEL_URL, ledger_url=None, home=str(tmp_path))
    assert service._open_when_primary(settings).fail is False
    assert closed == ["closed"]
