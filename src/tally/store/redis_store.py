"""The Redis balance store adapter: runs the Lua scripts, groups batches by shard, translates
errors. It never reads-decides-writes from Python and never retries on its own, except a single
reload of the scripts after NOSCRIPT (a restarted or failed-over node), which is safe because
no script ran."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from zlib import crc32

import hiredis
import redis

from tally.domain.accounts import Account, AccountState, AccountStatus
from tally.domain.limits import IDEMPOTENCY_WINDOW_MS_MAX, SCRIPT_BATCH_MAX
from tally.domain.results import Result
from tally.domain.transfers import TransferResult
from tally.errors import (
    ConfigError,
    InvariantViolation,
    StoreBackpressure,
    StoreError,
    StoreLost,
    UsageError,
)
from tally.store import scripts
from tally.store.errors import is_noscript, translate
from tally.store.keys import KeyLayout

#: (transfer id, kind letter 'd'|'c', account id, amount_minor, currency or '' for "the account's")
RawTransfer = tuple[str, str, str, int, str]

_RESULTS = tuple(Result)


@dataclass(frozen=True, slots=True)
class Applied:
    results: list[TransferResult]
    #: replicas that acknowledged the writes (``WAIT``), None when not asked for.
    replicas_acked: int | None = None


MARKER_OPS = ("rule", "close", "open")


@dataclass(frozen=True, slots=True)
class RechargeMarker:
    """What a marker op did: ``code`` 0 done, 1 nothing to do, 3 another recharge is open,
    8 no such account; ``open_id``: the account's open recharge after the op."""

    code: int
    open_id: str | None


@dataclass(slots=True)
class _Call:
    shard: int
    indexes: list[int]
    keys: list[str]
    args: list[str | int]


class RedisStore:
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
        self.idempotency_window_ms = idempotency_window_ms
        self.client = client
        self._rediscover = rediscover
        self._primary_moved = primary_moved
        self.layout = layout
        self.epoch_id = epoch_id
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._epoch_value = layout.epoch_value(epoch_id)
        self._sha = {name: scripts.script(name).sha for name in scripts.ALL}
        # Keys precomputed per shard: the batch path builds thousands per call.
        shard_range = range(layout.shards)
        self._epoch_keys = [layout.epoch(s) for s in shard_range]
        self._journal_keys = [layout.journal(s) for s in shard_range]
        # per tx shard: its generation key and the tx hashes of its two generations
        self._tx_keys = [
            [layout.tx_generations_key(s), layout.tx_generation(s, 0), layout.tx_generation(s, 1)]
            for s in shard_range
        ]
        self._account_prefix = [layout.account_prefix(s) for s in shard_range]

    def set_epoch(self, epoch_id: str) -> None:
        """After a rebuild the ledger names a new epoch; only then may this store write again."""
        self.epoch_id = epoch_id
        self._epoch_value = self.layout.epoch_value(epoch_id)

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

    def _run(
        self,
        calls: Iterable[tuple[str, list[str], list[str | int]]],
        *,
        reloaded: bool = False,
        acks: list[int] | None = None,
    ) -> list[list[Any]]:
        """EVALSHA each (script, keys, args) on one connection, sending each call as soon as it
        is built (Redis works on the first while Python builds the next), then reading every
        reply. NOSCRIPT means that call did not run: load the scripts, rerun those, once.
        ``acks``: WAIT for ``wait_replicas`` on THIS connection (WAIT counts the replicas that
        have the writes of the connection it is sent on; any other pooled connection would
        answer for its own, older writes) and append the count."""
        sent_calls: list[tuple[str, list[str], list[str | int]]] = []
        pool = self.client.connection_pool
        try:
            conn = pool.get_connection()
        except redis.RedisError as exc:
            raise translate(exc, sent=False) from exc
        try:
            for call in calls:
                name, keys, args = call
                command: tuple[str | int, ...] = (
                    "EVALSHA",
                    self._sha[name],
                    len(keys),
                    *keys,
                    *args,
                )
                packed = hiredis.pack_command(command)  # type: ignore[arg-type]  # stub wants 1-tuple
                conn.send_packed_command([packed], check_health=False)  # type: ignore[no-untyped-call]
                sent_calls.append(call)
            replies: list[object] = []
            for _ in sent_calls:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
            rerun = any(isinstance(r, Exception) and is_noscript(r) for r in replies)
            if acks is not None and not rerun:  # a rerun waits on its own, later connection
                conn.send_command("WAIT", self.wait_replicas, self.wait_timeout_ms)  # type: ignore[no-untyped-call]
                acks.append(int(conn.read_response()))
        except redis.RedisError as exc:
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise translate(exc, sent=bool(sent_calls)) from exc
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]
            raise
        finally:
            pool.release(conn)
        return self._after_noscript(sent_calls, replies, reloaded, acks)

    def _after_noscript(
        self,
        calls: list[tuple[str, list[str], list[str | int]]],
        replies: list[object],
        reloaded: bool,
        acks: list[int] | None,
    ) -> list[list[Any]]:
        missing = [i for i, r in enumerate(replies) if isinstance(r, Exception) and is_noscript(r)]
        if missing:
            if reloaded:
                raise StoreError(
                    "scripts vanished right after loading; is something flushing them?"
                )
            self.load_scripts()
            rerun = self._run([calls[i] for i in missing], reloaded=True, acks=acks)
            for i, again in zip(missing, rerun, strict=True):
                replies[i] = again
        arrays: list[list[Any]] = []
        for one in replies:
            if isinstance(one, redis.RedisError):
                raise translate(one, sent=True) from one
            if not isinstance(one, list):  # every tally script answers an array
                raise InvariantViolation(f"unexpected script reply {one!r:.80}")
            arrays.append(one)
        return arrays

    # -- transfers -----------------------------------------------------------------------------
    def apply(self, transfers: Sequence[RawTransfer]) -> Applied:
        """Apply validated transfers; one result per transfer, in order. Raises StoreLost /
        StoreBackpressure (with ``partial`` results of the shards that did apply)."""
        calls: list[_Call] = []

        def stream() -> Iterator[tuple[str, list[str], list[str | int]]]:
            for call in self._plan(transfers):
                calls.append(call)
                yield ("transfer", call.keys, call.args)

        acks: list[int] | None = [] if self.wait_replicas else None
        replies = self._run(stream(), acks=acks)
        results: list[TransferResult | None] = [None] * len(transfers)
        failure: StoreError | None = None
        for call, reply in zip(calls, replies, strict=True):
            failure = self._collect(call, reply, transfers, results) or failure
        acked = acks[-1] if acks else None
        if failure is not None:
            failure.partial = [r for r in results if r is not None]  # type: ignore[attr-defined]
            raise failure
        return Applied([r for r in results if r is not None], acked)

    def _plan(self, transfers: Sequence[RawTransfer]) -> Iterator[_Call]:
        """One script call per account shard (and per SCRIPT_BATCH_MAX). Grouping by shard
        reorders the batch, which is harmless except for an id repeated within the batch, so a
        repeated id starts a new segment: segments run in order, as the caller sent them."""
        now_ms = int(time.time() * 1000)
        shards = self.layout.shards
        by_shard: dict[int, list[int]] = {}
        seen: set[str] = set()
        for i, t in enumerate(transfers):
            if t[0] in seen:
                yield from self._calls(by_shard, transfers, now_ms)
                by_shard, seen = {}, set()
            seen.add(t[0])
            shard = crc32(t[2].encode()) % shards
            group = by_shard.get(shard)
            if group is None:
                by_shard[shard] = [i]
            else:
                group.append(i)
        yield from self._calls(by_shard, transfers, now_ms)

    def _calls(
        self, by_shard: dict[int, list[int]], transfers: Sequence[RawTransfer], now_ms: int
    ) -> Iterator[_Call]:
        for shard, indexes in by_shard.items():
            for start in range(0, len(indexes), SCRIPT_BATCH_MAX):
                yield self._call(
                    shard, indexes[start : start + SCRIPT_BATCH_MAX], transfers, now_ms
                )

    def _call(
        self, shard: int, chunk: list[int], transfers: Sequence[RawTransfer], now_ms: int
    ) -> _Call:
        shards = self.layout.shards
        tx_keys = self._tx_keys
        account_index: dict[str, int] = {}
        tx_index: dict[int, int] = {}
        body: list[str | int] = []
        for i in chunk:
            tid, kind, aid, amount, currency = transfers[i]
            ai = account_index.get(aid)
            if ai is None:
                ai = account_index[aid] = len(account_index) + 1
            tx_shard = crc32(tid.encode()) % shards
            xi = tx_index.get(tx_shard)
            if xi is None:
                xi = tx_index[tx_shard] = len(tx_index) + 1
            body += (tid, kind, ai, amount, currency, xi)
        prefix = self._account_prefix[shard]
        keys = [self._epoch_keys[shard], self._journal_keys[shard]]
        for x in tx_index:
            keys += tx_keys[x]
        keys += [prefix + aid for aid in account_index]
        args: list[str | int] = [
            self._epoch_value,
            self.epoch_id,
            now_ms,
            len(tx_index),
            len(account_index),
            self.idempotency_window_ms,
        ]
        args += account_index
        args += body
        return _Call(shard, chunk, keys, args)

    def _collect(
        self,
        call: _Call,
        reply: list[Any],
        transfers: Sequence[RawTransfer],
        results: list[TransferResult | None],
    ) -> StoreError | None:
        status = reply[0]
        if status == b"L":
            for i in call.indexes:
                results[i] = TransferResult(transfers[i][0], Result.store_lost, None)
            return StoreLost(f"shard {call.shard}: dataset epoch missing or not {self.epoch_id}")
        if status == b"F":
            return StoreBackpressure(f"shard {call.shard}: journal holds {reply[1]} entries")
        pos = 1
        for i in call.indexes:
            results[i] = TransferResult(
                transfers[i][0], _RESULTS[reply[pos]], reply[pos + 1], reply[pos + 2] == 1
            )
            pos += 3
        for extra in range(pos, len(reply), 2):  # (index in the call, recharge id) per opening
            i = call.indexes[int(reply[extra]) - 1]
            first = results[i]
            if first is None:
                raise InvariantViolation("a recharge opening names a transfer the reply lacks")
            results[i] = first._replace(recharge_id=reply[extra + 1].decode())
        return None

    # -- auto-recharge markers -----------------------------------------------------------------
    def recharge_marker(self, account_id: str, op: str, value: str) -> RechargeMarker:
        """``op`` ``rule`` (value: threshold, '' = autopay off), ``close`` or ``open`` (value:
        recharge id). See ``lua/recharge.lua``."""
        if op not in MARKER_OPS:
            raise UsageError(f"unknown recharge marker op {op!r}")
        shard = self.layout.shard_of(account_id)
        keys = [self.layout.epoch(shard), self.layout.account(shard, account_id)]
        (reply,) = self._run([("recharge", keys, [self._epoch_value, op, value])])
        if reply[0] == b"L":
            raise StoreLost(f"dataset epoch missing or not {self.epoch_id}")
        open_id = reply[2].decode() if isinstance(reply[2], bytes) else None
        return RechargeMarker(int(reply[1]), open_id)

    # -- accounts ------------------------------------------------------------------------------
    def upsert_account(self, account: Account) -> Result:
        shard = self.layout.shard_of(account.id)
        keys = [self.layout.epoch(shard), self.layout.account(shard, account.id)]
        args: list[str | int] = [
            self._epoch_value,
            account.currency,
            account.status.code,
            account.credit_limit_minor,
        ]
        (reply,) = self._run([("account", keys, args)])
        if reply[0] == b"L":
            raise StoreLost(f"dataset epoch missing or not {self.epoch_id}")
        return _RESULTS[int(reply[1])]

    def read_accounts(self, account_ids: Iterable[str]) -> dict[str, AccountState | None]:
        ids = list(dict.fromkeys(account_ids))
        by_shard: dict[int, list[str]] = {}
        for aid in ids:
            by_shard.setdefault(self.layout.shard_of(aid), []).append(aid)
        calls: list[tuple[str, list[str], list[str | int]]] = []
        for shard, group in by_shard.items():
            keys = [self.layout.epoch(shard)] + [self.layout.account(shard, a) for a in group]
            calls.append(("read", keys, [self._epoch_value]))
        found: dict[str, AccountState | None] = {}
        for (_, _, _), group, reply in zip(calls, by_shard.values(), self._run(calls), strict=True):
            if reply[0] == b"L":
                raise StoreLost(f"dataset epoch missing or not {self.epoch_id}")
            for n, aid in enumerate(group):
                cur, st, lim, bal = reply[1 + 4 * n : 5 + 4 * n]
                found[aid] = None if cur is None else _state(aid, cur, st, lim, bal)
        return {aid: found[aid] for aid in ids}


def _state(aid: str, cur: bytes, st: bytes, lim: bytes, bal: bytes) -> AccountState:
    account = Account(aid, cur.decode(), int(lim), AccountStatus.from_code(st.decode()))
    return AccountState(account, int(bal))
