"""The single-debit hot path of the HTTP API, on the event loop.

A sync route costs a thread hop per request and, under load, a GIL convoy of worker threads each
waiting on its own Redis socket. Here a debit goes to the store's async shell
(``store.async_shell``: the same transfer codec as ``RedisStore.apply``) through a ``Coalescer``:
sent at once when nothing is in flight, batched with the others while a call is.

The guard is ``Engine.recover``, the very one ``Engine.debit`` uses: after store_lost with a newer
epoch in the ledger, READONLY or a broken connection with a Sentinel that names a new primary,
NOREPLICAS from a replaced primary, it catches up and the debit is sent once more (idempotent
by transfer id); anything else reaches the caller. Concurrent callers hit by one failover
recover once: the first reconnects, the others see the store already moved on and resend.
"""

from __future__ import annotations

import asyncio
import logging

import redis
from starlette.concurrency import run_in_threadpool

from tally.billing.engine import Engine
from tally.billing.validate import raw_transfer
from tally.domain.transfers import TransferResult
from tally.errors import (
    StoreError,
    StoreLost,
    StoreNotEnoughReplicas,
    StoreReadOnly,
    StoreUnavailable,
)
from tally.store.async_shell import AsyncTransfers, Coalescer
from tally.store.redis_store import RedisStore

log = logging.getLogger("tally.service")

#: The errors ``Engine.recover`` may catch up from (a new epoch, a new primary).
CATCH_UP = (StoreLost, StoreReadOnly, StoreUnavailable, StoreNotEnoughReplicas)


class AsyncDebits:
    def __init__(self, engine: Engine, *, batch_max: int | None = None) -> None:
        self.engine = engine
        store = engine.store
        self.shell: AsyncTransfers | None = None
        self.batcher: Coalescer | None = None
        if isinstance(store, RedisStore):
            self.shell = AsyncTransfers(store)
            self.batcher = (
                Coalescer(self.shell)
                if batch_max is None
                else Coalescer(self.shell, batch_max=batch_max)
            )
        self._recovering = asyncio.Lock()
        self.recoveries = 0

    async def debit(
        self,
        transfer_id: str,
        account_id: str,
        amount_minor: int,
        currency: str = "",
        occurred_at_ms: int | None = None,
    ) -> TransferResult:
        raw = raw_transfer(  # validates
            "d", transfer_id, account_id, amount_minor, currency, occurred_at_ms
        )
        batcher = self.batcher
        if batcher is None:  # not a Redis store (the in-memory fake): the engine, off the loop
            return await run_in_threadpool(
                self.engine.debit, transfer_id, account_id, amount_minor, currency, occurred_at_ms
            )
        seen = self._state()
        try:
            return await batcher.submit(raw)
        except StoreError as exc:
            if not await self._recover(exc, seen):
                raise
        return await batcher.submit(raw)

    def _state(self) -> tuple[redis.Redis, str]:
        store = self.engine.store
        assert isinstance(store, RedisStore)
        return store.client, store.epoch_id

    async def _recover(self, exc: StoreError, seen: tuple[redis.Redis, str]) -> bool:
        async with self._recovering:
            if isinstance(exc, CATCH_UP) and self._state() != seen:
                return True  # another caller already caught up: just resend
            self.recoveries += 1
            return await run_in_threadpool(self.engine.recover, exc)

    async def close(self) -> None:
        if self.shell is not None:
            await self.shell.aclose()
