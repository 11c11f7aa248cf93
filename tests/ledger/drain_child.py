"""A drainer in its own process, for the SIGKILL test: it pauses at a fault point after writing
a marker file, so the test can kill it exactly there."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tally.ledger.sql_ledger import SqlLedger
from tally.store.keys import KeyLayout
from tally.sync.drainer import Drainer


def main() -> None:
    url, port, shards, point, marker = sys.argv[1:6]
    client = redis.Redis(
        host="127.0.0.1",
        port=int(port),
        socket_timeout=5.0,
        socket_connect_timeout=2.0,
        retry=Retry(NoBackoff(), 0),
    )

    def fault(where: str) -> None:
        if where == point:
            Path(marker).write_text(where)
            time.sleep(60)  # killed here

    ledger = SqlLedger.open(url, migrate=False)
    drainer = Drainer(client, KeyLayout("tally", int(shards)), ledger, count=3, fault=fault)
    for _ in range(10_000):
        if drainer.run_once(limit=3) == 0:
            break


if __name__ == "__main__":
    main()
