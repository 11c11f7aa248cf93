"""The workload: paced client operations over many accounts, each recorded in the history.

Its own clock: operation ``k`` is due at ``start + k / rate_per_s``; a pool of workers takes due
operations in order, so a slow answer delays one worker, not the schedule. An operation more than
``LATE_S_MAX`` late is skipped and counted (the run is overloaded, not silently slower). Every
random choice comes from ``Random(seed, k)``: the same seed gives the same operations.

Accounts: usage is skewed (Zipf: a few accounts are hot), every account has an auto-recharge
rule (threshold, target), a share of cards decline every charge (the gateway is told so; they
are the only accounts a correct system may suspend). Small shares of the operations are
top-ups (credits), batch debits (``BATCH_ITEMS`` debits in one request, one history operation
each), balance reads, recharge-rule updates (the same rule again: re-enables autopay) and, for
tally, sessions (a hold, then its capture, its void or nothing: it expires).

Entry points: tally runs a ``tally serve`` in dc1 and one in dc2; worker ``w`` calls
``entry_points[w % n]`` first. A write with an unknown outcome (``info``: a timeout, a broken
connection, ``outcome_unknown``) is retried with the SAME transfer id through the NEXT data
center's entry point, at most ``RETRIES_MAX`` times, each attempt its own history operation
(``value["via"]`` names the data center), as a real caller does.
"""

from __future__ import annotations

import bisect
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tally.lab.billing import AccountSpec, BillingSystem, Completion
from tally.lab.history import HistoryWriter

LATE_S_MAX = 1.0
ACCOUNTS_MAX = 100_000
RATE_PER_S_MAX = 5_000
WORKERS_MAX = 64
RETRY_PAUSE_S = 0.1
RETRIES_MAX = 2
BATCH_ITEMS = 3


@dataclass(frozen=True)
class WorkloadSpec:
    accounts: int = 200
    rate_per_s: float = 80.0
    workers: int = 8
    topup_share: float = 0.02
    batch_share: float = 0.05
    read_share: float = 0.05
    rule_share: float = 0.01
    #: sessions: a hold, then (by the same seed) its capture, its void, or nothing (it expires)
    hold_share: float = 0.03
    hold_expires_s: int = 2
    decline_share: float = 0.05
    zipf_s: float = 1.1
    debit_minor_max: int = 120
    initial_minor: int = 1500
    threshold_minor: int = 500
    target_minor: int = 3000
    topup_minor: int = 1000

    def __post_init__(self) -> None:
        if not 1 <= self.accounts <= ACCOUNTS_MAX:
            raise ValueError(f"accounts must be 1..{ACCOUNTS_MAX}")
        if not 0 < self.rate_per_s <= RATE_PER_S_MAX:
            raise ValueError(f"rate must be in (0, {RATE_PER_S_MAX}] operations per second")
        if not 1 <= self.workers <= WORKERS_MAX:
            raise ValueError(f"workers must be 1..{WORKERS_MAX}")


def make_accounts(spec: WorkloadSpec, seed: int) -> list[AccountSpec]:
    rng = random.Random(f"{seed}:accounts")
    out = []
    for i in range(spec.accounts):
        declines = rng.random() < spec.decline_share
        out.append(AccountSpec(f"a{i:05d}", f"card-a{i:05d}", spec.initial_minor,
                               spec.threshold_minor, spec.target_minor, declines))  # fmt: skip
    return out


def _zipf_cumulative(n: int, s: float, seed: int) -> tuple[list[float], list[int]]:
    order = list(range(n))
    random.Random(f"{seed}:skew").shuffle(order)  # hot accounts are not simply the first ones
    total, cumulative = 0.0, []
    for rank in range(n):
        total += 1.0 / (rank + 1) ** s
        cumulative.append(total)
    return cumulative, order


@dataclass
class WorkloadStats:
    scheduled: int = 0
    done: int = 0
    skipped_late: int = 0
    retries: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


class Workload:
    def __init__(
        self,
        billing: BillingSystem,
        history: HistoryWriter,
        spec: WorkloadSpec,
        accounts: list[AccountSpec],
        seed: int,
    ) -> None:
        self.billing, self.history, self.spec, self.seed = billing, history, spec, seed
        self.accounts = accounts
        self._cumulative, self._order = _zipf_cumulative(len(accounts), spec.zipf_s, seed)
        self._lock = threading.Lock()
        self._next = 0
        self.stats = WorkloadStats()
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._start = 0.0
        self._end = 0.0

    def start(self, duration_s: float) -> Workload:
        self._start = time.monotonic()
        self._end = self._start + duration_s
        for w in range(self.spec.workers):
            thread = threading.Thread(target=self._worker, args=(w,), name=f"lab-worker-{w}",
                                      daemon=True)  # fmt: skip
            thread.start()
            self._threads.append(thread)
        return self

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def halt(self, timeout_s: float = 30.0) -> None:
        self.stop.set()
        self.join(timeout_s)

    def _take(self) -> int:
        with self._lock:
            k = self._next
            self._next += 1
            self.stats.scheduled += 1
            return k

    def _worker(self, process: int) -> None:
        while not self.stop.is_set():
            k = self._take()
            due = self._start + k / self.spec.rate_per_s
            if due >= self._end:
                return
            if self.stop.wait(max(0.0, due - time.monotonic())):
                return
            if time.monotonic() - due > LATE_S_MAX:
                with self._lock:
                    self.stats.skipped_late += 1
                continue
            self._one(process, k)

    def _pick(self, rng: random.Random) -> AccountSpec:
        x = rng.random() * self._cumulative[-1]
        rank = min(bisect.bisect_left(self._cumulative, x), len(self._order) - 1)
        return self.accounts[self._order[rank]]

    def _one(self, process: int, k: int) -> None:
        rng = random.Random(f"{self.seed}:op:{k}")
        account = self._pick(rng)
        x, spec = rng.random(), self.spec
        if x < spec.topup_share:
            self._write(process, "topup", [(f"t{k:08d}", account.id, spec.topup_minor)])
        elif x < spec.topup_share + spec.batch_share:
            items = [(f"b{k:08d}-{i}", self._pick(rng).id, rng.randint(1, spec.debit_minor_max))
                     for i in range(BATCH_ITEMS)]  # fmt: skip
            self._write(process, "debit", items)
        elif x < spec.topup_share + spec.batch_share + spec.read_share:
            self._call(process, "read", {"account": account.id},
                       lambda via: self.billing.read(account.id, via), 0)  # fmt: skip
        elif x < spec.topup_share + spec.batch_share + spec.read_share + spec.rule_share:
            self._call(process, "rule", {"account": account.id},
                       lambda via: self.billing.set_rule(account, via), 0)  # fmt: skip
        elif (x < spec.topup_share + spec.batch_share + spec.read_share + spec.rule_share
              + spec.hold_share and getattr(self.billing, "holds", False)):  # fmt: skip
            self._session(process, k, account.id, rng)
        else:
            amount = rng.randint(1, spec.debit_minor_max)
            self._write(process, "debit", [(f"u{k:08d}", account.id, amount)])

    def _session(self, process: int, k: int, account: str, rng: random.Random) -> None:
        """A session: hold an amount, then capture part of it, void it, or let it expire (the
        checker's invariant 10 reads what the ledger made of each)."""
        hid, spec = f"h{k:08d}", self.spec
        amount, end = rng.randint(1, spec.debit_minor_max), rng.random()
        billing: Any = self.billing
        placed = self._call(process, "hold", {"id": hid, "account": account, "amount_minor": amount},
                            lambda via: billing.hold(hid, account, amount, spec.hold_expires_s, via),
                            0)  # fmt: skip
        if placed != "ok" or end >= 0.8:
            return  # refused, unknown, or left to expire
        if end < 0.5:
            used = rng.randint(1, amount)
            self._call(process, "capture", {"id": hid, "amount_minor": used},
                       lambda via: billing.capture(hid, used, via), 0)  # fmt: skip
        else:
            self._call(process, "void", {"id": hid}, lambda via: billing.void(hid, via), 0)

    def _write(self, process: int, f: str, items: list[tuple[str, str, int]]) -> None:
        """One request (a batch when several items); the unknown ones retried by id through the
        next entry point, bounded."""
        pending = items
        for attempt in range(RETRIES_MAX + 1):
            if attempt:
                if self.stop.wait(RETRY_PAUSE_S):
                    return
                with self._lock:
                    self.stats.retries += len(pending)
            types = self._send(process, f, pending, attempt)
            pending = [item for item, t in zip(pending, types, strict=True) if t == "info"]
            if not pending or self.stop.is_set():
                return

    def _send(self, process: int, f: str, items: list[tuple[str, str, int]],
              attempt: int) -> list[str]:  # fmt: skip
        via = process + attempt
        entry = self.billing.entry_points[via % len(self.billing.entry_points)]
        ops = [self.history.invoke(f, process, {"id": tid, "account": account,
                                                "amount_minor": amount, "via": entry})
               for tid, account, amount in items]  # fmt: skip
        try:
            if f == "topup":
                tid, account, amount = items[0]
                completions = [self.billing.top_up(tid, account, amount, via)]
            elif len(items) == 1:
                tid, account, amount = items[0]
                completions = [self.billing.debit(tid, account, amount, via)]
            else:
                completions = self.billing.debit_batch(items, via)
        except Exception as exc:
            completions = [_crashed(exc)] * len(items)
        for op, (type_, outcome) in zip(ops, completions, strict=True):
            self._complete(op, f, process, type_, outcome)
        return [type_ for type_, _ in completions]

    def _call(self, process: int, f: str, value: dict[str, Any],
              call: Callable[[int], Completion], attempt: int) -> str:  # fmt: skip
        via = process + attempt
        entry = self.billing.entry_points[via % len(self.billing.entry_points)]
        op = self.history.invoke(f, process, {**value, "via": entry})
        try:
            type_, outcome = call(via)
        except Exception as exc:
            type_, outcome = _crashed(exc)
        self._complete(op, f, process, type_, outcome)
        return type_

    def _complete(self, op: int, f: str, process: int, type_: str, outcome: dict[str, Any]) -> None:
        self.history.complete(op, type_, f, process, outcome)
        with self._lock:
            self.stats.done += 1
            key = f"{f}:{type_}"
            self.stats.by_type[key] = self.stats.by_type.get(key, 0) + 1


def _crashed(exc: BaseException) -> Completion:
    return "info", {"error": type(exc).__name__, "message": str(exc)[:200]}
