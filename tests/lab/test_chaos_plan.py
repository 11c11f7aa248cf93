"""The chaos schedule: seeded (the same seed gives the same schedule), bounded concurrency, no
two faults sharing one heal overlap, every fault healed before the quiet tail; the liveness rule
judges only what was invoked after the heal."""

from __future__ import annotations

import pytest

from tally.lab.chaos import (
    QUIET_S,
    RESOURCE,
    liveness,
    plan,
)

NODES, DCS = ("r1", "r2", "r3"), ("dc1", "dc2", "dc3")


def _plan(seed: int, faults_max: int = 2, duration_s: float = 120.0):  # type: ignore[no-untyped-def]
    return plan(seed, duration_s, faults_max, nodes=NODES, primary="r1", dcs=DCS)


@pytest.mark.parametrize("seed", range(30))
def test_a_schedule_is_bounded_healed_and_never_lets_one_heal_end_another_fault(seed: int) -> None:
    p = _plan(seed, faults_max=1 + seed % 3)
    assert p.windows, "a 120 s run gets faults"
    assert p.healed_at_s <= 120.0 - QUIET_S + 1e-9
    for t in {w.start_s for w in p.windows}:
        active = [w for w in p.windows if w.start_s <= t < w.end_s]
        assert len(active) <= p.faults_max
        resources = [RESOURCE[w.kind] for w in active]
        assert len(resources) == len(set(resources))
    assert all(w.end_s > w.start_s for w in p.windows)


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    assert _plan(7).schedule() == _plan(7).schedule()
    assert _plan(7).schedule() != _plan(8).schedule()


def test_every_fault_step_has_its_heal_in_the_steps() -> None:
    p = _plan(3, faults_max=3)
    steps = p.steps()
    assert [s.at_s for s in steps] == sorted(s.at_s for s in steps)
    assert sum(1 for s in steps if s.fault) == len(p.windows)


def test_a_run_too_short_for_a_fault_and_the_quiet_tail_is_refused() -> None:
    with pytest.raises(ValueError, match="duration"):
        _plan(1, duration_s=QUIET_S)


def _op(op: int, t_invoke: int, kind: str, t_done: int) -> list[dict[str, object]]:
    return [
        {"op": op, "type": "invoke", "t_ms": t_invoke},
        {"op": op, "type": kind, "t_ms": t_done},
    ]


def test_liveness_judges_requests_after_the_heal_only_and_needs_an_answer_in_time() -> None:
    history = _op(1, 100, "info", 9_000) + _op(2, 1_000, "ok", 1_050) + _op(3, 1_100, "ok", 1_200)
    held = liveness(history, since_ms=1_000, bound_s=1.0)
    assert held.held and held.judged == 2 and held.worst_s == pytest.approx(0.1)
    slow = liveness(history + _op(4, 2_000, "ok", 4_000), since_ms=1_000, bound_s=1.0)
    assert not slow.held and slow.slow == [4]
    unanswered = liveness(history + _op(5, 2_000, "fail", 2_010), since_ms=1_000, bound_s=1.0)
    assert not unanswered.held and unanswered.incomplete == [5]


def _attempt(
    op: int, f: str, tid: str, t_invoke: int, kind: str, t_done: int
) -> list[dict[str, object]]:
    return [
        {"op": op, "type": "invoke", "f": f, "value": {"id": tid}, "t_ms": t_invoke},
        {"op": op, "type": kind, "t_ms": t_done},
    ]


def test_liveness_judges_a_request_retried_by_id_as_one_request_from_its_first_attempt() -> None:
    """A debit whose first attempt's outcome was unknown, retried by id through the other data
    center and answered ok, was served: one request, timed from its first attempt. Before,
    each attempt was judged alone and the unknown one counted as unserved (the 20-seed run's
    seeds 6 and 7)."""
    retried = _attempt(1, "debit", "u1", 1_000, "info", 1_500) + _attempt(
        2, "debit", "u1", 1_600, "ok", 1_700
    )
    held = liveness(retried, since_ms=1_000, bound_s=1.0)
    assert (held.held, held.judged, held.incomplete, held.worst_s) == (True, 1, [], 0.7)
    late = retried + _attempt(3, "topup", "t1", 2_000, "info", 2_500)
    late += _attempt(4, "topup", "t1", 2_600, "ok", 3_200)
    slow = liveness(late, since_ms=1_000, bound_s=1.0)
    assert (slow.held, slow.judged, slow.slow, slow.worst_s) == (False, 2, [3], 1.2)
    never = retried + _attempt(5, "debit", "u2", 2_000, "info", 2_500)
    never += _attempt(6, "debit", "u2", 2_600, "info", 3_000)
    unserved = liveness(never, since_ms=1_000, bound_s=10.0)
    assert (unserved.held, unserved.incomplete) == (False, [5])
    # a hold, a read: not retried by the caller, each attempt is its own request
    holds = _attempt(7, "hold", "h1", 1_000, "info", 1_100) + _attempt(
        8, "hold", "h1", 1_200, "ok", 1_300
    )
    assert liveness(holds, since_ms=1_000, bound_s=1.0).incomplete == [7]


def test_the_vocabulary_reaches_the_serve_processes_and_every_serve_fault_is_undone() -> None:
    """Issue 13: the subject's processes are part of the fault surface. Over 30 seeds the
    schedules kill, stall and cut `tally serve` processes, and each such window ends with the
    step that undoes it on the same data center (launch, resume, heal)."""
    kinds: set[str] = set()
    for seed in range(30):
        for w in _plan(seed).windows:
            if not w.kind.startswith("serve_"):
                continue
            kinds.add(w.kind)
            fault, undo = w.steps()
            assert fault.fault and not undo.fault and undo.at_s == w.end_s
            if w.kind == "serve_cut":
                dc, what = w.target.split(":")
                assert fault.args == {"dc": dc, "target": what, "mode": "drop"}
                assert undo.action == "heal"
            else:
                assert fault.args["dc"] == undo.args["dc"] == w.target
                assert (fault.args["action"], undo.args["action"]) in (
                    ("kill", "launch"),
                    ("pause", "resume"),
                )
    assert kinds == {"serve_kill", "serve_pause", "serve_cut"}
