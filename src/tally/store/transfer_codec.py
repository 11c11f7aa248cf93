"""The transfer script call without I/O: what to send for a batch and what its replies mean.

Like h11 under httpcore, or redis-py's ``Script``: the sync store (``RedisStore.apply``) and the
async shell (``store.async_shell``) are thin I/O around this one codec, so the keys, arguments,
shard split and reply parsing of the money path exist once.

    codec = TransferCodec(layout, epoch_id)
    calls = codec.plan(transfers)                 # one TransferCall per shard segment
    for call in calls: send(call.command(codec.sha))
    replies = [...]                               # a list per call, or the redis error it raised
    again = codec.noscript(replies)               # indexes to rerun once after SCRIPT LOAD
    settled = codec.settle(calls, replies, transfers)
    settled.results[i]  # TransferResult | None    settled.errors[i]  # StoreError | None

Replies that are redis errors are translated with ``store.errors.translate`` (both shells raise
the same redis-py exception classes), so READONLY, NOREPLICAS and friends mean the same thing
on either shell.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from zlib import crc32

import redis

from tally.domain.limits import SCRIPT_BATCH_MAX, occurred_bounds_ms
from tally.domain.results import Result
from tally.domain.transfers import TransferResult
from tally.errors import (
    InvariantViolation,
    StoreBackpressure,
    StoreError,
    StoreLost,
    StoreOutcomeUnknown,
)
from tally.store import scripts
from tally.store.errors import is_noscript, translate
from tally.store.keys import KeyLayout

#: (transfer id, kind letter 'd'|'c', account id, amount_minor, currency or '' for "the account's"
#: [, occurred_at_ms]): without occurred_at_ms (or with None) the event occurred now, by the
#: Redis server's clock, which is always inside the window (README, "Idempotency window").
RawTransfer = tuple[str, str, str, int, str] | tuple[str, str, str, int, str, int | None]

#: What came back for one call: the script's array, or the redis error it raised.
Reply = list[Any] | redis.RedisError

_RESULTS = {int(r): r for r in Result}  # codes are not contiguous (30, 31: the age guard)


@dataclass(slots=True)
class TransferCall:
    """One ``EVALSHA transfer`` call: ``indexes`` are the positions in the caller's batch."""

    shard: int
    indexes: list[int]
    keys: list[str]
    args: list[str | int]

    def command(self, sha: str) -> tuple[str | int, ...]:
        return ("EVALSHA", sha, len(self.keys), *self.keys, *self.args)


@dataclass(slots=True)
class Settled:
    """Per transfer of the batch: its result (None when its call failed before deciding) and
    the error its call ended with (None when it was decided)."""

    results: list[TransferResult | None]
    errors: list[StoreError | None]

    def first_error(self) -> StoreError | None:
        return next((e for e in self.errors if e is not None), None)

    def raise_or_results(self) -> list[TransferResult]:
        """The single-caller contract: every result, or the first error with ``partial`` (the
        results of the calls that did decide)."""
        failure = self.first_error()
        decided = [r for r in self.results if r is not None]
        if failure is not None:
            failure.partial = decided  # type: ignore[attr-defined]
            failure.settled = self  # type: ignore[attr-defined]  # per transfer, for a batch's answer
            raise failure
        if len(decided) != len(self.results):
            raise InvariantViolation("a transfer of the batch has neither result nor error")
        return decided


class TransferCodec:
    sha = scripts.script("transfer").sha
    source = scripts.script("transfer").source

    def __init__(self, layout: KeyLayout, epoch_id: str, idempotency_window_ms: int = 0) -> None:
        self.layout = layout
        #: transfer-id records live in two generations turned over by the server's clock
        #: (docs/contracts.md); 0 keeps them forever
        self.idempotency_window_ms = idempotency_window_ms
        self.set_epoch(epoch_id)
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

    def set_epoch(self, epoch_id: str, shard_epoch_ids: Sequence[str] = ()) -> None:
        """``shard_epoch_ids``: each shard's own epoch id (a shard rebuilt alone on a cluster);
        () when every shard is at ``epoch_id``."""
        self.epoch_id = epoch_id
        self._epoch_value = self.layout.epoch_value(epoch_id)
        ids = tuple(shard_epoch_ids) or (epoch_id,) * self.layout.shards
        self._shard_ids = ids
        self._shard_values = [self.layout.epoch_value(i) for i in ids]

    # -- encode --------------------------------------------------------------------------------
    def plan(
        self, transfers: Sequence[RawTransfer], now_ms: int | None = None
    ) -> Iterator[TransferCall]:
        """One script call per account shard (and per SCRIPT_BATCH_MAX). Grouping by shard
        reorders the batch, which is harmless except for an id repeated within the batch, so a
        repeated id starts a new segment: segments run in order, as the caller sent them."""
        if now_ms is None:
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
    ) -> Iterator[TransferCall]:
        for shard, indexes in by_shard.items():
            for start in range(0, len(indexes), SCRIPT_BATCH_MAX):
                yield self._call(
                    shard, indexes[start : start + SCRIPT_BATCH_MAX], transfers, now_ms
                )

    def _call(
        self, shard: int, chunk: list[int], transfers: Sequence[RawTransfer], now_ms: int
    ) -> TransferCall:
        shards = self.layout.shards
        tx_keys = self._tx_keys
        account_index: dict[str, int] = {}
        tx_index: dict[int, int] = {}
        body: list[str | int] = []
        for i in chunk:
            t = transfers[i]
            tid, kind, aid, amount, currency = t[:5]
            occurred = t[5] if len(t) == 6 else None
            ai = account_index.get(aid)
            if ai is None:
                ai = account_index[aid] = len(account_index) + 1
            tx_shard = crc32(tid.encode()) % shards
            xi = tx_index.get(tx_shard)
            if xi is None:
                xi = tx_index[tx_shard] = len(tx_index) + 1
            body += (tid, kind, ai, amount, currency, xi, "" if occurred is None else occurred)
        prefix = self._account_prefix[shard]
        keys = [self._epoch_keys[shard], self._journal_keys[shard]]
        for x in tx_index:
            keys += tx_keys[x]
        keys += [prefix + aid for aid in account_index]
        window_ms = self.idempotency_window_ms
        args: list[str | int] = [
            self._shard_values[shard],
            self._shard_ids[shard],
            now_ms,
            len(tx_index),
            len(account_index),
            window_ms,
            *occurred_bounds_ms(window_ms),
        ]
        args += account_index
        args += body
        return TransferCall(shard, chunk, keys, args)

    # -- decode --------------------------------------------------------------------------------
    @staticmethod
    def noscript(replies: Sequence[Reply]) -> list[int]:
        """Calls that did not run because the node lacks the script: load it, rerun these once
        (safe: nothing ran)."""
        return [i for i, r in enumerate(replies) if isinstance(r, Exception) and is_noscript(r)]

    def settle(
        self,
        calls: Sequence[TransferCall],
        replies: Sequence[Reply],
        transfers: Sequence[RawTransfer],
    ) -> Settled:
        results: list[TransferResult | None] = [None] * len(transfers)
        errors: list[StoreError | None] = [None] * len(transfers)
        for call, reply in zip(calls, replies, strict=True):
            if isinstance(reply, redis.RedisError):
                failure: StoreError | None = translate(reply, sent=True)
            elif isinstance(reply, list):
                failure = self._collect(call, reply, transfers, results)
            else:  # every tally script answers an array
                raise InvariantViolation(f"unexpected script reply {reply!r:.80}")
            if failure is not None:
                for i in call.indexes:
                    errors[i] = failure
        return Settled(results, errors)

    def _collect(
        self,
        call: TransferCall,
        reply: list[Any],
        transfers: Sequence[RawTransfer],
        results: list[TransferResult | None],
    ) -> StoreError | None:
        status = reply[0]
        if status == b"L":
            for i in call.indexes:
                results[i] = TransferResult(transfers[i][0], Result.store_lost, None)
            return StoreLost(
                f"shard {call.shard}: dataset epoch missing or not {self._shard_ids[call.shard]}"
            )
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


def check_replicated(acked: int | None, wanted: int, timeout_ms: int) -> None:
    """Durability of an answered write (``WAIT`` on the connection that wrote): acknowledged by
    fewer replicas than ``wanted`` within ``timeout_ms``, it is applied on this primary but a
    failover may discard it, so the caller is told the outcome is unknown (a retry of the same
    transfer id replays it once a replica has it, or applies it on the new primary: once either
    way). The sync store, the async shell and the cluster store all answer through here."""
    failure = unreplicated(acked, wanted, timeout_ms)
    if failure is not None:
        raise failure


def unreplicated(acked: int | None, wanted: int, timeout_ms: int) -> StoreOutcomeUnknown | None:
    """``check_replicated``'s error without raising it (the cluster store judges each primary's
    ``WAIT`` for the calls it ran), None when the write is acknowledged or none was asked for."""
    if wanted and acked is not None and acked < wanted:
        return StoreOutcomeUnknown(
            f"applied on the primary but acknowledged by {acked} of {wanted} replicas within "
            f"{timeout_ms} ms: a failover could still discard it"
        )
    return None
