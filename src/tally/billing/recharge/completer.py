"""The completer: re-drives every unfinished recharge (a worker died, the store or gateway was
down, the circuit was open, billing was frozen) in bounded batches, least recently touched
first. ``run_once(limit)`` is one batch; ``run(stop_event)`` paces batches until stopped."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field

from tally.billing.recharge.saga import RechargeSaga
from tally.errors import ConfigError, InfrastructureError

log = logging.getLogger(__name__)

BATCH_MAX = 1000


@dataclass
class CompleterStats:
    batches: int = 0
    driven: int = 0
    finished: int = 0
    errors: int = 0
    waiting: Counter[str] = field(default_factory=Counter)
    last_error: str | None = None


class Completer:
    def __init__(self, saga: RechargeSaga, *, older_than_ms: int = 0) -> None:
        if not 0 <= older_than_ms <= 24 * 3600 * 1000:
            raise ConfigError("older_than_ms must be 0..one day")
        self.saga = saga
        self.older_than_ms = older_than_ms
        self.stats = CompleterStats()

    def run_once(self, limit: int = 100) -> int:
        """Drive up to ``limit`` unfinished recharges; returns how many finished."""
        if not 1 <= limit <= BATCH_MAX:
            raise ConfigError(f"limit must be 1..{BATCH_MAX}")
        book = self.saga.book
        batch = book.unfinished(limit=limit, older_than_ms=self.older_than_ms)
        finished = 0
        self.stats.batches += 1
        for rc in batch:
            self.stats.driven += 1
            try:
                after = self.saga.drive(rc.id)
            except InfrastructureError as exc:  # the ledger itself: stop this batch
                self.stats.errors += 1
                self.stats.last_error = str(exc)
                log.warning("completer: %s", exc)
                break
            if after is not None and after.finished:
                finished += 1
            elif after is not None and after.wait_reason:
                self.stats.waiting[after.wait_reason.split(":", 1)[0]] += 1
        self.stats.finished += finished
        return finished

    def run(
        self,
        stop_event: threading.Event,
        *,
        limit: int = 100,
        pace_s: float = 0.5,
        iterations_max: int | None = None,
    ) -> CompleterStats:
        iterations = 0
        while not stop_event.is_set():
            if iterations_max is not None and iterations >= iterations_max:
                break
            iterations += 1
            try:
                self.run_once(limit)
            except InfrastructureError as exc:
                self.stats.errors += 1
                self.stats.last_error = str(exc)
                log.warning("completer: %s", exc)
            stop_event.wait(pace_s)
        return self.stats
