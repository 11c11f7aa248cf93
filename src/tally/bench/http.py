"""``tally bench http``: the HTTP path, end to end, on this machine.

Starts ``tally serve`` (embedded deployment: redis-server with AOF everysec, SQLite ledger, the
drainer running) in a temporary $TALLY_HOME on a loopback port, funds accounts, then measures:
- single: ``POST /v1/debits``, one debit per request, ``concurrency`` requests in flight (one
  asyncio client, keep-alive connections): debits/s and latency p50/p99;
- batch: ``POST /v1/debits/batch`` with ``batch_size`` debits per request, one at a time.
Bounded in count (``debits``) and time (``seconds_max`` per phase). The client runs on the same
machine and competes with the server for CPU: these are lower bounds for a remote client.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from tally.config import child_env
from tally.ops.node import free_port

START_TIMEOUT_S = 60.0
FUNDS_MINOR = 10**12


@dataclass
class HttpBenchConfig:
    accounts: int = 100
    debits: int = 20_000
    concurrency: int = 32
    batch_requests: int = 20
    batch_size: int = 1000
    seconds_max: float = 60.0


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


@contextlib.contextmanager
def _served(home: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    log_path = home.parent / "serve.log"
    env = child_env()
    argv = [
        sys.executable,
        "-m",
        "tally.cli.serve_cmd",
        "--home",
        str(home),
        "--port",
        str(port),
        "--no-gateway",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=log, env=env, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=1, trust_env=False).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"tally serve did not start:\n{log_path.read_text()[-3000:]}")
        key = next(
            line.rsplit(" ", 1)[-1]
            for line in log_path.read_text().splitlines()
            if "admin API key" in line
        )
        yield url, key
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _fund(api: httpx.Client, ids: list[str]) -> None:
    for aid in ids:
        api.post("/v1/accounts", json={"id": aid, "currency": "USD"}).raise_for_status()
        credit = {
            "transfer_id": f"fund-{aid}",
            "account_id": aid,
            "amount_minor": FUNDS_MINOR,
            "currency": "USD",
        }
        api.post("/v1/credits", json=credit).raise_for_status()


def _failed(errors: Counter[str], statuses: Counter[int]) -> int:
    """Requests that got no answer (dropped connection, timeout) plus answers that are 5xx."""
    return sum(errors.values()) + sum(n for code, n in statuses.items() if code >= 500)


async def _single(
    url: str,
    key: str,
    ids: list[str],
    cfg: HttpBenchConfig,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    """A dropped connection or a timeout is counted in ``errors`` (by kind) and the run goes
    on: a benchmark reports what the server did, it does not end in a traceback."""
    run = uuid.uuid4().hex[:8]
    latencies_s: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    next_index = 0
    deadline = time.monotonic() + cfg.seconds_max
    limits = httpx.Limits(
        max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency
    )
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        base_url=url,
        headers=headers,
        limits=limits,
        timeout=30,
        trust_env=False,
        transport=transport,
    ) as client:

        async def worker() -> None:
            nonlocal next_index
            while next_index < cfg.debits and time.monotonic() < deadline:
                i = next_index
                next_index += 1
                body = {
                    "transfer_id": f"h{run}-{i}",
                    "account_id": ids[i % len(ids)],
                    "amount_minor": 1,
                }
                t0 = time.perf_counter()
                try:
                    reply = await client.post("/v1/debits", json=body)
                except httpx.TransportError as exc:
                    errors[type(exc).__name__] += 1
                    continue
                latencies_s.append(time.perf_counter() - t0)
                statuses[reply.status_code] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(cfg.concurrency)))
        elapsed = time.perf_counter() - started
    done = len(latencies_s)
    return {
        "debits": done,
        "concurrency": cfg.concurrency,
        "seconds": round(elapsed, 3),
        "debits_per_s": round(done / elapsed) if elapsed else 0,
        "p50_ms": round(_percentile(latencies_s, 0.50) * 1000, 2),
        "p99_ms": round(_percentile(latencies_s, 0.99) * 1000, 2),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": _failed(errors, statuses),
        "error_kinds": dict(sorted(errors.items())),
    }


def _batch(api: httpx.Client, ids: list[str], cfg: HttpBenchConfig) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    latencies_s: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    ok = 0
    deadline = time.monotonic() + cfg.seconds_max
    started = time.perf_counter()
    for b in range(cfg.batch_requests):
        if time.monotonic() > deadline:
            break
        debits = [
            {"transfer_id": f"b{run}-{b}-{i}", "account_id": ids[i % len(ids)], "amount_minor": 1}
            for i in range(cfg.batch_size)
        ]
        t0 = time.perf_counter()
        try:
            reply = api.post("/v1/debits/batch", json={"debits": debits})
        except httpx.TransportError as exc:
            errors[type(exc).__name__] += 1
            continue
        latencies_s.append(time.perf_counter() - t0)
        statuses[reply.status_code] += 1
        if reply.is_success:
            ok += int(reply.json()["ok"])
    elapsed = time.perf_counter() - started
    total = len(latencies_s) * cfg.batch_size
    return {
        "debits": total,
        "ok": ok,
        "batch_size": cfg.batch_size,
        "seconds": round(elapsed, 3),
        "debits_per_s": round(total / elapsed) if elapsed else 0,
        "request_p99_ms": round(_percentile(latencies_s, 0.99) * 1000, 2),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": _failed(errors, statuses),
        "error_kinds": dict(sorted(errors.items())),
    }


def run(cfg: HttpBenchConfig, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    from tally.bench.machine import describe

    ids = [f"acct-{i}" for i in range(cfg.accounts)]
    with tempfile.TemporaryDirectory(prefix="tally-bench-http-") as tmp:
        progress("starting tally serve (embedded)")
        with (
            _served(Path(tmp) / "home") as (url, key),
            httpx.Client(
                base_url=url,
                headers={"Authorization": f"Bearer {key}"},
                timeout=60,
                trust_env=False,
            ) as api,
        ):
            progress(f"funding {cfg.accounts} accounts")
            _fund(api, ids)
            progress(f"POST /v1/debits x {cfg.debits}, {cfg.concurrency} in flight")
            single = asyncio.run(_single(url, key, ids, cfg))
            progress(f"POST /v1/debits/batch x {cfg.batch_requests} ({cfg.batch_size} each)")
            batch = _batch(api, ids, cfg)
    return {
        "config": asdict(cfg),
        "machine": describe(),
        "server": "tally serve: 1 uvicorn worker, embedded redis-server (AOF everysec), SQLite ledger, drainer on",
        "client": "one asyncio httpx client on the same machine (loopback)",
        "results": {"http_single": single, "http_batch": batch},
    }
