"""One suite, every shell of the transfer codec: the sync ``RedisStore.apply``, the async shell
(``AsyncTransfers.apply``) and coalesced single transfers (``Coalescer.submit``, each transfer
its own caller). Replays, errors, store_lost, READONLY, NOREPLICAS, NOSCRIPT and unknown
outcomes must mean the same on each."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator, Sequence

import pytest
import redis

from tally.domain.results import Result
from tally.domain.transfers import TransferResult
from tally.errors import (
    StoreError,
    StoreLost,
    StoreNotEnoughReplicas,
    StoreOutcomeUnknown,
    StoreReadOnly,
)
from tally.ops.node import RedisNode
from tally.store.async_shell import AsyncTransfers, Coalescer
from tally.store.keys import KeyLayout
from tally.store.redis_store import RedisStore
from tally.store.transfer_codec import RawTransfer

from .conftest import EPOCH, open_account, stamp_epoch

SHELLS = ("sync", "async", "coalesced")


class Shell:
    """``apply(transfers) -> results`` over one of the shells; raises the first error."""

    def __init__(self, kind: str, store: RedisStore) -> None:
        self.kind, self.store = kind, store
        self.runner = asyncio.Runner()
        self.shell = AsyncTransfers(store)
        self.batcher = Coalescer(self.shell)

    def apply(self, transfers: Sequence[RawTransfer]) -> list[TransferResult]:
        if self.kind == "sync":
            return self.store.apply(transfers).results
        if self.kind == "async":
            return self.runner.run(self.shell.apply(transfers)).results
        outcomes = self.each(transfers)
        for one in outcomes:
            if isinstance(one, BaseException):
                raise one
        return list(outcomes)  # type: ignore[arg-type]

    def each(self, transfers: Sequence[RawTransfer]) -> list[TransferResult | BaseException]:
        """Every transfer its own concurrent caller of the coalescer."""

        async def submit_all() -> list[TransferResult | BaseException]:
            return await asyncio.gather(
                *(self.batcher.submit(t) for t in transfers), return_exceptions=True
            )

        return self.runner.run(submit_all())

    def close(self) -> None:
        self.runner.run(self.shell.aclose())
        self.runner.close()


@pytest.fixture(params=SHELLS)
def shell(request: pytest.FixtureRequest, store: RedisStore) -> Iterator[Shell]:
    one = Shell(request.param, store)
    yield one
    one.close()


def funded(shell: Shell, *accounts: str, amount: int = 1000) -> None:
    for account in accounts:
        open_account(shell.store, account)
        shell.store.apply([(f"top-{account}", "c", account, amount, "")])


def test_a_replay_returns_the_whole_first_outcome(shell: Shell) -> None:
    funded(shell, "alice")
    (first,) = shell.apply([("d1", "d", "alice", 300, "")])
    shell.apply([("d2", "d", "alice", 100, "")])
    (again,) = shell.apply([("d1", "d", "alice", 300, "")])
    assert (first.result, first.balance_minor, first.replayed) == (Result.ok, 700, False)
    assert (again.result, again.balance_minor, again.replayed) == (Result.ok, 700, True)


def test_a_refused_debit_replays_refused_after_a_top_up(shell: Shell) -> None:
    open_account(shell.store, "alice")
    (first,) = shell.apply([("d1", "d", "alice", 50, "")])
    shell.store.apply([("top", "c", "alice", 1000, "")])
    (again,) = shell.apply([("d1", "d", "alice", 50, "")])
    assert first.result is again.result is Result.insufficient_funds
    assert (again.replayed, again.balance_minor) == (True, 0)


def test_a_replay_with_another_amount_is_a_distinct_code(shell: Shell) -> None:
    funded(shell, "alice")
    shell.apply([("d1", "d", "alice", 300, "")])
    (conflict,) = shell.apply([("d1", "d", "alice", 301, "")])
    assert (conflict.result, conflict.replayed) == (Result.exists_with_different_amount, True)


def test_one_id_twice_in_one_batch_is_applied_once_and_each_gets_its_own_result(
    shell: Shell,
) -> None:
    funded(shell, "alice", "bob")
    results = shell.apply(
        [
            ("d1", "d", "alice", 100, ""),
            ("d2", "d", "bob", 10, ""),
            ("d1", "d", "alice", 100, ""),
            ("d1", "d", "alice", 7, ""),
        ]
    )
    assert [(r.transfer_id, r.result, r.balance_minor, r.replayed) for r in results] == [
        ("d1", Result.ok, 900, False),
        ("d2", Result.ok, 990, False),
        ("d1", Result.ok, 900, True),
        ("d1", Result.exists_with_different_amount, None, True),
    ]
    assert shell.store.read_accounts(["alice"])["alice"].balance_minor == 900  # type: ignore[union-attr]


def test_a_foreign_epoch_is_store_lost_with_the_store_lost_result(
    shell: Shell, layout: KeyLayout
) -> None:
    funded(shell, "alice")
    stamp_epoch(shell.store.client, layout, "E-other-ledger")
    with pytest.raises(StoreLost) as lost:
        shell.apply([("d1", "d", "alice", 1, "")])
    assert [r.result for r in lost.value.partial] == [Result.store_lost]  # type: ignore[attr-defined]


def test_one_lost_shard_fails_only_its_own_transfers(shell: Shell, layout: KeyLayout) -> None:
    funded(shell, "alice", "bob")
    lost_shard = layout.shard_of("alice")
    assert layout.shard_of("bob") != lost_shard
    shell.store.client.set(layout.epoch(lost_shard), "foreign")
    batch = [("d1", "d", "alice", 1, ""), ("d2", "d", "bob", 1, "")]
    if shell.kind == "coalesced":
        outcomes = shell.each(batch)
        assert isinstance(outcomes[0], StoreLost)
        assert isinstance(outcomes[1], TransferResult) and outcomes[1].result is Result.ok
        return
    with pytest.raises(StoreLost) as lost:
        shell.apply(batch)
    partial = lost.value.partial  # type: ignore[attr-defined]
    assert sorted((r.transfer_id, r.result) for r in partial) == [
        ("d1", Result.store_lost),
        ("d2", Result.ok),
    ]


def test_a_read_only_node_fails_fast(shell: Shell, redis_node: RedisNode) -> None:
    funded(shell, "alice")
    redis_node.client().replicaof(redis_node.host, redis_node.port)  # of itself, as in 2013
    with pytest.raises(StoreReadOnly):
        shell.apply([("d1", "d", "alice", 1, "")])


def test_too_few_replicas_is_norereplicas_not_a_write(shell: Shell, redis_node: RedisNode) -> None:
    funded(shell, "alice")
    redis_node.client().config_set("min-replicas-to-write", 1)
    with pytest.raises(StoreNotEnoughReplicas):
        shell.apply([("d1", "d", "alice", 1, "")])
    redis_node.client().config_set("min-replicas-to-write", 0)
    (result,) = shell.apply([("d1", "d", "alice", 1, "")])
    assert (result.result, result.replayed) == (Result.ok, False)


def test_flushed_scripts_are_loaded_again_once(shell: Shell) -> None:
    funded(shell, "alice")
    shell.store.client.script_flush()
    (result,) = shell.apply([("d1", "d", "alice", 1, "")])
    assert result.result is Result.ok


def test_a_reply_that_never_comes_is_an_unknown_outcome_and_the_resend_replays(
    redis_node: RedisNode, layout: KeyLayout
) -> None:
    """A paused server: the call was sent, no reply within the socket timeout."""
    for kind in SHELLS:
        client = redis.Redis(port=redis_node.port, socket_timeout=0.2, socket_connect_timeout=1)
        stamp_epoch(client, layout)
        store = RedisStore(client, layout, EPOCH)
        store.load_scripts()
        one = Shell(kind, store)
        try:
            funded(one, f"alice-{kind}")
            one.apply(
                [(f"warm-{kind}", "d", f"alice-{kind}", 1, "")]
            )  # a connection, handshake done
            redis_node.client().execute_command("CLIENT", "PAUSE", 600, "ALL")
            with pytest.raises(StoreOutcomeUnknown):
                one.apply([(f"d-{kind}", "d", f"alice-{kind}", 1, "")])
            time.sleep(0.7)  # the pause is over
            (again,) = one.apply([(f"d-{kind}", "d", f"alice-{kind}", 1, "")])
            assert (again.result, again.balance_minor) == (Result.ok, 998)  # applied once
        finally:
            one.close()
            client.close()


def test_an_unreachable_store_is_a_typed_error(layout: KeyLayout, tmp_path: object) -> None:
    node_port = _free_port()
    client = redis.Redis(port=node_port, socket_timeout=0.2, socket_connect_timeout=0.2)
    store = RedisStore(client, layout, EPOCH)
    for kind in SHELLS:
        one = Shell(kind, store)
        try:
            with pytest.raises(StoreError) as err:
                one.apply([("d1", "d", "alice", 1, "")])
            assert not isinstance(err.value, StoreOutcomeUnknown), "nothing was sent"
        finally:
            one.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_primary_restarted_empty_is_store_lost_not_an_unknown_outcome(
    shell: Shell, redis_node: RedisNode
) -> None:
    """The pooled connection of the first call was closed by the crashed server; nothing was
    sent on it since, so the shell reconnects before sending (the one safe reconnect) and the
    empty dataset refuses: ``store_lost``. Before, the async shells sent on the dead socket and
    answered ``outcome_unknown`` (redis-py's asyncio pool check does not see the EOF; the sync
    pool's does), which is what ``tests/serve/test_readiness.py`` caught through serve."""
    funded(shell, "alice")
    (first,) = shell.apply([("d1", "d", "alice", 1, "")])
    assert first.result is Result.ok
    redis_node.kill()
    for name in ("appendonlydir", "appendonly.aof", "dump.rdb"):  # its persistence is gone
        path = redis_node.dir / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    redis_node.start()
    # In a service the event loop runs all along and reads the EOF as it arrives; here it runs
    # only inside each call, so let it run a moment as it would.
    shell.runner.run(asyncio.sleep(0.2))
    with pytest.raises(StoreLost):
        shell.apply([("d2", "d", "alice", 1, "")])
