"""The Redis balance store adapter: runs the Lua scripts, groups batches by shard, translates
errors. It never reads-decides-writes from Python and never retries on its own, except a single
reload of the scripts after NOSCRIPT (a restarted or failed-over node), which is safe because
no script ran."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis

from tally.domain.accounts import Account, AccountState, AccountStatus
from tally.domain.limits import SCRIPT_BATCH_MAX
from tally.domain.results import Result
from tally.domain.transfers import TransferResult
from tally.errors import StoreBackpressure, StoreError, StoreLost
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
    ) -> None:
        self.client = client
        self.layout = layout
        self.epoch_id = epoch_id
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._epoch_value = layout.epoch_value(epoch_id)
        self._sha = {name: scripts.script(name).sha for name in scripts.ALL}

    # -- scripts -------------------------------------------------------------------------------
    def load_scripts(self) -> None:
        try:
            for name in scripts.ALL:
                self.client.script_load(scripts.script(name).source)
        except redis.RedisError as exc:
            raise translate(exc, sent=False) from exc

    def _run(
        self, calls: Sequence[tuple[str, list[str], list[str | int]]], *, reloaded: bool = False
    ) -> list[object]:
        """EVALSHA each (script, keys, args) in one pipeline. NOSCRIPT means that call did not
        run: load the scripts and rerun just those calls, once."""
        pipe = self.client.pipeline(transaction=False)
        for name, keys, args in calls:
            pipe.evalsha(self._sha[name], len(keys), *keys, *args)
        try:
            replies = list(pipe.execute(raise_on_error=False))
        except redis.RedisError as exc:
            raise translate(exc, sent=True) from exc
        missing = [i for i, r in enumerate(replies) if is_noscript(r)]
        if missing:
            if reloaded:
                raise StoreError("scripts vanished right after loading; is something flushing them?")
            self.load_scripts()
            rerun = self._run([calls[i] for i in missing], reloaded=True)
            for i, reply in zip(missing, rerun, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, redis.RedisError):
                raise translate(reply, sent=True) from reply
        return replies

    # -- transfers -----------------------------------------------------------------------------
    def apply(self, transfers: Sequence[RawTransfer]) -> Applied:
        """Apply validated transfers; one result per transfer, in order. Raises StoreLost /
        StoreBackpressure (with ``partial`` results of the shards that did apply)."""
        calls = self._plan(transfers)
        replies = self._run([("transfer", c.keys, c.args) for c in calls])
        results: list[TransferResult | None] = [None] * len(transfers)
        failure: StoreError | None = None
        for call, reply in zip(calls, replies, strict=True):
            failure = self._collect(call, reply, transfers, results) or failure
        acked = self._wait() if self.wait_replicas else None
        if failure is not None:
            failure.partial = [r for r in results if r is not None]  # type: ignore[attr-defined]
            raise failure
        return Applied([r for r in results if r is not None], acked)

    def _plan(self, transfers: Sequence[RawTransfer]) -> list[_Call]:
        """One script call per account shard (and per SCRIPT_BATCH_MAX). Grouping by shard
        reorders the batch, which is harmless except for an id repeated within the batch, so a
        repeated id starts a new segment: segments run in order, as the caller sent them."""
        calls: list[_Call] = []
        now_ms = int(time.time() * 1000)
        shard_of = self.layout.shard_of
        by_shard: dict[int, list[int]] = {}
        seen: set[str] = set()
        for i, t in enumerate(transfers):
            if t[0] in seen:
                calls += self._calls(by_shard, transfers, now_ms)
                by_shard, seen = {}, set()
            seen.add(t[0])
            by_shard.setdefault(shard_of(t[2]), []).append(i)
        return calls + self._calls(by_shard, transfers, now_ms)

    def _calls(
        self, by_shard: dict[int, list[int]], transfers: Sequence[RawTransfer], now_ms: int
    ) -> list[_Call]:
        return [
            self._call(shard, indexes[start : start + SCRIPT_BATCH_MAX], transfers, now_ms)
            for shard, indexes in by_shard.items()
            for start in range(0, len(indexes), SCRIPT_BATCH_MAX)
        ]

    def _call(
        self, shard: int, chunk: list[int], transfers: Sequence[RawTransfer], now_ms: int
    ) -> _Call:
        lay = self.layout
        account_index: dict[str, int] = {}
        tx_index: dict[str, int] = {}
        body: list[str | int] = []
        for i in chunk:
            tid, kind, aid, amount, currency = transfers[i]
            ai = account_index.get(aid)
            if ai is None:
                ai = account_index[aid] = len(account_index) + 1
            tx_key = lay.tx_for(tid)
            xi = tx_index.get(tx_key)
            if xi is None:
                xi = tx_index[tx_key] = len(tx_index) + 1
            body += (tid, kind, ai, amount, currency, xi)
        keys = [lay.epoch(shard), lay.journal(shard), *tx_index]
        keys += [lay.account(shard, aid) for aid in account_index]
        args: list[str | int] = [
            self._epoch_value, self.epoch_id, now_ms, len(tx_index), len(account_index)
        ]
        args += list(account_index)
        args += body
        return _Call(shard, chunk, keys, args)

    def _collect(
        self,
        call: _Call,
        reply: object,
        transfers: Sequence[RawTransfer],
        results: list[TransferResult | None],
    ) -> StoreError | None:
        assert isinstance(reply, list)
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
        return None

    def _wait(self) -> int:
        try:
            return int(self.client.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms))
        except redis.RedisError as exc:
            raise translate(exc, sent=True) from exc

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
        assert isinstance(reply, list)
        if reply[0] == b"L":
            raise StoreLost(f"dataset epoch missing or not {self.epoch_id}")
        return _RESULTS[reply[1]]

    def read_accounts(self, account_ids: Iterable[str]) -> dict[str, AccountState | None]:
        ids = list(dict.fromkeys(account_ids))
        by_shard: dict[int, list[str]] = {}
        for aid in ids:
            by_shard.setdefault(self.layout.shard_of(aid), []).append(aid)
        calls = []
        for shard, group in by_shard.items():
            keys = [self.layout.epoch(shard)] + [self.layout.account(shard, a) for a in group]
            calls.append(("read", keys, [self._epoch_value]))
        found: dict[str, AccountState | None] = {}
        for (_, _, _), group, reply in zip(calls, by_shard.values(), self._run(calls), strict=True):
            assert isinstance(reply, list)
            if reply[0] == b"L":
                raise StoreLost(f"dataset epoch missing or not {self.epoch_id}")
            for n, aid in enumerate(group):
                cur, st, lim, bal = reply[1 + 4 * n : 5 + 4 * n]
                found[aid] = None if cur is None else _state(aid, cur, st, lim, bal)
        return {aid: found[aid] for aid in ids}


def _state(aid: str, cur: bytes, st: bytes, lim: bytes, bal: bytes) -> AccountState:
    account = Account(aid, cur.decode(), int(lim), AccountStatus.from_code(st.decode()))
    return AccountState(account, int(bal))
