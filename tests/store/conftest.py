from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tally.domain.accounts import Account
from tally.ops.node import RedisNode
from tally.store.keys import KeyLayout
from tally.store.redis_store import RedisStore

EPOCH = "E-test"


def stamp_epoch(client: redis.Redis, layout: KeyLayout, epoch_id: str = EPOCH) -> None:
    """What init/rebuild do last: mark every shard with the dataset epoch."""
    client.mset({layout.epoch(s): layout.epoch_value(epoch_id) for s in range(layout.shards)})


@pytest.fixture
def layout() -> KeyLayout:
    return KeyLayout(shards=4)


@pytest.fixture
def store(redis_node: RedisNode, layout: KeyLayout) -> Iterator[RedisStore]:
    client = redis_node.client()
    stamp_epoch(client, layout)
    st = RedisStore(client, layout, EPOCH)
    st.load_scripts()
    yield st
    client.close()


def open_account(store: RedisStore, account_id: str, currency: str = "USD", limit: int = 0) -> None:
    store.upsert_account(Account(account_id, currency, limit))
