"""``tally bench http``: the HTTP path, end to end, on this machine.

Starts ``tally serve`` (embedded deployment: redis-server with AOF everysec, SQLite ledger, the
drainer running) in a temporary $TALLY_HOME on a loopback port, funds accounts, then measures:
- single: ``POST /v1/debits``, one debit per request, at each of ``concurrency_levels``
  connections in flight for ``seconds``, with wrk when it is on PATH, else a multi-process
  generator (``bench.load``): debits/s, latency p50/p99, error statuses, dropped connections;
- batch: ``POST /v1/debits/batch`` with ``batch_size`` debits per request;
- the ceiling: a bare endpoint (``bench.bare``) on the same server stack and worker count, with
  the same generator, and tally / ceiling;
- per phase, the CPU time the server's processes used per request (per debit for the batch), by
  role (``cpu_us``: HTTP workers, the parent with its drainer, redis-server), read from /proc
  on Linux: a figure the other work on a shared machine moves far less than the rates.
Bounded in time. The generator runs on the same machine and competes with the server for CPU:
these are lower bounds for a remote client. Errors are figures in the table, never tracebacks.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from tally.bench.load import generate
from tally.ops.node import free_port

#: Generous: on a shared 2-core machine at load 15+ the workers took over 60 s to start.
START_TIMEOUT_S = 180.0
FUNDS_MINOR = 10**12


@dataclass
class HttpBenchConfig:
    accounts: int = 100
    #: Single-debit phases: connections in flight, each for ``seconds``.
    concurrency_levels: tuple[int, ...] = (64, 1)
    seconds: float = 8.0
    batch_requests: int = 40
    batch_size: int = 1000
    #: Concurrent batch requests (one per connection). Four, so that the kernel's spreading of
    #: connections over the workers (a hash) leaves a worker idle rarely (1 in 8 with two
    #: workers; with two connections it was 1 in 2).
    batch_concurrency: int = 4
    seconds_max: float = 60.0
    workers: int | None = None  # None: tally serve's default (the number of cores)
    http: str = "httptools"
    loop: str = "uvloop"
    generator: str = "auto"  # "auto": wrk when on PATH; "native": the multi-process one
    server: str = "uvicorn"  # or "granian" (the `bench` extra), for tally and the bare ceiling


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PROCESSES_MAX = 256


def _tree(root: int) -> dict[int, str]:
    """The pids under ``root`` (itself included) and their command lines; empty off Linux."""
    found: dict[int, str] = {}
    todo = [root]
    while todo and len(found) < PROCESSES_MAX:
        pid = todo.pop()
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        found[pid] = cmd
        todo += [int(c) for c in children]
    return found


def _role(pid: int, cmd: str, root: int) -> str:
    if "redis-server" in cmd:
        return "redis"
    if pid == root:
        return "parent"
    return "workers" if "spawn_main" in cmd else "other"


def _cpu_s(pids: dict[int, str]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
    return out


def _with_cpu(
    root: int, done: Callable[[dict[str, Any]], int], phase: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Run ``phase``; add ``cpu_us`` (role -> CPU µs per unit, ``done(result)`` units) to
    its result dict. Processes that start or end during the phase are not counted."""
    pids = _tree(root)
    before = _cpu_s(pids)
    as_dict = phase()
    after = _cpu_s(pids)
    units = done(as_dict)
    roles: dict[str, float] = {}
    for pid, cmd in pids.items():
        if pid in before and pid in after:
            role = _role(pid, cmd, root)
            roles[role] = roles.get(role, 0.0) + after[pid] - before[pid]
    if units and roles:
        as_dict["cpu_us"] = {k: round(1e6 * v / units, 1) for k, v in sorted(roles.items())}
        as_dict["cpu_us_total"] = round(1e6 * sum(roles.values()) / units, 1)
    return as_dict


@contextlib.contextmanager
def _served(home: Path, cfg: HttpBenchConfig) -> Iterator[tuple[str, str, int]]:
    port = free_port()
    log_path = home.parent / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    argv = [
        sys.executable,
        "-m",
        "tally.cli.serve_cmd",
        "--home",
        str(home),
        "--port",
        str(port),
        "--no-gateway",
        "--http",
        cfg.http,
        "--loop",
        cfg.loop,
        "--workers",
        str(cfg.workers or os.cpu_count() or 1),
        "--server",
        cfg.server,
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
        yield url, key, process.pid
    finally:
        _stop(process)


@contextlib.contextmanager
def _bare(cfg: HttpBenchConfig, workers: int) -> Iterator[tuple[str, int]]:
    """The ceiling: a bare endpoint on the same server stack and worker count."""
    port = free_port()
    argv = [sys.executable, "-m", "tally.bench.bare", "--port", str(port)]
    argv += ["--workers", str(workers), "--http", cfg.http, "--loop", cfg.loop]
    argv += ["--server", cfg.server]
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=1, trust_env=False).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError("the bare endpoint did not start")
        yield url, process.pid
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
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


def _batch(api: httpx.Client, ids: list[str], cfg: HttpBenchConfig) -> dict[str, Any]:
    """``batch_concurrency`` connections posting ``batch_size`` debits per request. A dropped
    connection or an error status is counted, never raised."""
    run = uuid.uuid4().hex[:8]
    latencies_s: list[float] = []
    counts = {"ok": 0, "non_2xx": 0, "dropped": 0, "requests": 0}
    lock = threading.Lock()
    # Every body encoded before the clock starts: the generator shares the server's cores,
    # and its work is not the server's (as wrk's requests, they are ready-made bytes).
    bodies = iter(
        [
            json.dumps(
                {
                    "debits": [
                        {
                            "transfer_id": f"b{run}-{b}-{i}",
                            "account_id": ids[i % len(ids)],
                            "amount_minor": 1,
                        }
                        for i in range(cfg.batch_size)
                    ]
                }
            ).encode()
            for b in range(cfg.batch_requests)
        ]
    )
    headers = {**api.headers, "Content-Type": "application/json"}

    def one_connection() -> None:
        with httpx.Client(
            base_url=str(api.base_url), headers=headers, timeout=60, trust_env=False
        ) as client:
            for body in bodies:
                if time.monotonic() > deadline:
                    return
                t0 = time.perf_counter()
                try:
                    reply = client.post("/v1/debits/batch", content=body)
                except httpx.TransportError:
                    with lock:
                        counts["dropped"] += 1
                    continue
                with lock:
                    latencies_s.append(time.perf_counter() - t0)
                    counts["requests"] += 1
                    if reply.status_code == 200:
                        counts["ok"] += int(reply.json()["ok"])
                    else:
                        counts["non_2xx"] += 1

    deadline = time.monotonic() + cfg.seconds_max
    started = time.perf_counter()
    threads = [threading.Thread(target=one_connection) for _ in range(cfg.batch_concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(cfg.seconds_max + 60)
    elapsed = time.perf_counter() - started
    total = counts["requests"] * cfg.batch_size
    return {
        "debits": total,
        "ok": counts["ok"],
        "batch_size": cfg.batch_size,
        "connections": cfg.batch_concurrency,
        "seconds": round(elapsed, 3),
        "per_s": round(total / elapsed) if elapsed else 0,
        "request_p50_ms": round(_percentile(latencies_s, 0.50) * 1000, 2),
        "request_p99_ms": round(_percentile(latencies_s, 0.99) * 1000, 2),
        "non_2xx": counts["non_2xx"],
        "dropped": counts["dropped"],
    }


def run(cfg: HttpBenchConfig, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    from tally.bench.machine import describe

    ids = [f"acct-{i}" for i in range(cfg.accounts)]
    workers = cfg.workers or os.cpu_count() or 1
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tally-bench-http-") as tmp:
        progress("starting tally serve (embedded)")
        with (
            _served(Path(tmp) / "home", cfg) as (url, key, pid),
            httpx.Client(
                base_url=url,
                headers={"Authorization": f"Bearer {key}"},
                timeout=60,
                trust_env=False,
            ) as api,
        ):
            progress(f"funding {cfg.accounts} accounts")
            _fund(api, ids)
            for conns in cfg.concurrency_levels:
                progress(f"POST /v1/debits, {conns} in flight, {cfg.seconds}s")
                results[f"tally_single_c{conns}"] = _with_cpu(
                    pid, _requests, functools.partial(_load, url, key, conns, cfg)
                )
            if cfg.batch_requests:
                progress(f"POST /v1/debits/batch x {cfg.batch_requests} ({cfg.batch_size} each)")
                results["tally_batch"] = _with_cpu(
                    pid, lambda r: int(r["debits"]), lambda: _batch(api, ids, cfg)
                )
        progress(f"starting the bare endpoint ({workers} worker(s), {_stack(cfg)})")
        with _bare(cfg, workers) as (bare_url, bare_pid):
            for conns in cfg.concurrency_levels:
                progress(f"bare POST, {conns} in flight, {cfg.seconds}s")
                results[f"bare_c{conns}"] = _with_cpu(
                    bare_pid, _requests, functools.partial(_load, bare_url, "-", conns, cfg)
                )
    for conns in cfg.concurrency_levels:
        tally, bare = results[f"tally_single_c{conns}"], results[f"bare_c{conns}"]
        tally["of_bare"] = round(tally["per_s"] / bare["per_s"], 3) if bare["per_s"] else None
    return {
        "config": asdict(cfg),
        "machine": describe(),
        "server": f"tally serve: {workers} worker process(es), {_stack(cfg)}, "
        "embedded redis-server (AOF everysec), SQLite ledger, drainer on",
        "ceiling": "a bare Starlette JSON POST -> 201 on the same server stack and worker count",
        "client": "on the same machine (loopback), competing for the same cores",
        "results": results,
    }


def _requests(result: dict[str, Any]) -> int:
    return int(result["requests"])


def _stack(cfg: HttpBenchConfig) -> str:
    if cfg.server == "granian":
        return f"granian (embedded, ASGI) + {cfg.loop}"
    return f"uvicorn {cfg.http} + {cfg.loop}"


def _load(url: str, key: str, conns: int, cfg: HttpBenchConfig) -> dict[str, Any]:
    return generate(
        url,
        key,
        "/v1/debits",
        conns,
        cfg.seconds,
        cfg.accounts,
        prefer_wrk=cfg.generator != "native",
    ).as_dict()
