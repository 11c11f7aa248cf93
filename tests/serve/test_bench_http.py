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


def test_a_dropped_connection_is_counted_as_an_error_and_the_run_goes_on() -> None:
    """Seen: `tally bench http` ended in an httpx.ReadError traceback on a busy machine."""
    import asyncio

    import httpx

    from tally.bench.http import _single

    calls = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls % 3 == 0:
            raise httpx.ReadError("connection dropped", request=request)
        if calls % 5 == 0:
            return httpx.Response(503, json={"code": "not_ready"})
        return httpx.Response(201, json={"result": "ok"})

    cfg = HttpBenchConfig(accounts=2, debits=30, concurrency=3, seconds_max=30)
    result = asyncio.run(
        _single("http://bench.invalid", "k", ["a", "b"], cfg, httpx.MockTransport(answer))
    )
    assert result["error_kinds"] == {"ReadError": 10}
    assert result["statuses"] == {"201": 16, "503": 4}
    assert result["errors"] == 14 and result["debits"] == 20
