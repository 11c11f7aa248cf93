"""Translating redis-py exceptions into tally's tree, at the adapter boundary: the one translator
for everything that talks to Redis (the store, and the drain/reconcile/rebuild processes)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from tally.errors import (
    StoreError,
    StoreLoading,
    StoreLost,
    StoreNotEnoughReplicas,
    StoreOutcomeUnknown,
    StoreReadOnly,
    StoreUnavailable,
)


def translate(exc: redis.RedisError, *, sent: bool) -> StoreError:
    """``sent``: the command may have reached the server, so a broken connection leaves the
    outcome unknown (the caller retries with the same ids) rather than simply "not done"."""
    text = str(exc)
    if isinstance(exc, redis.ReadOnlyError) or "READONLY" in text:
        return StoreReadOnly(f"the Redis node is read-only: {text}")
    if isinstance(exc, redis.BusyLoadingError) or text.startswith("LOADING"):
        return StoreLoading(f"Redis is loading its dataset: {text}")
    if "NOREPLICAS" in text:
        return StoreNotEnoughReplicas(f"the primary refuses writes: {text}")
    if "MASTERDOWN" in text:
        return StoreUnavailable(f"the replica lost its primary: {text}")
    if text.startswith("NOGROUP") or "no such key" in text.lower():
        return StoreLost(f"the journal stream or its group is missing: {text}")
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        if sent:
            return StoreOutcomeUnknown(f"connection to Redis broke mid-request: {text}")
        return StoreUnavailable(f"cannot reach Redis: {text}")
    return StoreError(f"Redis error: {text}")


def is_noscript(exc: BaseException) -> bool:
    return isinstance(exc, redis.exceptions.NoScriptError)


def text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


@contextmanager
def translated(what: str, *, sent: bool = False) -> Iterator[None]:
    """Run redis-py calls; their errors leave as tally's, named by ``what``."""
    try:
        yield
    except redis.RedisError as exc:
        error = translate(exc, sent=sent)
        raise type(error)(f"{what}: {error}") from exc
