"""Translating redis-py exceptions into tally's tree, at the adapter boundary."""

from __future__ import annotations

import redis

from tally.errors import (
    StoreError,
    StoreLoading,
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
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        if sent:
            return StoreOutcomeUnknown(f"connection to Redis broke mid-request: {text}")
        return StoreUnavailable(f"cannot reach Redis: {text}")
    return StoreError(f"Redis error: {text}")


def is_noscript(exc: BaseException) -> bool:
    return isinstance(exc, redis.exceptions.NoScriptError)
