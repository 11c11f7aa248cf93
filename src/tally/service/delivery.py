"""Webhook delivery: the outbox's events, signed per Standard Webhooks (``standardwebhooks``),
POSTed to every endpoint that wants them. ``tally serve`` runs one ``DeliveryWorker`` (like the
drainer); its state is the ledger's (``sql_webhooks``), so a killed worker loses nothing.

Guarantees (README, Events and webhooks):

- at least once: a delivery is marked ``delivered`` only after a 2xx; a worker killed between
  the answer and the mark sends it again, with the same ``webhook-id`` (the event id), which
  the consumer dedupes on;
- ordered per endpoint, head-of-line: one request in flight per endpoint (a lease in the
  ledger), and an endpoint's next event is sent only after the one before it was delivered or
  dead-lettered;
- retries: exponential backoff with equal jitter, capped (``domain.events.backoff_ms``); after
  ``attempts_max`` failed attempts the delivery is ``dead`` (a dead letter, listed by the API)
  and the endpoint moves on;
- bounded: endpoints per round, events per endpoint per round, one timeout per request.
"""

from __future__ import annotations

import hashlib
import logging
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from standardwebhooks.webhooks import Webhook

from tally.domain.events import (
    ATTEMPTS_MAX,
    BACKOFF_BASE_MS,
    BACKOFF_CAP_MS,
    EndpointRefused,
    backoff_ms,
    body_bytes,
    check_host,
)
from tally.errors import ConfigError
from tally.ledger.sql_ledger import SqlLedger
from tally.ledger.sql_outbox import StoredEvent
from tally.ledger.sql_webhooks import Delivery, Endpoint, WebhookBook
from tally.ledger.sqlutil import now_ms

log = logging.getLogger("tally.delivery")

TIMEOUT_S_DEFAULT = 5.0
ENDPOINTS_PER_ROUND = 100
EVENTS_PER_ENDPOINT = 20
FAN_OUT_LIMIT = 500
#: A round starts no new endpoint after this long, so it ends within about this plus one
#: request timeout even when many endpoints hang (and ``tally serve`` stops promptly).
ROUND_S_MAX = 10.0
USER_AGENT = "tally-webhooks/1"


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    timeout_s: float = TIMEOUT_S_DEFAULT
    attempts_max: int = ATTEMPTS_MAX
    backoff_base_ms: int = BACKOFF_BASE_MS
    backoff_cap_ms: int = BACKOFF_CAP_MS
    events_per_endpoint: int = EVENTS_PER_ENDPOINT
    endpoints_per_round: int = ENDPOINTS_PER_ROUND

    def __post_init__(self) -> None:
        if not 0.1 <= self.timeout_s <= 60:
            raise ConfigError("webhook timeout_s must be 0.1..60")
        if not 1 <= self.attempts_max <= 100:
            raise ConfigError("webhook attempts_max must be 1..100")
        if not 1 <= self.backoff_base_ms <= self.backoff_cap_ms <= 86_400_000:
            raise ConfigError("webhook backoff: 1 <= base_ms <= cap_ms <= one day")
        if not 1 <= self.events_per_endpoint <= 1000 or not 1 <= self.endpoints_per_round <= 1000:
            raise ConfigError("webhook batch bounds are 1..1000")

    @property
    def lease_ms(self) -> int:
        """Longer than one endpoint's round can take, so a live worker never loses its lease."""
        return int(self.events_per_endpoint * (self.timeout_s + 1) * 1000) + 5000


@dataclass
class DeliveryMetrics:
    attempts: Counter[str] = field(default_factory=Counter)  # outcome: delivered|failed|dead

    def count(self, outcome: str) -> None:
        self.attempts[outcome] += 1


class DeliveryWorker:
    """``run_once`` is one bounded round; ``owner`` names this worker in the endpoint leases
    (the same owner after a restart takes its endpoints back at once)."""

    def __init__(
        self,
        ledger: SqlLedger,
        *,
        owner: str,
        options: DeliveryOptions | None = None,
        client: httpx.Client | None = None,
        clock_ms: Callable[[], int] = now_ms,
        rng: random.Random | None = None,
        hosts: frozenset[str] | None = None,
    ) -> None:
        self.book = WebhookBook(ledger)
        self.owner = owner[:80]
        self.options = options or DeliveryOptions()
        self.client = client or httpx.Client(
            timeout=httpx.Timeout(self.options.timeout_s),
            follow_redirects=False,
            trust_env=False,
            headers={"user-agent": USER_AGENT},
        )
        self.clock_ms = clock_ms
        self.rng = rng or random.Random()
        self.metrics = DeliveryMetrics()
        #: Egress policy (``TALLY_WEBHOOK_HOSTS``), checked again before every request: an
        #: endpoint registered before the policy was set gets nothing outside it.
        self.hosts = hosts

    def close(self) -> None:
        self.client.close()

    def run_once(self) -> int:
        """Queue new events for every endpoint, then send what is due. Returns attempts made."""
        sent = 0
        deadline = time.monotonic() + ROUND_S_MAX
        for endpoint in self.book.active(limit=self.options.endpoints_per_round):
            if time.monotonic() > deadline:
                break  # the rest next round
            self.book.fan_out(endpoint, limit=FAN_OUT_LIMIT, due_at_ms=self.clock_ms())
            if not self.book.lease(endpoint.id, self.owner, self.options.lease_ms):
                continue  # another worker has it: one in flight per endpoint
            try:
                sent += self._drive(endpoint, deadline)
            finally:
                self.book.release(endpoint.id, self.owner)
        return sent

    def _drive(self, endpoint: Endpoint, deadline: float) -> int:
        sent = 0
        for _ in range(self.options.events_per_endpoint):
            if time.monotonic() > deadline:
                break
            head = self.book.head(endpoint.id)
            if head is None:
                break
            delivery, event = head
            if delivery.next_attempt_at_ms > self.clock_ms():
                break  # head-of-line: later events wait for this one's retry
            sent += 1
            if not self._attempt(endpoint, delivery, event):
                break
        return sent

    def _attempt(self, endpoint: Endpoint, delivery: Delivery, event: StoredEvent) -> bool:
        """One POST. True when the endpoint may go on to its next event (delivered or dead)."""
        body = body_bytes(event.payload())
        headers = sign(endpoint.secret, event.event_id, body)
        status: int | None = None
        try:
            check_host(endpoint.url, self.hosts)
            answer = self.client.post(endpoint.url, content=body, headers=headers)
            status = answer.status_code
            error = "" if 200 <= status < 300 else f"HTTP {status}"
        except EndpointRefused as exc:
            error = str(exc.args[0])[:300]  # not sent: fails, then dead-letters, as any other
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        if not error:
            self.book.delivered(delivery.id, status or 0)
            self.metrics.count("delivered")
            return True
        attempts = delivery.attempts + 1
        dead = attempts >= self.options.attempts_max
        pause = backoff_ms(
            attempts,
            base_ms=self.options.backoff_base_ms,
            cap_ms=self.options.backoff_cap_ms,
            rng=self.rng,
        )
        self.book.failed(
            delivery.id,
            attempts=attempts,
            next_attempt_at_ms=self.clock_ms() + pause,
            status=status,
            error=error,
            dead=dead,
        )
        self.metrics.count("dead" if dead else "failed")
        log.warning(
            "webhook %s event %s attempt %d: %s%s",
            endpoint.id,
            event.event_id,
            attempts,
            error,
            " (dead-lettered)" if dead else "",
        )
        return dead


def delivery_owner(home: Path) -> str:
    """The worker's name in endpoint leases: stable across restarts of the same deployment."""
    digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]
    return f"{socket.gethostname()[:60]}:{digest}"


def sign(secret: str, event_id: str, body: bytes, at: datetime | None = None) -> dict[str, str]:
    """The Standard Webhooks headers: ``webhook-id`` (stable: the event id), the attempt's
    ``webhook-timestamp`` and ``webhook-signature`` over ``id.timestamp.body``."""
    when = at or datetime.now(tz=UTC)
    signature = Webhook(secret).sign(event_id, when, body)
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
    }
