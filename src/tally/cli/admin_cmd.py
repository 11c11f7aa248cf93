"""tally init | drain | reconcile | rebuild: operating the store and the ledger of record."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import click

from tally.billing.engine import PENDING_CREDITS_BATCH_MAX
from tally.bootstrap import Deployment, initialise_store
from tally.cli.context import connection_options, deployment, settings_from
from tally.cli.output import EXIT_REFUSED, emit, handles_errors, json_option
from tally.errors import StoreError
from tally.ledger.sql_ledger import SqlLedger
from tally.ops.signals import SignalStop
from tally.store.keys import KeyLayout

DRAIN_ROUNDS_MAX = 10_000


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "value") and not isinstance(value, int | str):
        return value.value
    return value


@click.command()
@click.option(
    "--shards",
    default=None,
    type=click.IntRange(1, 1024),
    help="Logical shards (fixed for the deployment).",
)
@click.option("--namespace", default=None, help="Redis key prefix.")
@connection_options
@json_option
@handles_errors
def init(shards: int | None, namespace: str | None, as_json: bool, **conn: str | None) -> None:
    """Create the ledger schema and the first store epoch (on an empty Redis)."""
    settings = settings_from(**conn)
    layout = KeyLayout(namespace or settings.namespace, shards or settings.shards)
    settings.home.mkdir(parents=True, exist_ok=True)
    with SqlLedger.open(settings.ledger_url) as ledger:
        epoch = initialise_store(settings, layout, ledger)
    emit(
        as_json,
        {"epoch": epoch.epoch_id, "namespace": layout.namespace, "shards": layout.shards},
        f"initialised epoch {epoch.epoch_id} ({layout.shards} shards, namespace {layout.namespace})",
    )


@click.command()
@click.option("--follow", is_flag=True, help="Keep draining until Ctrl-C.")
@click.option(
    "--limit",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Entries per round.",
)
@connection_options
@json_option
@handles_errors
def drain(follow: bool, limit: int, as_json: bool, **conn: str | None) -> None:
    """Move the journal into the ledger of record (and apply credits still pending)."""
    with deployment(**conn) as dep:
        drainer = dep.drainer(count=min(limit, 1000))  # with the deployment's replica fence
        if follow:
            # kept installed after: a second Ctrl-C must not cut the last drain short
            stop = SignalStop.install()
            drainer.run(stop.event, limit=limit)
        else:
            for _ in range(DRAIN_ROUNDS_MAX):
                if drainer.run_once(limit) == 0:
                    break
        credits = dep.engine.apply_pending_credits(older_than_ms=0)
        for _ in range(DRAIN_ROUNDS_MAX):  # the credits just applied are journaled: drain them too
            if drainer.run_once(limit) == 0:
                break
        stats = _plain(drainer.stats)
        stats["credits_applied"] = credits
        emit(as_json, stats, " ".join(f"{k}={v}" for k, v in stats.items()))


@click.command()
@connection_options
@json_option
@handles_errors
def reconcile(as_json: bool, **conn: str | None) -> None:
    """Compare every account's store balance with the ledger (counting undrained entries)."""
    from tally.sync.reconcile import reconcile as run_reconcile

    with deployment(**conn) as dep:
        report = run_reconcile(dep.client, dep.layout, dep.ledger)
        data = _plain(report)
        lines = [f"accounts checked {data['accounts_checked']}, drifted {data['accounts_drifted']}"]
        lines += [
            f"  {d['account']}: store {d['redis_balance_minor']} ledger-expected {d['ledger_balance_minor'] + d['undrained_minor']}"
            for d in data["drift"]
        ]
        emit(as_json, data, "\n".join(lines))
        if data["accounts_drifted"]:
            sys.exit(EXIT_REFUSED)


def _reapply_credits(dep: Deployment) -> int:
    total = 0
    for _ in range(DRAIN_ROUNDS_MAX):
        applied = dep.engine.apply_pending_credits(older_than_ms=0)
        total += applied
        if applied < PENDING_CREDITS_BATCH_MAX:
            return total
    return total


@click.command()
@click.option(
    "--force",
    is_flag=True,
    help="Delete tally's keys in a non-empty dataset first (a healthy one only once its "
    "journal is drained: undrained entries are refused, never dropped).",
)
@click.option(
    "--shard",
    default=None,
    type=click.IntRange(0, 1023),
    help="Redis Cluster only: rebuild this logical shard alone, under a new epoch of its own; "
    "the other shards keep their epochs and keep serving.",
)
@connection_options
@json_option
@handles_errors
def rebuild(force: bool, shard: int | None, as_json: bool, **conn: str | None) -> None:
    """Restore an empty (or, with --force, foreign) store from the ledger under a new epoch
    (on a Redis Cluster: every shard, or one with --shard)."""
    from tally.sync.shard_rebuild import rebuild_store

    with deployment(**conn) as dep:
        report = rebuild_store(
            dep.store.client,
            dep.layout,
            dep.ledger,
            force=force,
            shard=shard,
            idempotency_window_ms=dep.store.idempotency_window_ms,
        )
        data = _plain(report)
        # Money in that the lost dataset held but the journal had not yet settled: apply it
        # again now (idempotent by transfer id), so no acknowledged credit is lost. A credit
        # whose shard is still lost (a cluster shard not rebuilt yet) stays pending in the
        # ledger for the next rebuild or the serve's credit applier; the rebuild stands.
        try:
            data["credits_reapplied"] = _reapply_credits(dep)
        except StoreError as exc:
            data["credits_reapplied"] = None
            data["credits_still_pending"] = str(exc)
        emit(as_json, data, " ".join(f"{k}={v}" for k, v in data.items()))
