"""``tally bench drain`` end to end, small: every round settles exactly what the store took and
reports where the drainer's time went (no speed is asserted here)."""

from __future__ import annotations

import pytest

from tally.bench.drain import DrainBenchConfig, run


def test_the_drain_benchmark_settles_every_round_and_reports_every_figure() -> None:
    data = run(DrainBenchConfig(transfers=1200, rounds=2, accounts=20, batch_size=500))
    assert data["ledger"] == "sqlite" and len(data["rounds"]) == 2
    for r in data["rounds"]:
        assert r["store_per_s"] > 0 and r["drain_per_s"] > 0
        assert min(r["read_s"], r["parse_s"], r["apply_s"], r["ack_s"]) >= 0
        assert r["drainer_cpu_s_per_100k"] >= 0 and r["ledger_cpu_s_per_100k"] is None


@pytest.mark.postgres
def test_the_drain_benchmark_into_postgresql_reports_the_backends_cpu(
    postgres_ledger_url: str,
) -> None:
    data = run(DrainBenchConfig(ledger_url=postgres_ledger_url, transfers=600, rounds=1))
    (r,) = data["rounds"]
    assert data["ledger"] == "postgresql" and r["drain_per_s"] > 0
    assert r["ledger_cpu_s_per_100k"] is not None and r["ledger_cpu_s_per_100k"] >= 0
