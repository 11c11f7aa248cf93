"""``tally bench drain``: the deployment's drainer alone, settling a backlog into the ledger.

Per round: the store takes ``transfers`` debits (``Engine.debit_many``, batches of
``batch_size`` over ``accounts`` accounts, flat out; the store rate is reported as the round's
ceiling), then the service's own ``DrainService.drain_all`` settles that backlog while nothing
else runs. Reported per round: transfers settled per second, and where the drainer's time went
(``DrainStats``: Redis reads, parsing, the ledger transaction, acknowledgement and trim).
Several rounds into the same ledger show whether the rate holds as ``transfers`` grows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from tally.bench.sustained import CREDIT_LIMIT_MINOR, _journal_length, bench_deployment
from tally.bootstrap import Deployment
from tally.domain.accounts import Account
from tally.domain.limits import DRAIN_WORKERS_DEFAULT
from tally.service.workers import DrainService

ROUNDS_MAX = 50


def _proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a local process (None when /proc does not show it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ledger_cpu_s(dep: Deployment) -> float | None:
    """CPU seconds of the PostgreSQL backends serving this run's database, when the server
    runs on this machine (None otherwise, and for SQLite, which runs in this process)."""
    if dep.ledger.dialect != "postgresql":
        return None
    with dep.ledger.transaction() as conn:
        query = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        pids = [int(pid) for pid in conn.exec_driver_sql(query).scalars()]
    times = [_proc_cpu_s(pid) for pid in pids]
    return None if not times or None in times else sum(t for t in times if t is not None)


@dataclass
class DrainBenchConfig:
    ledger_url: str | None = None  # None: a SQLite file in a temporary dir
    transfers: int = 200_000
    rounds: int = 3
    accounts: int = 2000
    batch_size: int = 5000
    drain_workers: int = DRAIN_WORKERS_DEFAULT


def run(cfg: DrainBenchConfig, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    from tally.bench.machine import describe

    if not 1 <= cfg.rounds <= ROUNDS_MAX:
        raise ValueError(f"rounds must be 1..{ROUNDS_MAX}, got {cfg.rounds}")
    with bench_deployment("tally-drain-", cfg.ledger_url, drain_workers=cfg.drain_workers) as (
        dep,
        _node,
    ):
        rounds = _run(dep, cfg, progress)
    return {
        "config": asdict(cfg),
        "ledger": "postgresql" if cfg.ledger_url else "sqlite",
        "rounds": rounds,
        "machine": describe(),
    }


def _store(dep: Deployment, ids: list[str], cfg: DrainBenchConfig, first: int) -> float:
    start, sent = time.perf_counter(), 0
    while sent < cfg.transfers:
        size = min(cfg.batch_size, cfg.transfers - sent)
        n = first + sent
        batch = [(f"d-{n + i}", ids[(n + i) % len(ids)], 1) for i in range(size)]
        dep.engine.debit_many(batch)
        sent += size
    return time.perf_counter() - start


def _run(
    dep: Deployment, cfg: DrainBenchConfig, progress: Callable[[str], None]
) -> list[dict[str, Any]]:
    ids = [f"acct-{i}" for i in range(cfg.accounts)]
    progress(f"creating {cfg.accounts} accounts")
    for aid in ids:
        dep.engine.create_account(Account(aid, "USD", CREDIT_LIMIT_MINOR))
    drain = DrainService(dep)
    stats = drain.drainer.stats
    out: list[dict[str, Any]] = []
    for r in range(cfg.rounds):
        store_s = _store(dep, ids, cfg, r * cfg.transfers)
        progress(f"round {r + 1}: stored {cfg.transfers} in {store_s:.2f} s; draining")
        before = dep.ledger.count_transfers()
        spent = (stats.read_s, stats.parse_s, stats.apply_s, stats.ack_s)
        pg_before = _ledger_cpu_s(dep)
        cpu_before, start = time.process_time(), time.perf_counter()
        drain.drain_all()
        drain_s = time.perf_counter() - start
        cpu_s = time.process_time() - cpu_before
        pg_after = _ledger_cpu_s(dep)
        pg_s = None if pg_before is None or pg_after is None else pg_after - pg_before
        settled = dep.ledger.count_transfers() - before
        if settled != cfg.transfers or _journal_length(dep.client, dep.layout):
            raise RuntimeError(f"round {r + 1}: {settled} of {cfg.transfers} settled")
        now = (stats.read_s, stats.parse_s, stats.apply_s, stats.ack_s)
        read_s, parse_s, apply_s, ack_s = (b - a for a, b in zip(spent, now, strict=True))
        out.append(
            {
                "store_per_s": round(cfg.transfers / store_s),
                "drain_per_s": round(settled / drain_s),
                "drain_s": round(drain_s, 3),
                "read_s": round(read_s, 3),
                "parse_s": round(parse_s, 3),
                "apply_s": round(apply_s, 3),
                "ack_s": round(ack_s, 3),
                # CPU per 100k transfers: less at the mercy of the shared machine's load than
                # the wall clock (this process: drainer and its COPY writer; the server's
                # backends for this database, summed, when local)
                "drainer_cpu_s_per_100k": round(cpu_s * 100_000 / settled, 3),
                "ledger_cpu_s_per_100k": None
                if pg_s is None
                else round(pg_s * 100_000 / settled, 3),
            }
        )
        progress(f"round {r + 1}: {out[-1]}")
    return out
