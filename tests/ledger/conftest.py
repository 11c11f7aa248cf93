"""Ledger fixtures: an open SqlLedger on SQLite and PostgreSQL, a Redis client and layout."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tally.ledger.sql_ledger import SqlLedger
from tally.ops.node import RedisNode
from tally.store.keys import KeyLayout


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[SqlLedger]:
    opened = SqlLedger.open(ledger_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def layout() -> KeyLayout:
    return KeyLayout("tally", 4)


@pytest.fixture
def rclient(redis_node: RedisNode) -> Iterator[redis.Redis]:
    client = redis_node.client()
    try:
        yield client
    finally:
        client.close()
