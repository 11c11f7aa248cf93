"""redis-py errors translated into tally's tree at the ledger's Redis boundary."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
import redis.exceptions as rex

from tally.errors import (
    StoreError,
    StoreLoading,
    StoreLost,
    StoreReadOnly,
    StoreUnavailable,
)


def text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


@contextmanager
def translated(what: str) -> Iterator[None]:
    try:
        yield
    except rex.ReadOnlyError as exc:
        raise StoreReadOnly(f"{what}: the node is read-only") from exc
    except rex.BusyLoadingError as exc:
        raise StoreLoading(f"{what}: the node is loading its dataset") from exc
    except (rex.ConnectionError, rex.TimeoutError) as exc:
        raise StoreUnavailable(f"{what}: {exc}") from exc
    except rex.ResponseError as exc:
        message = str(exc)
        if message.startswith("NOGROUP") or "no such key" in message.lower():
            raise StoreLost(f"{what}: the journal stream or its group is missing") from exc
        raise StoreError(f"{what}: {message[:200]}") from exc
    except redis.RedisError as exc:
        raise StoreError(f"{what}: {exc}") from exc
