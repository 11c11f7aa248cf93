"""Admin operations for the API: each coordinates store, ledger and workers, one at a time."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from tally.billing.engine import PENDING_CREDITS_BATCH_MAX
from tally.bootstrap import Deployment
from tally.errors import StoreError
from tally.service.workers import DRAIN_ROUNDS_MAX, DrainService
from tally.sync.reconcile import reconcile
from tally.sync.shard_rebuild import rebuild_store


def plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if hasattr(value, "value") and not isinstance(value, int | str):
        return value.value
    return value


def reapply_credits(dep: Deployment) -> int:
    total = 0
    for _ in range(DRAIN_ROUNDS_MAX):
        applied = dep.engine.apply_pending_credits(older_than_ms=0)
        total += applied
        if applied < PENDING_CREDITS_BATCH_MAX:
            break
    return total


def reapply_after_rebuild(dep: Deployment) -> dict[str, Any]:
    """``reapply_credits`` after a rebuild. A credit whose shard is still lost or unreachable
    (on a cluster: a shard not rebuilt yet, its own rebuild comes next) keeps its intent
    pending in the ledger, where the credit applier retries it; the rebuild itself stands, so
    it is reported, not answered as an error (the lab saw 503 for rebuilt shards)."""
    try:
        return {"credits_reapplied": reapply_credits(dep)}
    except StoreError as exc:
        return {"credits_reapplied": None, "credits_still_pending": str(exc)}


class Operations:
    def __init__(self, dep: Deployment, drain: DrainService) -> None:
        self.dep, self.drain_service = dep, drain
        self._lock = threading.Lock()

    def reconcile(self) -> dict[str, Any]:
        with self._lock:
            report = reconcile(self.dep.store.client, self.dep.layout, self.dep.ledger)
            return plain(report.to_dict())  # type: ignore[no-any-return]

    def rebuild(self, *, force: bool, shard: int | None = None) -> dict[str, Any]:
        """The whole store, or (``shard``, a Redis Cluster) one logical shard under an epoch of
        its own while the other shards keep serving."""
        with self._lock, self.drain_service.lock:  # no drain round against a half-loaded store
            report = rebuild_store(
                self.dep.store.client,
                self.dep.layout,
                self.dep.ledger,
                force=force,
                shard=shard,
                idempotency_window_ms=self.dep.store.idempotency_window_ms,
            )
            view = self.dep.ledger.epoch_view()  # every shard's epoch, the rebuilt one's new
            if view is not None:
                self.dep.store.set_epoch(view.epoch.epoch_id, view.overrides)
        data: dict[str, Any] = plain(report)
        # Money in that the lost dataset held but the journal had not settled: apply it again
        # (idempotent by transfer id), so no acknowledged credit is lost.
        data.update(reapply_after_rebuild(self.dep))
        return data

    def drain(self) -> dict[str, Any]:
        with self._lock:
            entries = self.drain_service.drain_all()
            return {"entries": entries, "stats": plain(self.drain_service.drainer.stats)}
