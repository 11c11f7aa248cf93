"""One translator for every Redis caller (issue 12): the store and the sync processes (drainer,
reconcile, rebuild) map the same reply to the same tally error."""

from __future__ import annotations

import pytest
import redis

from tally.errors import (
    StoreError,
    StoreLoading,
    StoreLost,
    StoreNotEnoughReplicas,
    StoreReadOnly,
    StoreUnavailable,
)
from tally.store.errors import translate, translated

CASES = [
    (redis.ResponseError("NOREPLICAS Not enough good replicas to write."), StoreNotEnoughReplicas),
    (redis.ResponseError("MASTERDOWN Link with MASTER is down"), StoreUnavailable),
    (redis.ReadOnlyError("You can't write against a read only replica."), StoreReadOnly),
    (redis.BusyLoadingError("LOADING Redis is loading the dataset in memory"), StoreLoading),
    (redis.ResponseError("NOGROUP No such key 'j' or consumer group 'drainer'"), StoreLost),
    (redis.ConnectionError("Connection refused"), StoreUnavailable),
    (redis.ResponseError("WRONGTYPE Operation against a key"), StoreError),
]


@pytest.mark.parametrize(
    ("exc", "expected"), CASES, ids=[type(c[0]).__name__ + ":" + str(c[0])[:12] for c in CASES]
)
def test_the_sync_processes_and_the_store_translate_alike(
    exc: redis.RedisError, expected: type[StoreError]
) -> None:
    assert type(translate(exc, sent=False)) is expected
    with pytest.raises(StoreError) as caught, translated("drain shard 0"):
        raise exc
    assert type(caught.value) is expected
    assert str(caught.value).startswith("drain shard 0: ")
    assert caught.value.__cause__ is exc
