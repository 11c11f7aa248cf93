"""The Redis balance store adapter: runs the Lua scripts, groups batches by shard, translates
errors. It never reads-decides-writes from Python and never retries on its own, except a single
reload of the scripts after NOSCRIPT (a restarted or failed-over node), which is safe because
no script ran."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import redis

from tally.domain.limits import IDEMPOTENCY_WINDOW_MS_MAX
from tally.domain.transfers import TransferResult
from tally.errors import (
    ConfigError,
    InvariantViolation,
    StoreError,
)
from tally.store import scripts
from tally.store.errors import translate
from tally.store.keys import KeyLayout
from tally.store.shard_scripts import MARKER_OPS, RechargeMarker, ScriptCall, ShardScripts
from tally.store.transfer_codec import RawTransfer, TransferCall, TransferCodec, check_replicated

__all__ = ["MARKER_OPS", "Applied", "RawTransfer", "RechargeMarker", "RedisStore"]


@dataclass(frozen=True, slots=True)
class Applied:
    results: list[TransferResult]
    #: replicas that acknowledged the writes (``WAIT``), None when not asked for.
    replicas_acked: int | None = None


class RedisStore(ShardScripts):
    def __init__(
        self,
        client: redis.Redis,
        layout: KeyLayout,
        epoch_id: str,
        *,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 50,
        rediscover: Callable[[], redis.Redis] | None = None,
        primary_moved: Callable[[], bool] | None = None,
        idempotency_window_ms: int = 0,
    ) -> None:
        if not 0 <= idempotency_window_ms <= IDEMPOTENCY_WINDOW_MS_MAX:
            raise ConfigError(
                f"idempotency window must be 0 (forever) or up to {IDEMPOTENCY_WINDOW_MS_MAX} "
                f"ms, got {idempotency_window_ms}"
            )
        self.client = client
        self._rediscover = rediscover
        self._primary_moved = primary_moved
        self.layout = layout
        self.epoch_id = epoch_id
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._epoch_value = layout.epoch_value(epoch_id)
        self._sha = {name: scripts.script(name).sha for name in scripts.ALL}
        #: The transfer call's encoding and reply parsing, shared with the async shell.
        self.codec = TransferCodec(layout, epoch_id, idempotency_window_ms)

    def reconnect(self) -> bool:
        """Find the primary again (Sentinel) after READONLY or a lost connection. False when
        there is nothing to rediscover (a plain URL): the caller then reports the error."""
        if self._rediscover is None:
            return False
        self.client = self._rediscover()
        return True

    def reconnect_if_moved(self) -> bool:
        """After NOREPLICAS: the primary in use may have been replaced while it was cut off
        (Sentinel failed over; it keeps refusing writes until Sentinel demotes it, up to its
        INFO period later). Reconnect only when Sentinel names another primary."""
        if self._primary_moved is None or not self._primary_moved():
            return False
        return self.reconnect()

    # -- scripts -------------------------------------------------------------------------------
    def load_scripts(self) -> None:
        try:
            for name in scripts.ALL:
                self.client.script_load(scripts.script(name).source)
        except redis.RedisError as exc:
            raise translate(exc, sent=False) from exc

    def _exchange(
        self, commands: Iterable[tuple[str | int, ...]], *, wait: bool = False
    ) -> tuple[int | None, list[object]]:
        """Send each command on one connection as soon as it is built (Redis works on the first
        while Python builds the next), then read every reply; a reply that is a Redis error is
        returned, not raised. ``wait``: then ``WAIT`` for the replicas on the same connection
        (it counts that connection's writes). Returns (replicas acked or None, replies)."""
        acked: int | None = None
        sent = 0
        pool = self.client.connection_pool
        try:
            conn = pool.get_connection()
        except redis.RedisError as exc:
            raise translate(exc, sent=False) from exc
        try:
            for command in commands:
                packed = hiredis.pack_command(command)  # type: ignore[arg-type]  # stub wants 1-tuple
                conn.send_packed_command([packed], check_health=False)  # type: ignore[no-untyped-call]
                sent += 1
            replies: list[object] = []
            for _ in range(sent):
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
            if wait and self.wait_replicas:
                conn.send_command("WAIT", self.wait_replicas, self.wait_timeout_ms)  # type: ignore[no-untyped-call]
                acked = int(conn.read_response())
        except redis.RedisError as exc:
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise translate(exc, sent=sent > 0) from exc
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise
        finally:
            pool.release(conn)
        return acked, replies

    def _run(
        self,
        calls: Iterable[tuple[str, list[str], list[str | int]]],
        *,
        reloaded: bool = False,
        durable: bool = False,
    ) -> list[list[Any]]:
        """EVALSHA each (script, keys, args); NOSCRIPT means that call did not run: load the
        scripts, rerun those, once. ``durable``: the calls move money (holds), so they end with
        ``WAIT`` and an unreplicated answer is unknown, as ``apply``'s are."""
        sent_calls: list[tuple[str, list[str], list[str | int]]] = []

        def commands() -> Iterator[tuple[str | int, ...]]:
            for call in calls:
                sent_calls.append(call)
                name, keys, args = call
                yield ("EVALSHA", self._sha[name], len(keys), *keys, *args)

        acked, replies = self._exchange(commands(), wait=durable)
        missing = TransferCodec.noscript(replies)  # type: ignore[arg-type]
        if missing:
            if reloaded:
                raise StoreError(
                    "scripts vanished right after loading; is something flushing them?"
                )
            self.load_scripts()
            rerun = self._run([sent_calls[i] for i in missing], reloaded=True, durable=durable)
            for i, again in zip(missing, rerun, strict=True):
                replies[i] = again
        arrays: list[list[Any]] = []
        for one in replies:
            if isinstance(one, redis.RedisError):
                raise translate(one, sent=True) from one
            if not isinstance(one, list):  # every tally script answers an array
                raise InvariantViolation(f"unexpected script reply {one!r:.80}")
            arrays.append(one)
        if durable and not missing:  # a rerun checked its own WAIT
            check_replicated(acked, self.wait_replicas, self.wait_timeout_ms)
        return arrays

    # -- transfers -----------------------------------------------------------------------------
    def apply(self, transfers: Sequence[RawTransfer]) -> Applied:
        """Apply validated transfers; one result per transfer, in order. Raises StoreLost /
        StoreBackpressure (with ``partial`` results of the shards that did apply)."""
        codec = self.codec
        calls: list[TransferCall] = []

        def commands() -> Iterator[tuple[str | int, ...]]:
            for call in codec.plan(transfers):
                calls.append(call)
                yield call.command(codec.sha)

        acked, replies = self._exchange(commands(), wait=True)
        missing = codec.noscript(replies)  # type: ignore[arg-type]
        if missing:
            self.load_scripts()
            again = [calls[i].command(codec.sha) for i in missing]
            acked, rerun = self._exchange(again, wait=True)
            for i, reply in zip(missing, rerun, strict=True):
                if TransferCodec.noscript([reply]):  # type: ignore[list-item]
                    raise StoreError(
                        "scripts vanished right after loading; is something flushing them?"
                    )
                replies[i] = reply
        settled = codec.settle(calls, replies, transfers)  # type: ignore[arg-type]
        results = settled.raise_or_results()
        check_replicated(acked, self.wait_replicas, self.wait_timeout_ms)
        return Applied(results, acked)

    # -- how the shared calls (store.shard_scripts) reach this primary --------------------------
    def _scripts(self, calls: Sequence[ScriptCall], *, durable: bool = False) -> list[list[Any]]:
        return self._run(calls, durable=durable)

    def _first_members(self, key: str, limit: int) -> list[str]:
        try:
            raw: list[bytes] = self.client.zrange(key, 0, limit - 1)  # type: ignore[assignment]
        except redis.RedisError as exc:
            raise translate(exc, sent=False) from exc
        return [m.decode() for m in raw]
