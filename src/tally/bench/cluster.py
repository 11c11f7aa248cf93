"""``tally bench debits --cluster 1,3``: tally's batch debit path on a Redis Cluster of M
primaries, each M in one run, and what bounds it (CPU seconds of every process, measured).

For each M the bench starts M empty redis-server processes on loopback (no fault proxy, no
replicas: the bench measures primaries), forms the cluster itself (``CLUSTER ADDSLOTS`` and
``CLUSTER MEET``, so the embedded 6.2 binary works as well as the system 7.x), initialises it
through ``sync.cluster_init`` (a ledger of its own, in a temporary directory), funds the
accounts and sends ``Engine.debit_many`` batches through the ``ClusterStore``: each batch split
by shard, each primary's calls pipelined on its own connection, the primaries concurrently.
Transfer ids are random, so most transfers' id records live in another shard than their
account and go the three-step way (reserve, transfer, finalize): what a real client costs.
Everything is stopped when the row is done.

CPU: ``utime + stime`` from ``/proc/<pid>/stat`` of every redis-server and of the load process
(this one, all its threads), before and after the timed loop; ``cpu_cores`` is CPU seconds per
wall second (1.0 = one core busy the whole time).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from tally.billing.engine import Engine
from tally.domain.accounts import Account
from tally.errors import ConfigError, InvariantViolation, ProcessError
from tally.ledger.sql_ledger import SqlLedger
from tally.ops.binary import RedisBinary
from tally.ops.cluster.formation import ADDSLOTS_BATCH, SLOTS, slot_ranges
from tally.ops.cluster.procs import command
from tally.ops.node import RedisNode, free_port_pair
from tally.ops.profiles import CLUSTER_BUS_PORT_OFFSET
from tally.store.cluster_store import ClusterStore
from tally.store.discovery import ClusterTarget, cluster_client
from tally.store.keys import KeyLayout
from tally.sync.cluster_init import init_cluster_store

PRIMARIES_MAX = 16
#: where the transfer ids' records live: anywhere (three steps for most), or in the account's
#: shard (one script call)
PLACEMENTS = ("random", "account_shard")
ID_DRAWS_MAX = 10_000
FORM_TIMEOUT_S = 60.0
POLL_S = 0.1
FUNDS_MINOR = 10**12
FUND_BATCH = 5_000
#: Every setting the bench depends on, stated (never a server default): the durability of the
#: single-node rows (AOF everysec), a cluster that answers only with every slot covered.
CLUSTER_DIRECTIVES: dict[str, str | int | list[str]] = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    "save": "",
    "maxmemory-policy": "noeviction",
    "cluster-enabled": "yes",
    "cluster-config-file": "nodes.conf",
    "cluster-node-timeout": 15000,
    "cluster-require-full-coverage": "yes",
    "min-replicas-to-write": 0,
}


def parse_primaries(text: str) -> list[int]:
    """``1,3`` -> [1, 3]: each a whole number 1..PRIMARIES_MAX, no repeats."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or len(set(values)) != len(values):
        raise ConfigError(
            f"--cluster must list primary counts like 1,3, got {text!r}",
            hint="e.g. --cluster 1,3",
        )
    if not all(1 <= v <= PRIMARIES_MAX for v in values):
        raise ConfigError(
            f"--cluster: each primary count must be 1..{PRIMARIES_MAX}, got {text!r}",
            hint="e.g. --cluster 1,3",
        )
    return values


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15 of the whole line
    return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def loopback_cluster(
    base: Path, primaries: int, binary: RedisBinary | None = None
) -> Iterator[list[RedisNode]]:
    """M empty primaries on 127.0.0.1 formed into one cluster; all stopped on exit."""
    host = "127.0.0.1"
    nodes = [
        RedisNode(
            name=f"p{k}",
            dir=base / f"p{k}",
            port=free_port_pair(host, CLUSTER_BUS_PORT_OFFSET),
            host=host,
            directives=dict(CLUSTER_DIRECTIVES),
            binary=binary,
        )
        for k in range(primaries)
    ]
    started: list[RedisNode] = []
    try:
        for node in nodes:
            node.start()
            started.append(node)
        _form(nodes)
        yield nodes
    finally:
        for node in reversed(started):
            with contextlib.suppress(Exception):
                node.stop()


def _form(nodes: Sequence[RedisNode]) -> None:
    clients = [n.client(socket_timeout=10) for n in nodes]
    try:
        for k, ((first, end), client) in enumerate(
            zip(slot_ranges(len(nodes)), clients, strict=True)
        ):
            command(client, "CLUSTER", "SET-CONFIG-EPOCH", k + 1)
            for start in range(first, end, ADDSLOTS_BATCH):
                command(
                    client, "CLUSTER", "ADDSLOTS", *range(start, min(start + ADDSLOTS_BATCH, end))
                )
        for node in nodes[1:]:
            command(clients[0], "CLUSTER", "MEET", node.host, node.port)
        deadline = time.monotonic() + FORM_TIMEOUT_S
        while not all(_formed(c, len(nodes)) for c in clients):
            if time.monotonic() > deadline:
                raise ProcessError(f"the bench cluster of {len(nodes)} did not form in time")
            time.sleep(POLL_S)
    finally:
        for client in clients:
            client.close()


def _formed(client: redis.Redis, expected: int) -> bool:
    raw = command(client, "CLUSTER", "INFO")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    info = dict(line.split(":", 1) for line in text.split() if ":" in line)
    return (
        info.get("cluster_state") == "ok"
        and int(info.get("cluster_slots_ok", 0)) == SLOTS
        and int(info.get("cluster_known_nodes", 0)) == expected
    )


@dataclass
class ClusterRun:
    primaries: int
    accounts: int
    debits: int
    batch_size: int


def bench_cluster(
    run: ClusterRun,
    binary: RedisBinary | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, dict[str, object]]:
    """M primaries formed, initialised, funded; then ``run.debits`` debits in batches twice:
    ``random`` ids (most go the three-step way) and ``account_shard`` ids (each id chosen in its
    account's shard: one script call). One row each, by id placement."""
    ids = [f"acct-{i}" for i in range(run.accounts)]
    with tempfile.TemporaryDirectory(prefix="tally-bench-cluster-") as tmp:
        progress(f"cluster of {run.primaries} primaries on loopback")
        with (
            loopback_cluster(Path(tmp) / "rc", run.primaries, binary) as nodes,
            SqlLedger.open(f"sqlite:///{tmp}/ledger.sqlite3") as ledger,
        ):
            target = ClusterTarget(tuple((n.host, n.port) for n in nodes), password=None)
            client = cluster_client(target, socket_timeout_s=60.0)
            layout = KeyLayout()
            epoch = init_cluster_store(client, layout, ledger)
            store = ClusterStore(client, layout, epoch.epoch_id, wait_replicas=0)
            try:
                store.load_scripts()
                engine = Engine(store, ledger)
                progress(f"funding {run.accounts} accounts")
                for aid in ids:
                    store.upsert_account(Account(aid, "USD"))
                for start in range(0, len(ids), FUND_BATCH):
                    chunk = ids[start : start + FUND_BATCH]
                    store.apply([(f"fund-{a}", "c", a, FUNDS_MINOR, "USD") for a in chunk])
                rows: dict[str, dict[str, object]] = {}
                for placement in PLACEMENTS:
                    progress(f"debit_many on {run.primaries} primaries, {placement} ids")
                    batches = _batches(ids, run, layout, placement)
                    rows[placement] = _timed(engine, nodes, batches)
            finally:
                store.close()
            version = nodes[0].server_binary.version_text
    return {
        placement: {"primaries": run.primaries, "ids": placement, "redis_version": version, **row}
        for placement, row in rows.items()
    }


def _batches(
    ids: list[str], run: ClusterRun, layout: KeyLayout, placement: str
) -> list[list[tuple[str, str, int]]]:
    """(transfer id, account, amount) batches; ``account_shard``: each id drawn until it hashes
    to its account's shard (bounded: 1 in ``layout.shards`` does)."""
    rng = random.Random(run.primaries)
    tag = uuid.uuid4().hex[:8]
    serial = itertools.count()
    batches = []
    for b in range(max(1, run.debits // run.batch_size)):
        batch = []
        for _ in range(run.batch_size):
            aid = rng.choice(ids)
            tid = f"c{tag}-{b}-{next(serial)}"
            if placement == "account_shard":
                want = layout.shard_of(aid)
                for _ in range(ID_DRAWS_MAX):
                    if layout.shard_of(tid) == want:
                        break
                    tid = f"c{tag}-{b}-{next(serial)}"
                else:
                    raise InvariantViolation("no transfer id in the account's shard")
            batch.append((tid, aid, 1))
        batches.append(batch)
    return batches


def _timed(
    engine: Engine, nodes: Sequence[RedisNode], batches: list[list[tuple[str, str, int]]]
) -> dict[str, object]:
    pids = [n.pid for n in nodes]
    if any(p is None for p in pids):
        raise ProcessError("a bench cluster node is not running")
    me = os.getpid()
    before = {p: cpu_seconds(p) for p in [me, *pids] if p is not None}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    ok = 0
    for batch in batches:
        ok += sum(r.result == 0 for r in engine.debit_many(batch).results)
    elapsed = time.perf_counter() - start
    used = {p: cpu_seconds(p) - s for p, s in before.items()}
    load_after = os.getloadavg()[0]
    total = sum(len(b) for b in batches)
    load_cores = used[me] / elapsed
    redis_cores = [used[p] / elapsed for p in pids if p is not None]
    return {
        "debits": total,
        "ok": ok,
        "seconds": round(elapsed, 3),
        "debits_per_s": round(total / elapsed),
        "cpu_cores": {
            "load_process": round(load_cores, 2),
            "redis_primaries": [round(c, 2) for c in redis_cores],
        },
        "cpu_us_per_debit": {
            "load_process": round(used[me] / total * 1e6, 1),
            "redis_primaries": round(sum(used[p] for p in pids if p is not None) / total * 1e6, 1),
        },
        "bound": bound_by(load_cores, redis_cores, os.cpu_count() or 1, load_after),
        "loadavg_1m": [round(load_before, 2), round(load_after, 2)],
        "durability": "AOF everysec, no replicas, no WAIT (the primaries alone)",
    }


def bound_by(load_cores: float, redis_cores: list[float], cpus: int, loadavg: float) -> str:
    """What the CPU figures say limited the run: a process near one full core is the bound (the
    load process is one Python process: the GIL keeps it to about one core), else the machine's
    cores when this run used them all, else the share of them this run got beside other
    processes (the 1-minute load average above the core count says they were waiting)."""
    busy = 0.85
    used = load_cores + sum(redis_cores)
    if load_cores >= busy:
        return f"the load process: {load_cores:.2f} of one core (one Python process)"
    hot = [i for i, c in enumerate(redis_cores) if c >= busy]
    if hot:
        return f"redis primary {hot[0]}: {redis_cores[hot[0]]:.2f} of one core"
    if used >= busy * cpus:
        return f"the machine: {used:.2f} of {cpus} cores in use by this run"
    if loadavg > cpus:
        return (
            f"CPU share: this run got {used:.2f} of {cpus} cores, load average {loadavg:.1f} "
            "(other processes)"
        )
    return f"not CPU ({used:.2f} of {cpus} cores): round trips or waiting"
