"""The async shell of the transfer codec, and automatic batching over it.

``AsyncTransfers`` sends ``TransferCodec`` calls over ``redis.asyncio`` on the event loop: the
same keys, arguments, shard split and reply parsing as ``RedisStore.apply`` (one codec), the same
error translation, the same single NOSCRIPT reload, ``WAIT`` on the same connection. It follows
the sync store's client: after a failover (``RedisStore.reconnect`` replaced the client) the next
call opens a pool to the new primary and closes the old pool. It never retries on its own; the
caller's guard (``Engine.recover``) decides, exactly as for the sync store.

``Coalescer`` batches concurrent single transfers the way TigerBeetle's client does
(``packet_enqueue``): when nothing is in flight a transfer is sent at once (no timer); while a
call is in flight, arriving transfers wait and leave together as the next call, up to
``batch_max``. Each caller gets exactly its own result or error: the codec keeps a batch in order
(an id repeated in a batch starts a new segment), so a duplicate inside a batch sees the first
one's outcome as a replay, as it would one call later.

    shell = AsyncTransfers(store)
    batcher = Coalescer(shell)
    result = await batcher.submit(("t1", "d", "alice", 100, ""))   # TransferResult or raises
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tally.domain.limits import SCRIPT_BATCH_MAX
from tally.domain.transfers import TransferResult
from tally.errors import ConfigError, InvariantViolation, StoreBackpressure, StoreError
from tally.store.errors import translate
from tally.store.redis_store import Applied, RedisStore
from tally.store.transfer_codec import RawTransfer, Reply, Settled, check_replicated

log = logging.getLogger(__name__)

CONNECTIONS_MAX = 64
#: Single transfers per coalesced call: big enough that one call carries a full HTTP load
#: (hundreds in flight), small enough that a call stays well under a millisecond of Lua.
BATCH_MAX = 256
#: Transfers waiting for the next call at most; beyond it a submit is refused (backpressure).
QUEUE_MAX = 16 * BATCH_MAX
#: Calls one sender task makes before it hands over to a fresh task.
ROUNDS_MAX = 1000


def async_twin(client: redis.Redis, connections_max: int = CONNECTIONS_MAX) -> aredis.Redis:
    """A ``redis.asyncio`` client to the node ``client`` talks to, with its timeouts and NO
    retries (a failure reaches the caller, who decides)."""
    kw = client.connection_pool.connection_kwargs
    common = {
        "db": kw.get("db", 0),
        "username": kw.get("username"),
        "password": kw.get("password"),
        "socket_timeout": kw.get("socket_timeout"),
        "socket_connect_timeout": kw.get("socket_connect_timeout"),
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
        "max_connections": connections_max,
    }
    if "path" in kw:
        return aredis.Redis(unix_socket_path=kw["path"], **common)
    return aredis.Redis(host=kw["host"], port=kw.get("port", 6379), **common)


class AsyncTransfers:
    def __init__(self, store: RedisStore, *, connections_max: int = CONNECTIONS_MAX) -> None:
        self.store = store
        self.connections_max = connections_max
        self._client: aredis.Redis | None = None
        self._source: redis.Redis | None = None  # the sync client the async one was made like
        self.pools_closed = 0

    @property
    def source(self) -> redis.Redis | None:
        """The sync client the current async pool follows (a recovery compares it)."""
        return self._source

    async def _current(self) -> aredis.Redis:
        sync = self.store.client
        if sync is not self._source or self._client is None:
            old, self._client, self._source = (
                self._client,
                async_twin(sync, self.connections_max),
                sync,
            )
            if old is not None:  # a failover: the old primary's sockets go now, not at exit
                self.pools_closed += 1
                with contextlib.suppress(Exception):
                    await old.aclose()
        return self._client

    async def apply(self, transfers: Sequence[RawTransfer]) -> Applied:
        """``RedisStore.apply``'s contract, on the event loop."""
        settled, acked = await self.settle(transfers)
        return Applied(settled.raise_or_results(), acked)

    async def settle(self, transfers: Sequence[RawTransfer]) -> tuple[Settled, int | None]:
        """Per transfer a result or an error (the batcher hands each to its own caller). A
        broken connection or timeout raises: every transfer's outcome is then unknown."""
        codec = self.store.codec
        calls = list(codec.plan(transfers))
        acked, replies = await self._exchange([c.command(codec.sha) for c in calls])
        missing = codec.noscript(replies)
        if missing:
            await self._load()
            acked, rerun = await self._exchange([calls[i].command(codec.sha) for i in missing])
            if codec.noscript(rerun):
                raise StoreError(
                    "scripts vanished right after loading; is something flushing them?"
                )
            for i, reply in zip(missing, rerun, strict=True):
                replies[i] = reply
        settled = codec.settle(calls, replies, transfers)
        check_replicated(acked, self.store.wait_replicas, self.store.wait_timeout_ms)
        return settled, acked

    async def _exchange(
        self, commands: list[tuple[str | int, ...]]
    ) -> tuple[int | None, list[Reply]]:
        client = await self._current()
        pool = client.connection_pool
        try:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
            if _closed_by_peer(conn):  # the one safe reconnect: nothing was sent on it yet
                await conn.disconnect(nowait=True)
                await conn.connect()
        except (redis.RedisError, OSError) as exc:
            raise _translated(exc, sent=False) from exc
        sent = False
        try:
            await conn.send_packed_command(
                [hiredis.pack_command(c) for c in commands],  # type: ignore[arg-type]
                check_health=False,
            )
            sent = True
            replies: list[Reply] = []
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
            acked = None
            if self.store.wait_replicas:  # on the same connection: WAIT counts its writes
                await conn.send_command(
                    "WAIT", self.store.wait_replicas, self.store.wait_timeout_ms
                )
                acked = int(await conn.read_response())
        except (redis.RedisError, OSError) as exc:
            await conn.disconnect(nowait=True)
            raise _translated(exc, sent=sent) from exc
        except BaseException:  # cancelled mid-exchange: the connection's state is unknown
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)
        return acked, replies

    async def _load(self) -> None:
        client = await self._current()
        codec = self.store.codec
        try:
            await client.script_load(codec.source)
        except (redis.RedisError, OSError) as exc:
            raise _translated(exc, sent=False) from exc

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        self._client, self._source = None, None


def _closed_by_peer(conn: Any) -> bool:
    """An idle pooled connection whose server went away (a restart, a failover's kill): its
    stream has seen EOF. redis-py's pool check (``can_read``) does not see it with the hiredis
    parser on asyncio, so a command sent on it would fail after sending and be reported as an
    unknown outcome, although the old server could never have received it (seen: a primary
    restarted empty answered ``outcome_unknown`` instead of ``store_lost``; the sync pool's
    check does see it)."""
    reader = getattr(conn, "_reader", None)
    return reader is not None and reader.at_eof()


def _translated(exc: BaseException, *, sent: bool) -> StoreError:
    if isinstance(exc, redis.RedisError):
        return translate(exc, sent=sent)
    return translate(redis.ConnectionError(str(exc)), sent=sent)


@dataclass(slots=True)
class _Waiter:
    raw: RawTransfer
    future: asyncio.Future[TransferResult]


class Coalescer:
    """TigerBeetle-style batching of single transfers: see the module docstring."""

    def __init__(
        self, shell: AsyncTransfers, *, batch_max: int = BATCH_MAX, queue_max: int = QUEUE_MAX
    ) -> None:
        if not 1 <= batch_max <= SCRIPT_BATCH_MAX or queue_max < batch_max:
            raise ConfigError("need 1 <= batch_max <= SCRIPT_BATCH_MAX and queue_max >= batch_max")
        self.shell = shell
        self.batch_max = batch_max
        self.queue_max = queue_max
        self._waiting: list[_Waiter] = []
        self._sender: asyncio.Task[None] | None = None
        self.calls = 0  # script exchanges made (a batch of n counts once)
        self.submitted = 0

    @property
    def in_flight(self) -> bool:
        return self._sender is not None

    async def submit(self, raw: RawTransfer) -> TransferResult:
        if len(self._waiting) >= self.queue_max:
            raise StoreBackpressure(f"{len(self._waiting)} transfers already wait for the store")
        waiter = _Waiter(raw, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        self.submitted += 1
        if self._sender is None:  # idle: this one leaves now, not after a timer
            self._sender = asyncio.create_task(self._send_while_waiting())
        return await waiter.future

    async def _send_while_waiting(self) -> None:
        """One call in flight at a time; whatever arrived meanwhile is the next call. A task
        makes at most ROUNDS_MAX calls, then hands over to a fresh one (bounded loop)."""
        try:
            for _ in range(ROUNDS_MAX):
                if not self._waiting:
                    return
                batch = self._waiting[: self.batch_max]
                del self._waiting[: self.batch_max]
                await self._send(batch)
        finally:
            self._sender = None
            if self._waiting:  # arrivals during the last round's return: a new sender
                self._sender = asyncio.create_task(self._send_while_waiting())

    async def _send(self, batch: list[_Waiter]) -> None:
        self.calls += 1
        try:
            settled, _ = await self.shell.settle([w.raw for w in batch])
        except Exception as exc:  # the whole call failed: every caller sees it
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(_own(exc) if isinstance(exc, StoreError) else exc)
            return
        except BaseException:  # cancelled (the loop is closing): so are its callers
            for w in batch:
                w.future.cancel()
            raise
        for i, w in enumerate(batch):
            if w.future.done():  # its caller was cancelled; the transfer still ran
                continue
            error, result = settled.errors[i], settled.results[i]
            if error is not None:
                one = _own(error)
                one.partial = [result] if result is not None else []  # type: ignore[attr-defined]
                w.future.set_exception(one)
            elif result is not None:
                w.future.set_result(result)
            else:
                w.future.set_exception(
                    InvariantViolation("a transfer got neither result nor error")
                )


def _own(error: StoreError) -> StoreError:
    """A caller's own copy: one exception object raised in many tasks would share a traceback."""
    try:
        return type(error)(*error.args)
    except TypeError:
        return error
