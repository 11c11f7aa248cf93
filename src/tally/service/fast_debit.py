"""The single-debit hot path of the HTTP API, on the event loop.

A sync route costs a thread hop per request (anyio's worker pool) and, under load, a GIL convoy
of worker threads each waiting on its own Redis socket (profiled: p99 over 500 ms at 32 in
flight). A debit is one Lua script call, so this sends the very call ``RedisStore.apply`` would
send (same plan, same script, same reply parsing) over ``redis.asyncio``, without a thread.

Only a clean reply is answered here. Anything else (an error, a timeout, NOSCRIPT, store_lost,
backpressure, replicas to WAIT for, a Sentinel deployment) goes to ``Engine.debit`` in a worker
thread, whose epoch guard, reconnect and error translation decide. Resending is safe: a debit is
idempotent by its transfer id (a call that applied but lost its reply comes back as a replay
with the first outcome)."""

from __future__ import annotations

import logging

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.concurrency import run_in_threadpool

from tally.billing.engine import Engine
from tally.billing.validate import raw_transfer
from tally.domain.transfers import TransferResult
from tally.store.redis_store import RawTransfer, RedisStore

log = logging.getLogger("tally.service")

CONNECTIONS_MAX = 64


class AsyncDebits:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._client: aredis.Redis | None = None
        self._source: object = None  # the sync client the async one was made like
        self.fast = 0
        self.fallbacks = 0

    def _async_client(self, store: RedisStore) -> aredis.Redis | None:
        """An async twin of the store's current client (a failover replaces that one)."""
        sync = store.client
        if sync is self._source:
            return self._client
        self._source, self._client = sync, None
        pool = sync.connection_pool
        kw = pool.connection_kwargs
        if type(pool) is not redis.ConnectionPool or "host" not in kw:
            return None  # Sentinel or a unix socket: the sync path only
        self._client = aredis.Redis(
            host=kw["host"],
            port=kw.get("port", 6379),
            db=kw.get("db", 0),
            username=kw.get("username"),
            password=kw.get("password"),
            socket_timeout=kw.get("socket_timeout"),
            socket_connect_timeout=kw.get("socket_connect_timeout"),
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            max_connections=CONNECTIONS_MAX,
        )
        return self._client

    async def debit(
        self, transfer_id: str, account_id: str, amount_minor: int, currency: str = ""
    ) -> TransferResult:
        raw = raw_transfer("d", transfer_id, account_id, amount_minor, currency)  # validates
        store = self.engine.store
        if isinstance(store, RedisStore) and not store.wait_replicas:
            found = await self._try(store, raw)
            if found is not None:
                self.fast += 1
                return found
        self.fallbacks += 1
        return await run_in_threadpool(
            self.engine.debit, transfer_id, account_id, amount_minor, currency
        )

    async def _try(self, store: RedisStore, raw: RawTransfer) -> TransferResult | None:
        client = self._async_client(store)
        if client is None:
            return None
        calls = list(store._plan([raw]))
        if len(calls) != 1:
            return None
        call = calls[0]
        try:
            reply = await client.evalsha(
                store._sha["transfer"], len(call.keys), *call.keys, *call.args
            )
        except (redis.RedisError, OSError) as exc:
            log.debug("fast debit %s: %s; the sync path decides", raw[0], exc)
            return None
        results: list[TransferResult | None] = [None]
        if store._collect(call, reply, [raw], results) is not None:
            return None
        return results[0]

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
