"""The single-debit hot path of the HTTP API, on the event loop, and credits' store step.

A sync route costs a thread hop per request and, under load, a GIL convoy of worker threads each
waiting on its own Redis socket. Here a debit goes to the store's async shell
(``store.async_shell``: the same transfer codec as ``RedisStore.apply``) through a ``Coalescer``:
sent at once when nothing is in flight, batched with the others while a call is.

The guard is ``Engine.recover``, the very one ``Engine.debit`` uses: after store_lost with a newer
epoch in the ledger, READONLY or a broken connection with a Sentinel that names a new primary,
NOREPLICAS from a replaced primary, it catches up and the debit is sent once more (idempotent
by transfer id); anything else reaches the caller. Concurrent callers hit by one failover
recover once: the first reconnects, the others see the store already moved on and resend.

A credit keeps the ledger-first rule: ``Engine.credit_intent`` records its intent in SQL (in a
worker thread) before anything reaches the store; only then does its store step join the
coalescer's next call, with the same guard; ``Engine.credit_applied`` makes the outcome. A
store error after the guard is a pending credit (202), exactly as ``Engine.credit`` answers:
the intent is durable and the applier applies it once the store is back.
"""

from __future__ import annotations

import asyncio
import logging

import redis
from starlette.concurrency import run_in_threadpool

from tally.billing.engine import CreditOutcome, Engine
from tally.billing.validate import raw_transfer
from tally.domain.accounts import SystemAccount
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
from tally.store.transfer_codec import RawTransfer

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
        if self.batcher is None:  # not a Redis store (the in-memory fake): the engine, off the loop
            return await run_in_threadpool(
                self.engine.debit, transfer_id, account_id, amount_minor, currency, occurred_at_ms
            )
        return await self._apply(raw)

    async def credit(
        self,
        transfer_id: str,
        account_id: str,
        amount_minor: int,
        currency: str,
        source: SystemAccount = SystemAccount.adjustments,
    ) -> CreditOutcome:
        """``Engine.credit``'s semantics, its store step coalesced (module docstring)."""
        if self.batcher is None:
            return await run_in_threadpool(
                self.engine.credit, transfer_id, account_id, amount_minor, currency, source
            )
        prepared = await run_in_threadpool(  # ledger first: the intent is durable before
            self.engine.credit_intent, transfer_id, account_id, amount_minor, currency, source
        )
        if isinstance(prepared, CreditOutcome):
            return prepared
        try:
            result = await self._apply(prepared)
        except StoreError:
            return CreditOutcome(transfer_id, None, None)
        if self.engine.credit_needs_settling(result):
            return await run_in_threadpool(self.engine.credit_applied, result)
        return self.engine.credit_applied(result)

    async def _apply(self, raw: RawTransfer) -> TransferResult:
        """One transfer through the coalescer, guarded like ``Engine._guarded``: at most one
        resend, after ``Engine.recover`` caught up."""
        batcher = self.batcher
        assert batcher is not None
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
