"""Stamping a dataset with its epoch: the last step of init and rebuild, all shards at once."""

from __future__ import annotations

import redis

from tally.store.errors import translate
from tally.store.keys import KeyLayout


def stamp_epoch(client: redis.Redis, layout: KeyLayout, epoch_id: str) -> None:
    values = {layout.epoch(s): layout.epoch_value(epoch_id) for s in range(layout.shards)}
    try:
        client.mset(values)  # one command: atomic, every shard writable at the same instant
    except redis.RedisError as exc:
        raise translate(exc, sent=True) from exc


def read_epochs(client: redis.Redis, layout: KeyLayout) -> list[str | None]:
    try:
        raw = client.mget([layout.epoch(s) for s in range(layout.shards)])
    except redis.RedisError as exc:
        raise translate(exc, sent=False) from exc
    return [v.decode() if isinstance(v, bytes) else None for v in raw]
