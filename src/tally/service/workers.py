"""Background work as threads: ``run()`` over a ``run_once()`` with a batch limit, a pace, and an
error pace. Infrastructure errors are counted and retried (the store may be down for a while);
anything else is a bug and stops the worker loudly (``failed`` is set, the log has it)."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tally.bootstrap import Deployment
from tally.domain.holds import HOLD_SWEEP_MAX
from tally.errors import InfrastructureError
from tally.sync.cluster_admission import sweep
from tally.sync.drainer import ENTRIES_PER_READ_MAX, Drainer, DrainStats

log = logging.getLogger("tally.service")

DRAIN_ROUNDS_MAX = 10_000
#: Journal entries one drain round reads at most. A round's fixed costs (three pipelined reads,
#: the fence, one ledger transaction with its epoch lock and commit, the acks and trims) are
#: spread over its entries, and coalesced HTTP debits make entries of one or two lines: with
#: 4,000 a round the drainer spent 22-30 s of CPU per million such transfers into SQLite,
#: against 33-49 s with 1,000 (``tally bench drain --batch-size 2``, README "Benchmarks").
DRAIN_LIMIT = 4000
#: Lines one round holds at most, about: a round of batch calls' entries (hundreds of lines
#: each) reads fewer entries (``round_limit``), so its memory stays bounded.
DRAIN_LINES_PER_ROUND = 250_000
DRAIN_LIMIT_MIN = 16
#: A round that settled at least this many entries goes again at once (a backlog).
DRAIN_BUSY_AT = 1000
#: The drainer's pause after a round that moved less than a full batch. Without it, a steady
#: trickle of debits kept it in a tight loop of ~5 Redis calls per shard per round, competing
#: with the request threads for the GIL (profiled: 22% of GIL time at 250 debits/s, and the
#: event loop waiting behind it). Drain lag stays far below the readiness bound (seconds).
DRAIN_PACE_S = 0.05


@dataclass
class Worker:
    name: str
    run_once: Callable[[], int]
    pace_s: float = 0.0  # after a round that did some work
    idle_s: float = 0.2  # after a round with nothing to do
    #: A round that did at least this much goes again at once (a backlog); None: never.
    busy_at: int | None = None
    error_pace_s: float = 1.0
    errors: int = 0
    rounds: int = 0
    last_error: str | None = None
    failed: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"tally-{self.name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                done = self.run_once()
            except InfrastructureError as exc:
                self.errors += 1
                self.last_error = str(exc)
                log.warning("%s: %s", self.name, exc)
                self._stop.wait(self.error_pace_s)
                continue
            except BaseException as exc:
                self.failed = exc
                log.exception("%s stopped on an unexpected error", self.name)
                return
            self.rounds += 1
            if self.busy_at is not None and done >= self.busy_at:
                continue
            self._stop.wait(self.pace_s if done else self.idle_s)

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Ask it to stop after the current round; True when it did within the timeout."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


class ProcessLock:
    """A lock across threads and processes (``flock`` on a file): with ``--workers N`` an admin
    drain or rebuild in an HTTP worker and the parent's drainer take turns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fd: int | None = None

    def __enter__(self) -> ProcessLock:
        self._thread_lock.acquire()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._fd = fd
        except BaseException:
            self._thread_lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        finally:
            self._thread_lock.release()


class DrainService:
    """One drainer shared by the background worker and on-demand drains (admin, shutdown)."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.lock = ProcessLock(Path(dep.settings.home) / "drain.lock")
        # Fenced by Settings.drain_replicas: with Sentinel, only what every known replica holds
        # is settled in the ledger; a fenced round returns 0 (drain_all stops, entries wait).
        self.drainer: Drainer = dep.drainer(count=min(DRAIN_LIMIT, ENTRIES_PER_READ_MAX))
        #: Entries the next round reads at most (``round_limit`` of the last round).
        self.limit = DRAIN_LIMIT

    def worker(self) -> Worker:
        """The background drainer of a deployment (``tally serve``; ``tally bench sustained``
        runs the same)."""
        return Worker("drainer", self.run_once, pace_s=DRAIN_PACE_S, idle_s=0.1,
                      busy_at=DRAIN_BUSY_AT)  # fmt: skip

    def run_once(self) -> int:
        with self.lock:
            self.drainer.client = self.dep.store.client  # a Sentinel failover changes it
            if not self.dep.is_cluster:  # and the Sentinels' replica count, the fence
                self.drainer.replicas = self.dep.drain_fence()
            lines = _lines(self.drainer.stats)
            done = self.drainer.run_once(self.limit)  # the entries it settled
            self.limit = round_limit(done, _lines(self.drainer.stats) - lines, self.limit)
            return done

    def drain_all(self) -> int:
        """Until the journal is empty (bounded): credits pending first, so they are drained too."""
        total = 0
        self.dep.engine.apply_pending_credits(older_than_ms=0)
        for _ in range(DRAIN_ROUNDS_MAX):
            done = self.run_once()
            total += done
            if done == 0:
                break
        return total


def _lines(stats: DrainStats) -> int:
    return stats.lines_applied + stats.duplicates + stats.conflicts + stats.foreign


def round_limit(entries: int, lines: int, current: int) -> int:
    """The next round's entry limit: DRAIN_LIMIT, or fewer when the last round's entries were
    big (about DRAIN_LINES_PER_ROUND lines a round), never below DRAIN_LIMIT_MIN; a round that
    settled nothing says nothing and keeps ``current``."""
    if entries <= 0:
        return current
    per_entry = max(1, -(-lines // entries))
    return max(DRAIN_LIMIT_MIN, min(DRAIN_LIMIT, DRAIN_LINES_PER_ROUND // per_entry))


def credit_applier(dep: Deployment, *, older_than_ms: int = 2000) -> Callable[[], int]:
    """Credits the ledger holds but the store has not applied (it was down or lost)."""
    return lambda: dep.engine.apply_pending_credits(older_than_ms=older_than_ms)


#: The hold sweeper's pause between rounds: an expired hold nobody touches is released within
#: about this long (debits meanwhile see it as still held: the safe side).
HOLD_SWEEP_IDLE_S = 0.5


def hold_sweeper(dep: Deployment) -> Callable[[], int]:
    """Release expired holds nobody touched: one bounded sweep of every shard per round
    (``HOLD_SWEEP_MAX`` per shard; the store's clock decides). Runs once per deployment."""
    return lambda: dep.engine.sweep_holds(HOLD_SWEEP_MAX)


#: The admission sweep's pause (a Redis Cluster): a node restarted without tally (systemd, a
#: hand) serves its replicas again within about this long once judged safe.
ADMISSION_SWEEP_S = 5.0


def admission_sweeper(dep: Deployment) -> Callable[[], int]:
    """On a Redis Cluster: judge nodes that a restart tally never saw left quarantined
    (``sync.cluster_admission``); returns how many were let in. A node kept out is logged each
    time its reason changes."""
    reasons: dict[str, str] = {}

    def once() -> int:
        judged = sweep(dep.store.client)
        for a in judged:
            if not a.admitted and reasons.get(a.node) != a.reason:
                log.warning("sync quarantine: %s kept out: %s", a.node, a.reason)
            reasons[a.node] = a.reason
        return sum(1 for a in judged if a.admitted)

    return once
