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

from tally.domain.accounts import Account, AccountState, AccountStatus
from tally.domain.holds import HOLD_SWEEP_MAX, HoldCode, HoldOutcome, HoldStatus
from tally.domain.limits import IDEMPOTENCY_WINDOW_MS_MAX
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
from tally.store.errors import translate
from tally.store.keys import KeyLayout
from tally.store.transfer_codec import RawTransfer, TransferCall, TransferCodec, check_replicated

__all__ = ["Applied", "RawTransfer", "RechargeMarker", "RedisStore"]

_RESULTS = {int(r): r for r in Result}  # not contiguous (30, 31: the age guard)


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

    @property
    def idempotency_window_ms(self) -> int:
        """The codec's (one value: it encodes the window into every transfer call)."""
        return self.codec.idempotency_window_ms

    @idempotency_window_ms.setter
    def idempotency_window_ms(self, value: int) -> None:
        self.codec.idempotency_window_ms = value

    def set_epoch(self, epoch_id: str) -> None:
        """After a rebuild the ledger names a new epoch; only then may this store write again."""
        self.epoch_id = epoch_id
        self._epoch_value = self.layout.epoch_value(epoch_id)
        self.codec.set_epoch(epoch_id)

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
        self, calls: Iterable[tuple[str, list[str], list[str | int]]], *, reloaded: bool = False
    ) -> list[list[Any]]:
        """EVALSHA each (script, keys, args); NOSCRIPT means that call did not run: load the
        scripts, rerun those, once."""
        sent_calls: list[tuple[str, list[str], list[str | int]]] = []

        def commands() -> Iterator[tuple[str | int, ...]]:
            for call in calls:
                sent_calls.append(call)
                name, keys, args = call
                yield ("EVALSHA", self._sha[name], len(keys), *keys, *args)

        _, replies = self._exchange(commands())
        missing = TransferCodec.noscript(replies)  # type: ignore[arg-type]
        if missing:
            if reloaded:
                raise StoreError(
                    "scripts vanished right after loading; is something flushing them?"
                )
            self.load_scripts()
            rerun = self._run([sent_calls[i] for i in missing], reloaded=True)
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
                cur, st, lim, bal, hd = reply[1 + 5 * n : 6 + 5 * n]
                found[aid] = None if cur is None else _state(aid, cur, st, lim, bal, hd)
        return {aid: found[aid] for aid in ids}

    # -- holds (lua/hold.lua) -----------------------------------------------------------------
    def _hold_account(self, hold_id: str, op: str, account_id: str = "") -> str | None:
        """The account a hold id is bound to (``claim`` binds it first): hold_route.lua."""
        shard = self.layout.shard_of(hold_id)
        keys = [self.layout.epoch(shard), self.layout.hold_routes(shard)]
        (reply,) = self._run([("hold_route", keys, [self._epoch_value, op, hold_id, account_id])])
        if reply[0] == b"L":
            raise StoreLost(f"dataset epoch missing or not {self.epoch_id}")
        return reply[1].decode() if isinstance(reply[1], bytes) else None

    def _hold(
        self, op: str, hold_id: str, account_id: str, amount: int, expires_in_ms: int
    ) -> HoldOutcome:
        shard = self.layout.shard_of(account_id)
        keys = [
            self.layout.epoch(shard),
            self.layout.journal(shard),
            self.layout.account(shard, account_id),
            self.layout.hold(shard, hold_id),
            self.layout.hold_expiries(shard),
        ]
        args: list[str | int] = [
            self._epoch_value,
            self.epoch_id,
            op,
            hold_id,
            account_id,
            amount,
            expires_in_ms,
        ]
        (reply,) = self._run([("hold", keys, args)])
        return _hold_outcome(hold_id, reply, self.epoch_id, shard)

    def place_hold(
        self, hold_id: str, account_id: str, amount_minor: int, expires_in_ms: int
    ) -> HoldOutcome:
        """Validated input (``billing.validate``). The id is bound to its account first (a new
        id, or the same account again); another account is ``hold_id_conflict``."""
        bound = self._hold_account(hold_id, "claim", account_id)
        if bound != account_id:
            return _bare(hold_id, HoldCode.hold_id_conflict)
        return self._hold("place", hold_id, account_id, amount_minor, expires_in_ms)

    def capture_hold(self, hold_id: str, amount_minor: int) -> HoldOutcome:
        account_id = self._hold_account(hold_id, "find")
        if account_id is None:
            return _bare(hold_id, HoldCode.hold_not_found)
        return self._hold("capture", hold_id, account_id, amount_minor, 0)

    def void_hold(self, hold_id: str) -> HoldOutcome:
        account_id = self._hold_account(hold_id, "find")
        if account_id is None:
            return _bare(hold_id, HoldCode.hold_not_found)
        return self._hold("void", hold_id, account_id, 0, 0)

    def get_hold(self, hold_id: str) -> HoldOutcome:
        """The hold as it stands (an open hold past its expiry reads ``expired``; it is
        released on its next touch or by the sweeper); ``code`` is its place's outcome."""
        account_id = self._hold_account(hold_id, "find")
        if account_id is None:
            return _bare(hold_id, HoldCode.hold_not_found)
        return self._hold("get", hold_id, account_id, 0, 0)

    def sweep_holds(self, limit: int = HOLD_SWEEP_MAX) -> int:
        """One bounded sweep of every shard: ``sweep_shard`` each; returns holds released."""
        if not 1 <= limit <= HOLD_SWEEP_MAX:
            raise UsageError(f"sweep limit must be 1..{HOLD_SWEEP_MAX}, got {limit}")
        return sum(self.sweep_shard(shard, limit) for shard in range(self.layout.shards))

    def sweep_shard(self, shard: int, limit: int = HOLD_SWEEP_MAX) -> int:
        """Release the shard's expired holds among its ``limit`` earliest expiries (hold_sweep.lua
        decides by the server's clock); returns how many it released."""
        if not 1 <= limit <= HOLD_SWEEP_MAX:
            raise UsageError(f"sweep limit must be 1..{HOLD_SWEEP_MAX}, got {limit}")
        index = self.layout.hold_expiries(shard)
        try:
            raw: list[bytes] = self.client.zrange(index, 0, limit - 1)  # type: ignore[assignment]
            members = [m.decode() for m in raw]
        except redis.RedisError as exc:
            raise translate(exc, sent=False) from exc
        # The script runs even with no candidate: a lost dataset is reported, not skipped.
        keys = [self.layout.epoch(shard), self.layout.journal(shard), index]
        for member in members:
            account_id, _, hold_id = member.partition("|")
            keys += [self.layout.account(shard, account_id), self.layout.hold(shard, hold_id)]
        (reply,) = self._run([("hold_sweep", keys, [self._epoch_value, self.epoch_id, *members])])
        if reply[0] == b"L":
            raise StoreLost(f"dataset epoch missing or not {self.epoch_id}")
        if reply[0] == b"F":
            raise StoreBackpressure(f"shard {shard}: journal holds {reply[1]} entries")
        return int(reply[1])


def _bare(hold_id: str, code: HoldCode) -> HoldOutcome:
    return HoldOutcome(hold_id, code, None, None, None, None, None, None, None)


def _opt_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def _hold_outcome(hold_id: str, reply: list[Any], epoch_id: str, shard: int) -> HoldOutcome:
    if reply[0] == b"L":
        raise StoreLost(f"dataset epoch missing or not {epoch_id}")
    if reply[0] == b"F":
        raise StoreBackpressure(f"shard {shard}: journal holds {reply[1]} entries")
    _, code, st, account, amount, captured, expires_at, bal, held, replayed, rc = reply
    return HoldOutcome(
        hold_id,
        HoldCode(int(code)),
        None if st is None else HoldStatus.from_code(st.decode()),
        None if account is None else account.decode(),
        _opt_int(amount),
        _opt_int(captured),
        _opt_int(expires_at),
        _opt_int(bal),
        _opt_int(held),
        int(replayed) == 1,
        None if rc is None else rc.decode(),
    )


def _state(
    aid: str, cur: bytes, st: bytes, lim: bytes, bal: bytes, hd: bytes | None
) -> AccountState:
    account = Account(aid, cur.decode(), int(lim), AccountStatus.from_code(st.decode()))
    return AccountState(account, int(bal), int(hd) if hd is not None else 0)
