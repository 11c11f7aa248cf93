"""tally's store on a real 3-primary Redis Cluster with a replica per primary, initialised
against a SQLite ledger, and one running deployment (what one ``tally serve`` process holds);
names whose logical shard is chosen. For the cluster rebuild and quarantine tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tally.bootstrap import Deployment, initialise_store, open_deployment
from tally.config import Settings
from tally.errors import StoreLost
from tally.ledger.sql_ledger import SqlLedger
from tally.ops.binary import RedisBinary
from tally.ops.cluster import Cluster
from tally.store.keys import KeyLayout

from .rc_topologies import redis_cluster

LAYOUT = KeyLayout("tally", 16)  # Settings' defaults
_names = itertools.count()
DRAIN_ROUNDS_MAX = 50


@contextmanager
def store_on_cluster(
    tmp_path: Path, binary: RedisBinary
) -> Iterator[tuple[Cluster, Settings, Deployment]]:
    with Cluster(redis_cluster(tmp_path / "rc", replicas=1), binary=binary) as cluster:
        nodes = ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes())
        settings = Settings.resolve(
            redis_url=f"redis+cluster://:{cluster.password}@{nodes}",
            ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
            home=str(tmp_path / "home"),
        )
        with SqlLedger.open(settings.ledger_url) as ledger:
            initialise_store(settings, LAYOUT, ledger)
        with open_deployment(settings) as dep:
            yield cluster, settings, dep


def name_in(shard: int, prefix: str, *, where: set[int] | None = None) -> str:
    """A fresh id whose shard is ``shard`` (or, ``where``, one of those shards)."""
    wanted = {shard} if where is None else where
    for _ in range(100_000):  # bounded: a hit comes within a few dozen names
        name = f"{prefix}-{next(_names)}"
        if LAYOUT.shard_of(name) in wanted:
            return name
    raise AssertionError("no such name")


def drain(dep: Deployment, *, lost_ok: bool = False) -> None:
    """Until nothing is left; ``lost_ok``: shards still lost answer store_lost once the others
    are drained (the drainer settles every other shard first)."""
    drainer = dep.drainer()
    for _ in range(DRAIN_ROUNDS_MAX):
        try:
            if drainer.run_once() == 0:
                return
        except StoreLost:
            if lost_ok:
                return
            raise
    raise AssertionError("the journal did not drain")
