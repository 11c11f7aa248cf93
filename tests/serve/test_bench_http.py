"""``tally bench http`` end to end, small: it reports throughput and latency and cleans up."""

from __future__ import annotations

from tally.bench.http import HttpBenchConfig, run


def test_the_http_benchmark_reports_rate_and_p99_for_single_and_batch_debits() -> None:
    cfg = HttpBenchConfig(
        accounts=5, debits=200, concurrency=4, batch_requests=2, batch_size=100, seconds_max=60
    )
    result = run(cfg)
    single, batch = result["results"]["http_single"], result["results"]["http_batch"]
    assert single["debits"] == 200 and single["statuses"] == {"201": 200}
    assert single["debits_per_s"] > 0 and single["p99_ms"] >= single["p50_ms"] > 0
    assert batch["debits"] == batch["ok"] == 200
