"""``tally bench sustained``: the store load and the deployment's own drainer running together.

The store's batch path is not what a deployment sustains: every transfer must also reach the
ledger of record. This runs, on one machine and in one process (as ``tally serve`` does: the
drainer is the service's own ``DrainService`` in a ``Worker`` with the service's pacing):

1. the ceiling: ``Engine.debit_many`` alone, as fast as it goes, for ``ceiling_s``; then the
   drainer alone settles that backlog (its rate is reported too);
2. the search: offered rates stepped up as fractions of the ceiling, ``step_s`` each, while the
   drainer runs; a step passes when the load kept its rate and drain lag p99 <= ``lag_p99_s_max``;
   the highest passing rate is kept (the search stops at the first failure);
3. the run: that rate for ``duration_s``, reporting transfers settled in the ledger per second,
   drain lag p50/p99, journal length at the end, Redis ``used_memory`` growth per transfer over
   the run's last two thirds (steady state), and the ratio to the ceiling;
4. Redis memory per live transfer record at the end: ``used_memory`` now minus before the first
   transfer, over the records held (every generation's ``HLEN``). Unlike the growth between two
   points, it cannot be inflated by where the window falls in a hash table's doubling: a record
   hash doubles its bucket array when full and moves the entries over incrementally, one bucket
   per command on that key, so for a while both arrays exist (up to 24 B of buckets per record
   against 8-16 B otherwise); a growth measured across that moment charges the whole new
   array to the transfers of the window.

Drain lag is sampled every ``LAG_SAMPLE_S``: the age of the oldest journal entry not yet trimmed
(entries are trimmed only once committed in SQL), 0 when every journal is empty.
"""

from __future__ import annotations

import dataclasses
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from tally.bench.debits import BENCH_DIRECTIVES
from tally.bootstrap import Deployment, open_deployment
from tally.config import Settings
from tally.domain.accounts import Account
from tally.domain.limits import DRAIN_WORKERS_DEFAULT
from tally.ledger.sql_ledger import SqlLedger
from tally.ops.node import RedisNode
from tally.service.workers import DrainService
from tally.store.keys import KeyLayout
from tally.sync.rebuild import init_store

LAG_SAMPLE_S = 0.25
STEP_FRACTIONS = (0.2, 0.35, 0.5, 0.65, 0.8, 1.0)
SETTLE_WAIT_S_MAX = 120.0
CREDIT_LIMIT_MINOR = 10**12  # accounts may go this far below zero: no funding step needed


@dataclass
class SustainedConfig:
    duration_s: float = 180.0
    ledger_url: str | None = None  # None: a SQLite file in a temporary dir
    accounts: int = 2000
    batch_size: int = 5000
    ceiling_s: float = 10.0
    step_s: float = 15.0
    lag_p99_s_max: float = 5.0
    drain_workers: int = DRAIN_WORKERS_DEFAULT
    seed: int = 1
    #: Run at this offered rate instead of searching for one (a before/after comparison needs
    #: the same rate on both sides; the search's pick moves with the machine's load).
    rate_per_s: float | None = None


@dataclass
class Phase:
    offered_per_s: float | None
    seconds: float
    transfers: int
    lag_s: list[float] = field(default_factory=list)

    @property
    def achieved_per_s(self) -> float:
        return self.transfers / self.seconds if self.seconds else 0.0

    def lag_p(self, q: float) -> float:
        if not self.lag_s:
            return 0.0
        ordered = sorted(self.lag_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _journal_lag_s(client: redis.Redis, layout: KeyLayout) -> float:
    pipe = client.pipeline(transaction=False)
    for key in layout.journals():
        pipe.xrange(key, count=1)
    firsts = [reply[0][0] for reply in pipe.execute() if reply]
    if not firsts:
        return 0.0
    oldest_ms = min(
        int(str(raw.decode() if isinstance(raw, bytes) else raw).split("-")[0]) for raw in firsts
    )
    return max(0.0, time.time() - oldest_ms / 1000)


def _journal_length(client: redis.Redis, layout: KeyLayout) -> int:
    return sum(int(client.xlen(key)) for key in layout.journals())


def _used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def _live_records(client: redis.Redis, layout: KeyLayout) -> int:
    """Transfer-id records held now, in both generations of every tx shard."""
    pipe = client.pipeline(transaction=False)
    for shard in range(layout.shards):
        for generation in (0, 1):
            pipe.hlen(layout.tx_generation(shard, generation))
    return sum(int(n) for n in pipe.execute())


class _LagSampler:
    def __init__(self, client: redis.Redis, layout: KeyLayout) -> None:
        self.client, self.layout = client, layout
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lag-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(LAG_SAMPLE_S):
            self.samples.append(_journal_lag_s(self.client, self.layout))

    def __enter__(self) -> _LagSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


class _Load:
    """Paced open-loop debits through ``Engine.debit_many``; ``rate_per_s`` None: flat out."""

    def __init__(self, dep: Deployment, ids: list[str], cfg: SustainedConfig) -> None:
        self.dep, self.ids, self.cfg = dep, ids, cfg
        self.rng = random.Random(cfg.seed)
        self.run_id = uuid.uuid4().hex[:6]
        self.sent = 0

    def run(self, seconds: float, rate_per_s: float | None, on_batch: Callable[[], None]) -> int:
        size, start, done = self.cfg.batch_size, time.perf_counter(), 0
        deadline = start + seconds
        while (now := time.perf_counter()) < deadline:
            if rate_per_s is not None:
                due = start + done / rate_per_s
                if due > now:
                    time.sleep(min(due - now, deadline - now))
                    continue
            batch = [
                (f"s{self.run_id}-{self.sent + i}", self.rng.choice(self.ids), 1)
                for i in range(size)
            ]
            self.dep.engine.debit_many(batch)
            self.sent += size
            done += size
            on_batch()
        return done


def _wait_drained(client: redis.Redis, layout: KeyLayout, timeout_s: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if _journal_length(client, layout) == 0:
            return time.perf_counter() - start
        time.sleep(0.05)
    raise TimeoutError(f"the journal did not drain within {timeout_s} s")


@contextmanager
def _ledger_url(server_url: str | None, tmp: Path) -> Iterator[str]:
    """A fresh ledger: a SQLite file, or a database created on the stated server and dropped."""
    if server_url is None or server_url.startswith("sqlite"):
        yield f"sqlite:///{tmp / 'ledger.sqlite3'}"
        return
    import sqlalchemy as sa

    from tally.ledger.urls import normalise_url

    admin = sa.create_engine(normalise_url(server_url), isolation_level="AUTOCOMMIT")
    name = f"tally_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        url = sa.engine.make_url(normalise_url(server_url)).set(database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def bench_deployment(
    prefix: str, server_url: str | None, *, drain_workers: int = DRAIN_WORKERS_DEFAULT
) -> Iterator[tuple[Deployment, RedisNode]]:
    """A deployment of its own for a benchmark: a redis-server with the bench's stated
    directives in a temporary dir, a ledger (a fresh PostgreSQL database on ``server_url``,
    dropped after; else SQLite), initialised; everything stopped and removed on exit. Its
    drainer settles ``drain_workers`` groups of shards at once (``TALLY_DRAIN_WORKERS``)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp_text:
        tmp = Path(tmp_text)
        node = RedisNode(name="bench", dir=tmp / "redis", directives=dict(BENCH_DIRECTIVES))
        with node, _ledger_url(server_url, tmp) as ledger_url:
            with SqlLedger.open(ledger_url) as ledger:
                client = node.client(socket_timeout=60)
                init_store(client, KeyLayout(), ledger)
                client.close()
            settings = dataclasses.replace(
                Settings.resolve(redis_url=node.url, ledger_url=ledger_url, home=str(tmp / "home")),
                drain_workers=drain_workers,
            )
            with open_deployment(settings) as dep:
                yield dep, node


def run(cfg: SustainedConfig, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    from tally.bench.machine import describe

    with bench_deployment("tally-sustained-", cfg.ledger_url, drain_workers=cfg.drain_workers) as (
        dep,
        node,
    ):
        out = _run(dep, cfg, progress)
        out["redis_version"] = node.binary.version_text if node.binary else None
    out["machine"] = describe()
    out["ledger"] = "postgresql" if out["config"]["ledger_url"] else "sqlite"
    return out


def _run(dep: Deployment, cfg: SustainedConfig, progress: Callable[[str], None]) -> dict[str, Any]:
    client, layout, ledger = dep.client, dep.layout, dep.ledger
    ids = [f"acct-{i}" for i in range(cfg.accounts)]
    progress(f"creating {cfg.accounts} accounts")
    for aid in ids:
        dep.engine.create_account(Account(aid, "USD", CREDIT_LIMIT_MINOR))
    load = _Load(dep, ids, cfg)
    drain = DrainService(dep)
    memory_empty = _used_memory(client)  # before the first transfer: what records add to

    progress(f"ceiling: the store alone for {cfg.ceiling_s:.0f} s")
    ceiling = Phase(None, 0.0, 0)
    start = time.perf_counter()
    ceiling.transfers = load.run(cfg.ceiling_s, None, lambda: None)
    ceiling.seconds = time.perf_counter() - start
    progress(f"the drainer alone settles those {ceiling.transfers} transfers")
    before = ledger.count_transfers()
    start = time.perf_counter()
    drain.drain_all()
    drain_alone_s = time.perf_counter() - start
    drained_alone = ledger.count_transfers() - before

    worker = drain.worker()
    worker.start()
    try:
        steps = [] if cfg.rate_per_s else _search(dep, load, ceiling.achieved_per_s, cfg, progress)
        passing = [s for s in steps if _passes(s, cfg)]
        fallback = cfg.rate_per_s or steps[0].offered_per_s
        rate = max((s.offered_per_s or 0.0 for s in passing), default=fallback)
        progress(f"run: {rate:,.0f} transfers/s offered for {cfg.duration_s:.0f} s")
        main, settled_per_s, memory_per_transfer = _main_run(dep, load, rate or 0.0, cfg)
        journal_end = _journal_length(client, layout)
        live = _live_records(client, layout)
        per_live_record = (_used_memory(client) - memory_empty) / live if live else 0.0
    finally:
        worker.stop()
    if worker.failed is not None:
        raise RuntimeError(f"the drainer failed: {worker.failed!r}")
    return {
        "config": asdict(cfg),
        "store_only_per_s": round(ceiling.achieved_per_s),
        "drainer_alone_per_s": round(drained_alone / drain_alone_s) if drain_alone_s else None,
        "steps": [
            {
                "offered_per_s": round(s.offered_per_s or 0),
                "achieved_per_s": round(s.achieved_per_s),
                "drain_lag_s_p99": round(s.lag_p(0.99), 2),
                "passed": _passes(s, cfg),
            }
            for s in steps
        ],
        "offered_per_s": round(rate or 0),
        "store_per_s": round(main.achieved_per_s),
        "settled_per_s": round(settled_per_s),
        "drain_lag_s_p50": round(main.lag_p(0.5), 2),
        "drain_lag_s_p99": round(main.lag_p(0.99), 2),
        # the search's short steps can pass a rate the full run does not hold: say so
        "kept_up": main.lag_p(0.99) <= cfg.lag_p99_s_max,
        "journal_length_end": journal_end,
        "redis_bytes_per_transfer": round(memory_per_transfer, 1),
        "transfers_sent": load.sent,
        "live_records_end": live,
        "redis_bytes_per_live_record": round(per_live_record, 1),
        "settled_to_store_only": round(settled_per_s / ceiling.achieved_per_s, 3),
        "drainer_errors": worker.errors,
    }


def _passes(step: Phase, cfg: SustainedConfig) -> bool:
    kept_rate = step.achieved_per_s >= 0.95 * (step.offered_per_s or 0)
    return kept_rate and step.lag_p(0.99) <= cfg.lag_p99_s_max


def _search(
    dep: Deployment,
    load: _Load,
    ceiling_per_s: float,
    cfg: SustainedConfig,
    progress: Callable[[str], None],
) -> list[Phase]:
    steps: list[Phase] = []
    for fraction in STEP_FRACTIONS:
        rate = ceiling_per_s * fraction
        progress(f"step: {rate:,.0f} transfers/s offered for {cfg.step_s:.0f} s")
        step = Phase(rate, cfg.step_s, 0)
        with _LagSampler(dep.client, dep.layout) as sampler:
            step.transfers = load.run(cfg.step_s, rate, lambda: None)
        step.lag_s = sampler.samples
        steps.append(step)
        progress(f"  achieved {step.achieved_per_s:,.0f}/s, drain lag p99 {step.lag_p(0.99):.2f} s")
        _wait_drained(dep.client, dep.layout, SETTLE_WAIT_S_MAX)
        if not _passes(step, cfg):
            break
    return steps


def _main_run(
    dep: Deployment, load: _Load, rate: float, cfg: SustainedConfig
) -> tuple[Phase, float, float]:
    """(phase, settled per second and Redis bytes per transfer, both over the run's last two
    thirds: the first third lets the drain lag settle into its steady state)."""
    main = Phase(rate, cfg.duration_s, 0)
    mark: dict[str, float] = {}
    third = cfg.duration_s / 3

    def on_batch() -> None:
        if "memory" not in mark and time.perf_counter() - started >= third:
            mark["memory"], mark["sent"] = _used_memory(dep.client), load.sent
            mark["settled"], mark["at"] = dep.ledger.count_transfers(), time.perf_counter()

    with _LagSampler(dep.client, dep.layout) as sampler:
        started = time.perf_counter()
        main.transfers = load.run(cfg.duration_s, rate, on_batch)
        ended = time.perf_counter()
        main.seconds = ended - started
    settled_end, memory_end, sent_end = (
        dep.ledger.count_transfers(),
        _used_memory(dep.client),
        load.sent,
    )
    main.lag_s = sampler.samples
    grown = sent_end - mark.get("sent", sent_end)
    per_transfer = (memory_end - mark.get("memory", memory_end)) / grown if grown else 0.0
    window_s = ended - mark.get("at", started)
    settled_per_s = (settled_end - mark.get("settled", 0)) / window_s if window_s else 0.0
    return main, settled_per_s, per_transfer


def summary_rows(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        "store only (ceiling)": {"transfers_per_s": data["store_only_per_s"]},
        "drainer alone": {"transfers_per_s": data["drainer_alone_per_s"]},
        "sustained: offered": {"transfers_per_s": data["offered_per_s"]},
        "sustained: settled in ledger": {
            "transfers_per_s": data["settled_per_s"],
            "lag_p50_s": data["drain_lag_s_p50"],
            "lag_p99_s": data["drain_lag_s_p99"],
            "kept_up": data["kept_up"],
            "journal_end": data["journal_length_end"],
            "redis_B_per_transfer": data["redis_bytes_per_transfer"],
            "redis_B_per_live_record": data["redis_bytes_per_live_record"],
            "x_ceiling": data["settled_to_store_only"],
        },
    }
