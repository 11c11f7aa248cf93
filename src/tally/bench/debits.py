"""``tally bench debits``: tally's batch and single-debit paths against the raw-Redis ceiling and
a PostgreSQL peer, in one run, on this machine.

Columns and their durability:
- tally_batch: ``debit_many`` (thousands of checked, idempotent debits per script call), Redis
  with AOF ``appendfsync everysec`` (at most ~1 s of acknowledged writes at risk on a crash of
  the primary, bounded further by replicas + WAIT), journal drained to SQL asynchronously.
- tally_single: one ``debit`` per round trip, same durability.
- raw_redis: HINCRBY + HSET + XADD per debit, pipelined, no checks, no idempotency: a ceiling.
- postgres_peer: what a team would build instead: per debit one transaction (checked UPDATE
  of the balance + INSERT of the journal row), ``synchronous_commit=on``: durable per debit.
"""

from __future__ import annotations

import bisect
import itertools
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tally.billing.engine import Engine
from tally.domain.accounts import Account
from tally.ledger.sql_ledger import SqlLedger
from tally.ops.node import RedisNode
from tally.store.keys import KeyLayout
from tally.store.redis_store import RedisStore
from tally.sync.rebuild import init_store

BENCH_DIRECTIVES: dict[str, str | int | list[str]] = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    "save": "",
    "maxmemory-policy": "noeviction",
}
FUNDS_MINOR = 10**12


@dataclass
class BenchConfig:
    accounts: int = 10_000
    batch_debits: int = 300_000
    batch_size: int = 10_000
    single_debits: int = 5_000
    raw_debits: int = 300_000
    postgres_debits: int = 3_000
    postgres_url: str | None = "postgresql://postgres@127.0.0.1:5432/test"
    seed: int = 1


@dataclass
class BenchResult:
    config: BenchConfig
    machine: dict[str, object]
    redis_version: str
    rows: dict[str, dict[str, object]] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "config": vars(self.config),
            "machine": self.machine,
            "redis_version": self.redis_version,
            "results": self.rows,
        }


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _fund(store: RedisStore, ids: list[str]) -> None:
    for aid in ids:
        store.upsert_account(Account(aid, "USD"))
    for start in range(0, len(ids), 5000):
        store.apply([(f"fund-{a}", "c", a, FUNDS_MINOR, "USD") for a in ids[start : start + 5000]])


def zipf_picker(ids: list[str], rng: random.Random, s: float = 1.1) -> Callable[[], str]:
    weights = list(itertools.accumulate(1 / (rank + 1) ** s for rank in range(len(ids))))
    total = weights[-1]
    return lambda: ids[bisect.bisect(weights, rng.random() * total)]


def bench_tally_batch(
    engine: Engine, pick: Callable[[], str], cfg: BenchConfig
) -> dict[str, object]:
    run_id = uuid.uuid4().hex[:8]
    batches = [
        [(f"b{run_id}-{b}-{i}", pick(), 1) for i in range(cfg.batch_size)]
        for b in range(cfg.batch_debits // cfg.batch_size)
    ]
    start = time.perf_counter()
    ok = 0
    for batch in batches:
        ok += sum(r.result == 0 for r in engine.debit_many(batch).results)
    elapsed = time.perf_counter() - start
    total = len(batches) * cfg.batch_size
    return {
        "debits": total,
        "ok": ok,
        "seconds": round(elapsed, 3),
        "debits_per_s": round(total / elapsed),
        "durability": "Redis AOF everysec; journal drained to SQL asynchronously",
    }


def bench_tally_single(
    engine: Engine, ids: list[str], cfg: BenchConfig, rng: random.Random
) -> dict[str, object]:
    run_id = uuid.uuid4().hex[:8]
    latencies_us: list[float] = []
    start = time.perf_counter()
    for i in range(cfg.single_debits):
        tid, aid = f"s{run_id}-{i}", rng.choice(ids)
        t0 = time.perf_counter()
        engine.debit(tid, aid, 1)
        latencies_us.append((time.perf_counter() - t0) * 1e6)
    elapsed = time.perf_counter() - start
    return {
        "debits": cfg.single_debits,
        "debits_per_s": round(cfg.single_debits / elapsed),
        "p50_us": round(statistics.median(latencies_us), 1),
        "p99_us": round(_percentile(latencies_us, 0.99), 1),
        "durability": "Redis AOF everysec; one round trip per debit",
    }


def bench_raw_redis(
    node: RedisNode, ids: list[str], cfg: BenchConfig, rng: random.Random
) -> dict[str, object]:
    client = node.client(socket_timeout=60)
    for aid in ids:
        client.hset(f"raw:a:{aid}", "bal", FUNDS_MINOR)
    chunk = 10_000
    start = time.perf_counter()
    for base in range(0, cfg.raw_debits, chunk):
        pipe = client.pipeline(transaction=False)
        for i in range(base, min(base + chunk, cfg.raw_debits)):
            aid = rng.choice(ids)
            pipe.hincrby(f"raw:a:{aid}", "bal", -1)
            pipe.hset("raw:tx", f"r{i}", f"d|{aid}|1|USD|0|")
            pipe.xadd("raw:journal", {"d": f"r{i}|d|{aid}|1"})
        pipe.execute()
    elapsed = time.perf_counter() - start
    client.close()
    return {
        "debits": cfg.raw_debits,
        "debits_per_s": round(cfg.raw_debits / elapsed),
        "durability": "Redis AOF everysec; NO balance check, NO idempotency (a ceiling, not a design)",
    }


def bench_postgres(cfg: BenchConfig, ids: list[str], rng: random.Random) -> dict[str, object]:
    if not cfg.postgres_url:
        return {"skipped": "no --postgres-url"}
    import psycopg

    suffix = uuid.uuid4().hex[:8]
    acc, jr = f"bench_acc_{suffix}", f"bench_journal_{suffix}"
    try:
        conn = psycopg.connect(cfg.postgres_url, connect_timeout=5)
    except psycopg.Error as exc:
        return {"skipped": f"PostgreSQL unreachable: {str(exc).strip()[:200]}"}
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {acc} (id text PRIMARY KEY, balance_minor bigint NOT NULL)")
            cur.execute(
                f"CREATE TABLE {jr} (transfer_id text PRIMARY KEY, account_id text, amount_minor bigint, balance_after bigint)"
            )
            with cur.copy(f"COPY {acc} (id, balance_minor) FROM STDIN") as copy:
                for aid in ids:
                    copy.write_row((aid, FUNDS_MINOR))
        conn.commit()
        latencies_us: list[float] = []
        start = time.perf_counter()
        for i in range(cfg.postgres_debits):
            aid = rng.choice(ids)
            t0 = time.perf_counter()
            with conn.cursor() as cur:
                cur.execute(
                    f"UPDATE {acc} SET balance_minor = balance_minor - 1 WHERE id = %s AND balance_minor >= 1 RETURNING balance_minor",
                    (aid,),
                )
                row = cur.fetchone()
                cur.execute(
                    f"INSERT INTO {jr} VALUES (%s, %s, 1, %s)",
                    (f"p{i}", aid, row[0] if row else None),
                )
            conn.commit()
            latencies_us.append((time.perf_counter() - t0) * 1e6)
        elapsed = time.perf_counter() - start
        return {
            "debits": cfg.postgres_debits,
            "debits_per_s": round(cfg.postgres_debits / elapsed),
            "p50_us": round(statistics.median(latencies_us), 1),
            "p99_us": round(_percentile(latencies_us, 0.99), 1),
            "durability": "fsync per commit (synchronous_commit=on), one transaction per debit, one connection",
        }
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {acc}")
            cur.execute(f"DROP TABLE IF EXISTS {jr}")
        conn.commit()
        conn.close()


def run(cfg: BenchConfig, progress: Callable[[str], None] = lambda _: None) -> BenchResult:
    from tally.bench.machine import describe

    rng = random.Random(cfg.seed)
    ids = [f"acct-{i}" for i in range(cfg.accounts)]
    with tempfile.TemporaryDirectory(prefix="tally-bench-") as tmp:
        node = RedisNode(name="bench", dir=Path(tmp) / "redis", directives=dict(BENCH_DIRECTIVES))
        with node, SqlLedger.open(f"sqlite:///{tmp}/ledger.sqlite3") as ledger:
            layout = KeyLayout()
            client = node.client(socket_timeout=60)
            epoch = init_store(client, layout, ledger)
            store = RedisStore(client, layout, epoch.epoch_id)
            store.load_scripts()
            engine = Engine(store, ledger)
            progress(f"funding {cfg.accounts} accounts")
            _fund(store, ids)
            result = BenchResult(cfg, describe(), node.binary.version_text)  # type: ignore[union-attr]
            progress("tally debit_many, uniform accounts")
            result.rows["tally_batch"] = bench_tally_batch(engine, lambda: rng.choice(ids), cfg)
            progress("tally debit_many, skewed accounts")
            result.rows["tally_batch_skewed"] = bench_tally_batch(
                engine, zipf_picker(ids, rng), cfg
            )
            progress("tally single debit")
            result.rows["tally_single"] = bench_tally_single(engine, ids, cfg, rng)
            progress("raw Redis ceiling")
            result.rows["raw_redis"] = bench_raw_redis(node, ids, cfg, rng)
            client.close()
    progress("PostgreSQL peer")
    result.rows["postgres_peer"] = bench_postgres(cfg, ids, rng)
    _ratios(result)
    return result


def run_cluster(
    cfg: BenchConfig, primaries: list[int], progress: Callable[[str], None] = lambda _: None
) -> BenchResult:
    """``--cluster``: per M two rows, ``cluster_m<M>`` (random transfer ids) and
    ``cluster_m<M>_account_shard`` (ids in their account's shard), each M on its own cluster
    formed, measured and stopped in turn (``bench.cluster``); ``x_m1``: debits/s over the
    one-primary row with the same ids in the same run, when there is one."""
    from tally.bench.cluster import ClusterRun, bench_cluster
    from tally.bench.machine import describe
    from tally.ops.binary import find_redis_server

    binary = find_redis_server()
    result = BenchResult(cfg, describe(), binary.version_text)
    for m in primaries:
        run = ClusterRun(m, cfg.accounts, cfg.batch_debits, cfg.batch_size)
        for placement, row in bench_cluster(run, binary, progress).items():
            suffix = "" if placement == "random" else f"_{placement}"
            result.rows[f"cluster_m{m}{suffix}"] = row
    for row in result.rows.values():
        suffix = "" if row["ids"] == "random" else f"_{row['ids']}"
        base = result.rows.get(f"cluster_m1{suffix}", {}).get("debits_per_s")
        rate = row.get("debits_per_s")
        if isinstance(base, int) and base and isinstance(rate, int):
            row["x_m1"] = round(rate / base, 2)
    return result


def _ratios(result: BenchResult) -> None:
    batch = result.rows["tally_batch"].get("debits_per_s")
    pg = result.rows["postgres_peer"].get("debits_per_s")
    if isinstance(batch, int) and isinstance(pg, int) and pg:
        result.rows["tally_batch"]["x_postgres_peer"] = round(batch / pg, 1)
