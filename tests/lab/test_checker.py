"""The checker on hand-made runs: a clean run passes, and every planted anomaly is found.
Without these, a lab that always says "held" would look exactly like a working one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tally.lab.checker import FIGURES, INVARIANTS, check_dir
from tally.lab.history import HistoryWriter, read_history

from .artefacts import T0, Run

NODE_UP = {"role": "master", "run_id": "r1a", "epoch": 4, "sync_full": 0, "sync_partial_ok": 0}


def clean_run(tmp_path: Path) -> Run:
    """One funded account, a recharge charged and credited, usage debits: nothing wrong."""
    run = Run(tmp_path / "run")
    run.account("a1")
    run.transfer("fund-a1", "credit", "a1", 1000, T0)
    run.client_op(
        "credit",
        {"id": "fund-a1", "account": "a1", "amount_minor": 1000},
        "ok",
        {"result": "ok"},
        T0,
    )
    for i in range(5):
        run.transfer(f"d{i}", "debit", "a1", 150, T0 + 100 * i + 50)
        run.client_op(
            "debit",
            {"id": f"d{i}", "account": "a1", "amount_minor": 150},
            "ok",
            {"result": "ok"},
            T0 + 100 * i + 48,
        )
    run.recharges.append(("rc1", "a1", T0 + 600))
    run.charge("rc1", "a1", 500, T0 + 610)
    run.transfer("rc1", "credit", "a1", 500, T0 + 620)
    for t in range(0, 1000, 250):
        run.nodes_sample(T0 + t, r1=NODE_UP)
    return run


def test_a_clean_run_holds_every_invariant_and_every_figure_is_zero(tmp_path: Path) -> None:
    verdict = check_dir(clean_run(tmp_path).write())
    assert set(verdict.figures) == set(FIGURES)
    assert set(verdict.invariants) == set(INVARIANTS)
    assert verdict.ok, verdict.invariants
    for name in FIGURES:
        if not name.startswith("primary_latency"):
            assert verdict.figures[name] == 0, name


def test_a_second_charge_before_the_first_was_credited_is_a_double_charge(tmp_path: Path) -> None:
    run = clean_run(tmp_path)
    run.recharges.append(("rc2", "a1", T0 + 611))
    run.charge("rc2", "a1", 500, T0 + 615)  # rc1's credit lands at +620: same shortfall
    run.transfer("rc2", "credit", "a1", 500, T0 + 630)
    verdict = check_dir(run.write())
    assert verdict.figures["cards_charged_more_than_once"] == 1
    assert verdict.extras["duplicate_charges"] == 1
    assert not verdict.invariants["5_one_credit_per_charge"]["held"]
    assert not verdict.ok


def test_a_second_charge_after_the_first_was_credited_is_a_new_episode(tmp_path: Path) -> None:
    run = clean_run(tmp_path)
    run.recharges.append(("rc2", "a1", T0 + 700))
    run.charge("rc2", "a1", 500, T0 + 700)
    run.transfer("rc2", "credit", "a1", 500, T0 + 710)
    verdict = check_dir(run.write())
    assert verdict.figures["cards_charged_more_than_once"] == 0
    assert verdict.ok, verdict.invariants


def test_a_charge_whose_credit_never_landed_is_a_payment_lost(tmp_path: Path) -> None:
    run = clean_run(tmp_path)
    run.charge("legacy-1", "a1", 500, T0 + 800)  # no intent, no credit anywhere
    verdict = check_dir(run.write())
    assert verdict.figures["charges_without_credit"] == 1
    assert verdict.figures["payments_lost"] == 1
    assert not verdict.invariants["4_money_in_ledger_first"]["held"]
    assert not verdict.invariants["9_no_acknowledged_money_lost"]["held"]


def test_a_charge_refunded_in_full_is_not_a_charge_without_credit(tmp_path: Path) -> None:
    run = clean_run(tmp_path)
    run.recharges.append(("rc9", "a1", T0 + 790))
    charge_id = run.charge("rc9", "a1", 500, T0 + 800)
    run.refund(charge_id, 500, T0 + 900)
    verdict = check_dir(run.write())
    assert verdict.figures["charges_without_credit"] == 0
    assert verdict.figures["payments_lost"] == 0


def test_an_acknowledged_debit_missing_everywhere_is_counted_lost(tmp_path: Path) -> None:
    run = clean_run(tmp_path)
    run.client_op(
        "debit",
        {"id": "ghost", "account": "a1", "amount_minor": 10},
        "ok",
        {"result": "ok"},
        T0 + 900,
    )
    verdict = check_dir(run.write())
    assert verdict.figures["debits_acknowledged_lost"] == 1
    assert not verdict.invariants["9_no_acknowledged_money_lost"]["held"]


def test_an_acknowledged_capture_the_ledger_lacks_counts_as_a_lost_debit_within_the_bound(
    tmp_path: Path,
) -> None:
    """A capture is a debit of held money (the 20-seed chaos run, seed 13): lost, it is an
    acknowledged debit lost, allowed only within the bound of a run that isolates the primary
    (DESIGN 9), and it does not break invariant 10."""
    run = clean_run(tmp_path)
    run.hold_events += [("h1", "placed", T0 + 800, T0 + 2800), ("h1", "expired", T0 + 2801, None)]
    run.client_op("capture", {"id": "h1", "amount_minor": 10}, "ok",
                  {"result": "ok", "status": "captured"}, T0 + 900)  # fmt: skip
    verdict = check_dir(run.write())
    assert verdict.figures["debits_acknowledged_lost"] == 1
    assert verdict.extras["captures_acknowledged_lost"] == 1
    assert not verdict.invariants["9_no_acknowledged_money_lost"]["held"]  # bound 0
    assert verdict.invariants["10_hold_ends_once"]["held"]
    bounded = clean_run(tmp_path / "bounded")
    bounded.setup["debits_lost_bound"] = 1  # a run that isolates the primary
    bounded.hold_events += run.hold_events
    bounded.client_op("capture", {"id": "h1", "amount_minor": 10}, "ok",
                      {"result": "ok", "status": "captured"}, T0 + 900)  # fmt: skip
    assert check_dir(bounded.write()).invariants["9_no_acknowledged_money_lost"]["held"]


def test_an_acknowledged_void_whose_hold_expired_is_allowed_only_within_the_bound(
    tmp_path: Path,
) -> None:
    run = clean_run(tmp_path)
    run.hold_events += [("h1", "placed", T0 + 800, T0 + 2800), ("h1", "expired", T0 + 2801, None)]
    run.client_op("void", {"id": "h1"}, "ok", {"result": "ok", "status": "voided"}, T0 + 900)
    verdict = check_dir(run.write())
    assert not verdict.invariants["10_hold_ends_once"]["held"]  # bound 0: no partition
    assert verdict.extras["voids_acknowledged_lost"] == 1
    bounded = clean_run(tmp_path / "bounded")
    bounded.setup["debits_lost_bound"] = 1  # a run that isolates the primary
    bounded.hold_events += run.hold_events
    bounded.client_op("void", {"id": "h1"}, "ok", {"result": "ok", "status": "voided"}, T0 + 900)
    assert check_dir(bounded.write()).ok


def test_a_debit_with_an_unknown_outcome_may_be_missing(tmp_path: Path) -> None:
    run = clean_run(tmp_path)
    run.client_op(
        "debit",
        {"id": "maybe", "account": "a1", "amount_minor": 10},
        "info",
        {"error": "timeout"},
        T0 + 900,
    )
    run.client_op(
        "debit",
        {"id": "never-completed", "account": "a1", "amount_minor": 10},
        "none",
        {},
        T0 + 910,
    )
    verdict = check_dir(run.write())
    assert verdict.figures["debits_acknowledged_lost"] == 0
    assert verdict.ok, verdict.invariants


def test_an_acknowledged_credit_missing_everywhere_is_a_payment_lost(tmp_path: Path) -> None:
    run = clean_run(tmp_path)
    run.client_op(
        "credit",
        {"id": "topup-x", "account": "a1", "amount_minor": 10},
        "ok",
        {"result": "ok"},
        T0 + 900,
    )
    verdict = check_dir(run.write())
    assert verdict.figures["payments_lost"] == 1


def test_suspending_an_account_whose_card_does_not_decline_is_wrongful(tmp_path: Path) -> None:
    run = clean_run(tmp_path)
    run.account("a2", declines=True)
    run.account("a3")
    run.events_sql += [("a2", "card_declined"), ("a3", "card_declined")]
    run.redis["a3"]["st"] = "s"
    verdict = check_dir(run.write())
    assert verdict.figures["wrongful_suspensions"] == 1
    assert "a3" in verdict.invariants["7_no_wrongful_suspension"]["detail"]


def test_a_suspension_after_real_declines_is_not_wrongful_but_after_velocity_ones_it_is(
    tmp_path: Path,
) -> None:
    """A chaos run's gateway fault declines sound cards: the gateway's own records show the
    funding failure, so suspending those accounts is right. A velocity_limit decline (the
    issuer reacting to double charges, 2013) is no funding failure: still wrongful."""
    run = clean_run(tmp_path)
    run.account("a2")
    run.account("a3")
    run.charge("rc-a2", "a2", 500, T0 + 700, status="declined", reason="card_declined")
    run.charge("rc-a3", "a3", 500, T0 + 700, status="declined", reason="velocity_limit")
    run.events_sql += [("a2", "card_declined"), ("a3", "card_declined")]
    verdict = check_dir(run.write())
    assert verdict.figures["wrongful_suspensions"] == 1
    assert "a3" in verdict.invariants["7_no_wrongful_suspension"]["detail"]


def test_a_suspension_later_lifted_still_counts_as_wrongful(tmp_path: Path) -> None:
    run = clean_run(tmp_path)
    run.events_sql.append(("a1", "store_unavailable"))
    verdict = check_dir(run.write())
    assert verdict.figures["wrongful_suspensions"] == 1


def test_a_suspension_without_its_outbox_event_breaks_invariant_11(tmp_path: Path) -> None:
    """The checker reads the outbox itself: the same suspension holds invariant 11 with its
    event and breaks it without (a dependent would never have heard of it)."""
    with_event = clean_run(tmp_path / "with")
    with_event.events_sql.append(("a1", "card_declined"))
    assert check_dir(with_event.write()).invariants["11_one_event_per_decision"]["held"]
    without = clean_run(tmp_path / "without")
    without.events_sql.append(("a1", "card_declined"))
    without.outbox_events = False
    verdict = check_dir(without.write())
    eleven = verdict.invariants["11_one_event_per_decision"]
    assert not eleven["held"] and "1 decisions without an event" in eleven["detail"]
    assert not verdict.ok


def test_a_redis_balance_that_differs_from_the_ledger_is_drift(tmp_path: Path) -> None:
    run = clean_run(tmp_path)
    run.redis["a1"]["bal"] = "0"
    run.account("only-in-redis")
    del run.statuses["only-in-redis"]
    run.redis["only-in-redis"]["bal"] = "5"
    verdict = check_dir(run.write())
    assert verdict.figures["accounts_drifted"] == 2
    assert not verdict.invariants["3_balance_equals_ledger"]["held"]


def test_a_transfer_booked_in_another_currency_breaks_conservation(tmp_path: Path) -> None:
    run = clean_run(tmp_path)
    run.transfers.append(
        ("odd", "credit", "a1", "@card_clearing:EUR", "a1", 70, "EUR", 0, None, T0)
    )
    run.redis["a1"]["bal"] = str(int(run.redis["a1"]["bal"]) + 70)
    verdict = check_dir(run.write())
    assert verdict.figures["conservation_error_minor"] == 140
    assert not verdict.invariants["2_conservation"]["held"]


def test_sync_counters_are_summed_over_node_restarts(tmp_path: Path) -> None:
    run = clean_run(tmp_path)
    run.monitor.clear()
    r2 = {"role": "slave", "link": "up", "run_id": "r2a"}
    run.nodes_sample(T0, r1={**NODE_UP, "sync_full": 3, "sync_partial_ok": 1}, r2=r2)
    run.nodes_sample(T0 + 250, r1={**NODE_UP, "sync_full": 5, "sync_partial_ok": 1}, r2=r2)
    restarted = {**NODE_UP, "run_id": "r1b", "sync_full": 1, "sync_partial_ok": 2}
    run.nodes_sample(T0 + 500, r1=restarted, r2=r2)
    run.nodes_sample(T0 + 750, r1={**restarted, "sync_full": 2}, r2=r2)
    verdict = check_dir(run.write())
    assert verdict.figures["full_syncs"] == 2 + 2
    assert verdict.figures["partial_syncs"] == 0 + 2


def test_storm_latency_is_measured_from_the_heal_until_replicas_are_up(tmp_path: Path) -> None:
    run = clean_run(tmp_path)
    run.events += [
        {"t_ms": T0 + 1000, "action": "partition", "fault": True},
        {"t_ms": T0 + 2000, "action": "heal", "fault": True},
    ]
    run.monitor += [{"t_ms": T0 + t, "kind": "ping", "ms": 1.0} for t in range(0, 1000, 10)]
    run.monitor += [{"t_ms": T0 + 2000 + t, "kind": "ping", "ms": 80.0} for t in range(0, 500, 10)]
    run.monitor += [{"t_ms": T0 + 2600 + t, "kind": "ping", "ms": 500.0} for t in range(0, 100, 10)]
    run.nodes_sample(T0 + 2550, r1=NODE_UP, r2={"role": "slave", "link": "up", "run_id": "x"})
    verdict = check_dir(run.write())
    assert verdict.figures["primary_latency_ms_p99_baseline"] == 1.0
    assert verdict.figures["primary_latency_ms_p99_during_storm"] == 80.0


def test_storm_latency_runs_to_the_last_sample_when_replicas_never_come_back(
    tmp_path: Path,
) -> None:
    """A full sync longer than the run (a large dataset through a slow link): the storm lasted
    until the end, so its latency is every sample after the heal, not an empty window (0.0)."""
    run = clean_run(tmp_path)
    run.events += [
        {"t_ms": T0 + 1000, "action": "partition", "fault": True},
        {"t_ms": T0 + 2000, "action": "heal", "fault": True},
    ]
    run.monitor += [{"t_ms": T0 + t, "kind": "ping", "ms": 1.0} for t in range(0, 1000, 10)]
    run.monitor += [{"t_ms": T0 + 2000 + t, "kind": "ping", "ms": 40.0} for t in range(0, 3000, 10)]
    down = {"role": "slave", "link": "down", "run_id": "x"}
    for t in range(2100, 5000, 250):
        run.nodes_sample(T0 + t, r1=NODE_UP, r2=down)
    verdict = check_dir(run.write())
    assert verdict.figures["primary_latency_ms_p99_during_storm"] == 40.0
    assert verdict.extras["storm_window"]["replicas_back"] is False


def test_bins_where_writes_were_tried_and_none_succeeded_are_not_writable(tmp_path: Path) -> None:
    run = clean_run(tmp_path)
    for i in range(8):  # two seconds of READONLY answers, one every 250 ms
        run.client_op(
            "debit",
            {"id": f"ro{i}", "account": "a1", "amount_minor": 1},
            "fail",
            {"error": "StoreReadOnly"},
            T0 + 5000 + 250 * i,
        )
    run.transfer("after", "debit", "a1", 1, T0 + 7001)
    run.client_op(
        "debit",
        {"id": "after", "account": "a1", "amount_minor": 1},
        "ok",
        {"result": "ok"},
        T0 + 7000,
    )
    verdict = check_dir(run.write())
    assert verdict.figures["seconds_not_writable"] == 2.0


def test_a_charge_without_an_earlier_intent_breaks_ledger_first(tmp_path: Path) -> None:
    run = clean_run(tmp_path)
    run.recharges.append(("rc-late", "a1", T0 + 905))
    run.charge("rc-late", "a1", 500, T0 + 900)
    run.transfer("rc-late", "credit", "a1", 500, T0 + 910)
    verdict = check_dir(run.write())
    assert not verdict.invariants["4_money_in_ledger_first"]["held"]


def test_a_charge_while_no_primary_held_the_epoch_is_a_blind_recharge(tmp_path: Path) -> None:
    run = clean_run(tmp_path)
    empty = {**NODE_UP, "epoch": 0}
    run.nodes_sample(T0 + 1000, r1=empty)
    run.nodes_sample(T0 + 1250, r1=empty)
    run.recharges.append(("rc-blind", "a1", T0 + 1100))
    run.charge("rc-blind", "a1", 500, T0 + 1100)
    run.transfer("rc-blind", "credit", "a1", 500, T0 + 1300)
    verdict = check_dir(run.write())
    assert not verdict.invariants["8_recharge_only_when_healthy"]["held"]
    assert verdict.invariants["6_empty_store_refuses_writes"]["held"]


def test_a_write_acknowledged_by_an_empty_primary_breaks_the_epoch_guard(tmp_path: Path) -> None:
    run = clean_run(tmp_path)
    empty = {**NODE_UP, "epoch": 0}
    run.nodes_sample(T0 + 1000, r1=empty)
    run.nodes_sample(T0 + 1250, r1=empty)
    run.transfer("into-empty", "debit", "a1", 5, T0 + 1100)
    run.client_op(
        "debit",
        {"id": "into-empty", "account": "a1", "amount_minor": 5},
        "ok",
        {"result": "ok"},
        T0 + 1098,
    )
    verdict = check_dir(run.write())
    assert not verdict.invariants["6_empty_store_refuses_writes"]["held"]


def test_a_write_sent_before_the_primary_stalled_and_answered_during_the_stall_is_no_breach(
    tmp_path: Path,
) -> None:
    run = clean_run(tmp_path)
    down = {"role": "down"}
    for t in (1000, 1250, 1500, 1750):  # a paused primary: every sample times out
        run.nodes_sample(T0 + t, r1=down)
    run.transfer("before-pause", "debit", "a1", 5, T0 + 950)  # landed while healthy
    run.client_op("debit", {"id": "before-pause", "account": "a1", "amount_minor": 5}, "ok",
                  {"result": "ok"}, T0 + 949, took_ms=651)  # answered at T0+1600  # fmt: skip
    verdict = check_dir(run.write())
    assert verdict.invariants["6_empty_store_refuses_writes"]["held"]


def test_an_id_answered_differently_on_replay_breaks_id_uniqueness(tmp_path: Path) -> None:
    run = clean_run(tmp_path)
    run.client_op(
        "debit",
        {"id": "d0", "account": "a1", "amount_minor": 150},
        "ok",
        {"result": "insufficient_funds"},
        T0 + 900,
    )
    verdict = check_dir(run.write())
    assert not verdict.invariants["1_transfer_id_used_once"]["held"]


def test_the_history_writer_pairs_invokes_with_completions(tmp_path: Path) -> None:
    with HistoryWriter(tmp_path / "h.jsonl") as history:
        op = history.invoke("debit", 1, {"id": "x"})
        history.invoke("debit", 2, {"id": "y"})
        history.complete(op, "ok", "debit", 1, {"result": "ok"})
    ops = read_history(tmp_path / "h.jsonl")
    assert [(o.value["id"], o.type) for o in ops] == [("x", "ok"), ("y", "info")]
    assert ops[0].moved_money and not ops[1].moved_money


def test_a_completion_without_an_invoke_is_a_malformed_history(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text('{"op": 1, "type": "ok", "f": "debit", "process": 0, "t_ms": 1}\n')
    with pytest.raises(ValueError, match="without a pending invoke"):
        read_history(path)
