"""``tally bench sustained`` end to end, small: store load and drainer together, every figure
reported, the ledger of record holding what the store took (no speed is asserted here)."""

from __future__ import annotations

from tally.bench.sustained import SustainedConfig, run, summary_rows


def test_the_sustained_benchmark_reports_every_figure_and_settles_what_the_store_took() -> None:
    cfg = SustainedConfig(
        duration_s=3, accounts=20, batch_size=500, ceiling_s=1, step_s=1, lag_p99_s_max=30
    )
    data = run(cfg)
    assert data["ledger"] == "sqlite" and data["drainer_errors"] == 0
    assert data["store_only_per_s"] > 0 and data["drainer_alone_per_s"] > 0
    assert data["steps"] and data["offered_per_s"] > 0
    assert data["settled_per_s"] > 0
    assert 0 <= data["drain_lag_s_p50"] <= data["drain_lag_s_p99"]
    assert data["journal_length_end"] >= 0 and isinstance(data["kept_up"], bool)
    assert "redis_bytes_per_transfer" in data and "settled_to_store_only" in data
    # every transfer of every phase left its one record (a 7-day window drops none of them)
    assert data["live_records_end"] == data["transfers_sent"] > 0
    assert data["redis_bytes_per_live_record"] > 0
    assert set(summary_rows(data)) >= {"store only (ceiling)", "sustained: settled in ledger"}


def test_a_stated_rate_is_offered_without_a_search() -> None:
    """``rate_per_s`` (``--rate``): no search steps, and the run offers exactly that rate (a
    before/after comparison needs the same rate on both sides)."""
    cfg = SustainedConfig(
        duration_s=2, accounts=20, batch_size=500, ceiling_s=1, lag_p99_s_max=30, rate_per_s=2000
    )
    data = run(cfg)
    assert data["steps"] == [] and data["offered_per_s"] == 2000
    assert data["settled_per_s"] > 0 and data["drainer_errors"] == 0
