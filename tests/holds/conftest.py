from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tally.ops.node import RedisNode
from tally.store.keys import KeyLayout
from tally.store.redis_store import RedisStore
from tests.store.conftest import EPOCH, stamp_epoch


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


def server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def wait_past(client: redis.Redis, at_ms: int) -> None:
    """Until the server's clock is at or past ``at_ms`` (bounded: expiries in tests are ms)."""
    for _ in range(10_000):
        if server_ms(client) >= at_ms:
            return
    raise AssertionError(f"the server clock never reached {at_ms}")
