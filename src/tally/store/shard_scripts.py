"""The store's per-account and per-hold script calls, once for both stores: each call's keys
lie in ONE logical shard (so it is one slot on a Redis Cluster), built and read here; how a call
reaches Redis is the store's (``RedisStore``: one primary; ``ClusterStore``: the slot's primary).
A store supplies ``_scripts`` (run the calls, raise the first error as a ``StoreError``) and
``_first_members`` (a sorted set's first members, for the hold sweeper)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tally.domain.accounts import Account, AccountState, AccountStatus
from tally.domain.holds import HOLD_SWEEP_MAX, HoldCode, HoldOutcome, HoldStatus
from tally.domain.results import Result
from tally.errors import StoreBackpressure, StoreLost, UsageError
from tally.store.keys import KeyLayout
from tally.store.transfer_codec import TransferCodec

_RESULTS = {int(r): r for r in Result}  # not contiguous (30, 31: the age guard)
MARKER_OPS = ("rule", "close", "open")
ScriptCall = tuple[str, list[str], list[str | int]]


@dataclass(frozen=True, slots=True)
class RechargeMarker:
    """What a marker op did: ``code`` 0 done, 1 nothing to do, 3 another recharge is open,
    8 no such account; ``open_id``: the account's open recharge after the op."""

    code: int
    open_id: str | None


class ShardScripts:
    layout: KeyLayout
    epoch_id: str
    _epoch_value: str
    codec: TransferCodec
    #: each shard's epoch id when some shard has its own (a one-shard rebuild on a cluster:
    #: ``EpochView.overrides``); () when every shard is at ``epoch_id``
    shard_epoch_ids: tuple[str, ...] = ()

    @property
    def idempotency_window_ms(self) -> int:
        """The codec's (one value: it encodes the window into every transfer call)."""
        return self.codec.idempotency_window_ms

    @idempotency_window_ms.setter
    def idempotency_window_ms(self, value: int) -> None:
        self.codec.idempotency_window_ms = value

    def set_epoch(self, epoch_id: str, shard_epoch_ids: Sequence[str] = ()) -> None:
        """After a rebuild the ledger names a new epoch (``shard_epoch_ids``: each shard's, when
        a shard was rebuilt alone); only then may this store write again."""
        ids = tuple(shard_epoch_ids)
        if ids and len(ids) != self.layout.shards:
            raise UsageError(f"{len(ids)} shard epochs for {self.layout.shards} shards")
        if all(i == epoch_id for i in ids):
            ids = ()
        self.epoch_id = epoch_id
        self._epoch_value = self.layout.epoch_value(epoch_id)
        self.shard_epoch_ids = ids
        self.codec.set_epoch(epoch_id, ids)

    def shard_epoch(self, shard: int) -> str:
        """The epoch id this store expects in ``shard`` (its journal lines carry it)."""
        return self.shard_epoch_ids[shard] if self.shard_epoch_ids else self.epoch_id

    def _ev(self, shard: int) -> str:
        """The value ``shard``'s epoch key must hold for a script to run."""
        if not self.shard_epoch_ids:
            return self._epoch_value
        return self.layout.epoch_value(self.shard_epoch_ids[shard])

    def _lost(self, shard: int) -> StoreLost:
        return StoreLost(f"shard {shard}: dataset epoch missing or not {self.shard_epoch(shard)}")

    def _scripts(self, calls: Sequence[ScriptCall], *, durable: bool = False) -> list[list[Any]]:
        """Run the calls; ``durable``: they move money, so they end with ``WAIT`` and an answer
        fewer replicas acknowledged is ``StoreOutcomeUnknown`` (``check_replicated``)."""
        raise NotImplementedError

    def _first_members(self, key: str, limit: int) -> list[str]:
        raise NotImplementedError

    # -- auto-recharge markers -----------------------------------------------------------------
    def recharge_marker(self, account_id: str, op: str, value: str) -> RechargeMarker:
        """``op`` ``rule`` (value: threshold, '' = autopay off), ``close`` or ``open`` (value:
        recharge id). See ``lua/recharge.lua``."""
        if op not in MARKER_OPS:
            raise UsageError(f"unknown recharge marker op {op!r}")
        shard = self.layout.shard_of(account_id)
        keys = [self.layout.epoch(shard), self.layout.account(shard, account_id)]
        (reply,) = self._scripts([("recharge", keys, [self._ev(shard), op, value])])
        if reply[0] == b"L":
            raise self._lost(shard)
        open_id = reply[2].decode() if isinstance(reply[2], bytes) else None
        return RechargeMarker(int(reply[1]), open_id)

    # -- accounts ------------------------------------------------------------------------------
    def upsert_account(self, account: Account) -> Result:
        shard = self.layout.shard_of(account.id)
        keys = [self.layout.epoch(shard), self.layout.account(shard, account.id)]
        args: list[str | int] = [
            self._ev(shard),
            account.currency,
            account.status.code,
            account.credit_limit_minor,
        ]
        (reply,) = self._scripts([("account", keys, args)])
        if reply[0] == b"L":
            raise self._lost(shard)
        return _RESULTS[int(reply[1])]

    def read_accounts(self, account_ids: Iterable[str]) -> dict[str, AccountState | None]:
        ids = list(dict.fromkeys(account_ids))
        by_shard: dict[int, list[str]] = {}
        for aid in ids:
            by_shard.setdefault(self.layout.shard_of(aid), []).append(aid)
        calls: list[tuple[str, list[str], list[str | int]]] = []
        for shard, group in by_shard.items():
            keys = [self.layout.epoch(shard)] + [self.layout.account(shard, a) for a in group]
            calls.append(("read", keys, [self._ev(shard)]))
        found: dict[str, AccountState | None] = {}
        replies = self._scripts(calls)
        for shard, group, reply in zip(by_shard, by_shard.values(), replies, strict=True):
            if reply[0] == b"L":
                raise self._lost(shard)
            for n, aid in enumerate(group):
                cur, st, lim, bal, hd = reply[1 + 5 * n : 6 + 5 * n]
                found[aid] = None if cur is None else _state(aid, cur, st, lim, bal, hd)
        return {aid: found[aid] for aid in ids}

    # -- holds (lua/hold.lua) -----------------------------------------------------------------
    def _hold_account(self, hold_id: str, op: str, account_id: str = "") -> str | None:
        """The account a hold id is bound to (``claim`` binds it first): hold_route.lua."""
        shard = self.layout.shard_of(hold_id)
        keys = [self.layout.epoch(shard), self.layout.hold_routes(shard)]
        (reply,) = self._scripts([("hold_route", keys, [self._ev(shard), op, hold_id, account_id])])
        if reply[0] == b"L":
            raise self._lost(shard)
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
            self._ev(shard),
            self.shard_epoch(shard),
            op,
            hold_id,
            account_id,
            amount,
            expires_in_ms,
        ]
        (reply,) = self._scripts([("hold", keys, args)], durable=op != "get")
        return _hold_outcome(hold_id, reply, self.shard_epoch(shard), shard)

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
        members = self._first_members(index, limit)
        # The script runs even with no candidate: a lost dataset is reported, not skipped.
        keys = [self.layout.epoch(shard), self.layout.journal(shard), index]
        for member in members:
            account_id, _, hold_id = member.partition("|")
            keys += [self.layout.account(shard, account_id), self.layout.hold(shard, hold_id)]
        (reply,) = self._scripts(
            [("hold_sweep", keys, [self._ev(shard), self.shard_epoch(shard), *members])]
        )  # not durable: a release lost in a failover is released again by the clock
        if reply[0] == b"L":
            raise self._lost(shard)
        if reply[0] == b"F":
            raise StoreBackpressure(f"shard {shard}: journal holds {reply[1]} entries")
        return int(reply[1])


def _bare(hold_id: str, code: HoldCode) -> HoldOutcome:
    return HoldOutcome(hold_id, code, None, None, None, None, None, None, None)


def _opt_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def _hold_outcome(hold_id: str, reply: list[Any], epoch_id: str, shard: int) -> HoldOutcome:
    if reply[0] == b"L":
        raise StoreLost(f"shard {shard}: dataset epoch missing or not {epoch_id}")
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
