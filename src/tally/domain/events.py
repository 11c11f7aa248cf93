"""Events for dependents, pure: the event types, the payload a consumer receives, the checks on
a webhook endpoint's URL and secret, the retry schedule, and how a recharge's wait reason is
named. No I/O: the ledger writes the outbox (``tally.ledger.sql_outbox``), the delivery worker
sends (``tally.service.delivery``).

Payload (the body of a webhook, and an item of ``GET /v1/events``)::

    {"id": "evt_…", "cursor": 42, "type": "account.suspended",
     "timestamp": "2026-12-04T06:49:31.123Z", "data": {...}}
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from tally.errors import UsageError


class EventType(StrEnum):
    account_suspended = "account.suspended"
    account_reinstated = "account.reinstated"
    account_closed = "account.closed"
    recharge_succeeded = "recharge.succeeded"
    recharge_failed = "recharge.failed"
    recharge_waiting = "recharge.waiting"
    recharge_refunded = "recharge.refunded"
    balance_low = "balance.low"
    hold_expired = "hold.expired"
    billing_frozen = "billing.frozen"
    billing_unfrozen = "billing.unfrozen"


class WaitReason(StrEnum):
    """Why a recharge waits, as dependents see it (``recharges.wait_reason`` has the detail)."""

    frozen = "frozen"
    circuit_open = "circuit_open"
    store_unhealthy = "store_unhealthy"
    gateway_unavailable = "gateway_unavailable"
    pending = "pending"  # waits on its own progress: a credit to apply, a refund, another recharge


_STORE_PREFIXES = (
    "store_",
    "replica_lag",
    "drain_lag",
    "Store",  # a StoreError's class name, e.g. "StoreUnavailable: ..."
)
_GATEWAY_PREFIXES = ("gateway_", "Gateway")


def wait_reason(detail: str) -> WaitReason:
    """Name a wait reason the gate or the saga wrote (e.g. ``"frozen: incident 42"``)."""
    if detail.startswith("frozen"):
        return WaitReason.frozen
    if detail.startswith("circuit_open"):
        return WaitReason.circuit_open
    if detail.startswith(_STORE_PREFIXES):
        return WaitReason.store_unhealthy
    if detail.startswith(_GATEWAY_PREFIXES):
        return WaitReason.gateway_unavailable
    return WaitReason.pending


#: A bound on what one event carries (the outbox row, the webhook body).
DATA_BYTES_MAX = 8192
EVENT_ID_PREFIX = "evt_"


def check_type(value: str) -> EventType:
    try:
        return EventType(value)
    except ValueError:
        raise UsageError(f"unknown event type {value!r:.60}") from None


def encode_data(data: Mapping[str, Any]) -> str:
    """The event's data as compact JSON, bounded; refuses what JSON cannot carry exactly."""
    try:
        text = json.dumps(dict(data), separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"event data is not JSON: {exc}") from None
    if len(text.encode()) > DATA_BYTES_MAX:
        raise UsageError(f"event data exceeds {DATA_BYTES_MAX} bytes")
    return text


def iso_ms(at_ms: int) -> str:
    at = datetime.fromtimestamp(at_ms // 1000, tz=UTC)
    return f"{at:%Y-%m-%dT%H:%M:%S}.{at_ms % 1000:03d}Z"


def payload(event_id: str, cursor: int, type_: str, at_ms: int, data_json: str) -> dict[str, Any]:
    return {
        "id": event_id,
        "cursor": cursor,
        "type": type_,
        "timestamp": iso_ms(at_ms),
        "data": json.loads(data_json),
    }


def body_bytes(event: Mapping[str, Any]) -> bytes:
    """The exact bytes sent (and signed): compact, keys sorted, the same on every retry."""
    return json.dumps(dict(event), separators=(",", ":"), sort_keys=True).encode()


# -- endpoints ------------------------------------------------------------------------------------
URL_LEN_MAX = 2048
SECRET_PREFIX = "whsec_"
#: Standard Webhooks: secrets are 24 to 64 random bytes, base64 after the ``whsec_`` prefix.
SECRET_BYTES_MIN = 24
SECRET_BYTES_MAX = 64
ENDPOINT_TYPES_MAX = len(EventType)


class EndpointRefused(UsageError):
    """A webhook endpoint's definition is refused; ``code`` is the stable API problem code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, hint="see README, Events and webhooks")
        self.code = code


def check_url(url: str) -> str:
    if not isinstance(url, str) or not 1 <= len(url) <= URL_LEN_MAX:
        raise EndpointRefused("webhook_url_invalid", f"a URL of 1..{URL_LEN_MAX} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EndpointRefused(
            "webhook_url_invalid", f"webhook URLs are http(s)://host/...: got {url[:80]!r}"
        )
    if parts.username or parts.password:
        raise EndpointRefused("webhook_url_invalid", "no credentials in the URL")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise EndpointRefused("webhook_url_invalid", "no whitespace or control characters")
    return url


HOST_PATTERN = re.compile(r"[a-z0-9.:-]{1,253}")


def parse_hosts(text: str | None) -> frozenset[str] | None:
    """``TALLY_WEBHOOK_HOSTS``: the hosts (names or IP addresses, comma separated) webhooks may
    be sent to. Unset or empty: any host. Hosts are compared as written in the URL, lowercased."""
    if text is None or not text.strip():
        return None
    hosts = frozenset(h.strip().lower().strip("[]") for h in text.split(","))
    if any(HOST_PATTERN.fullmatch(h) is None for h in hosts):
        raise EndpointRefused(
            "webhook_hosts_invalid",
            f"TALLY_WEBHOOK_HOSTS is a comma-separated list of hosts: {text!r}",
        )
    return hosts


def check_host(url: str, hosts: frozenset[str] | None) -> None:
    """Egress policy: a URL whose host is not in ``hosts`` is refused (``None``: any host)."""
    if hosts is None:
        return
    host = (urlsplit(url).hostname or "").lower()
    if host not in hosts:
        raise EndpointRefused(
            "webhook_url_not_allowed",
            f"webhooks may go only to {', '.join(sorted(hosts))} (TALLY_WEBHOOK_HOSTS), "
            f"not {host!r}",
        )


def check_secret(secret: str) -> str:
    """A caller-given secret: ``whsec_`` + base64 of 24..64 bytes."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise EndpointRefused("webhook_secret_invalid", "a secret starts with whsec_")
    try:
        raw = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise EndpointRefused("webhook_secret_invalid", "the secret is not base64") from None
    if not SECRET_BYTES_MIN <= len(raw) <= SECRET_BYTES_MAX:
        raise EndpointRefused(
            "webhook_secret_invalid",
            f"a secret is {SECRET_BYTES_MIN}..{SECRET_BYTES_MAX} bytes, got {len(raw)}",
        )
    return secret


def new_secret(raw: bytes) -> str:
    if not SECRET_BYTES_MIN <= len(raw) <= SECRET_BYTES_MAX:
        raise UsageError("a secret is 24..64 random bytes")
    return SECRET_PREFIX + base64.b64encode(raw).decode()


def check_types(types: list[str] | None) -> tuple[EventType, ...] | None:
    """None: every type. Otherwise a non-empty list of known types, without repeats."""
    if types is None:
        return None
    if not 1 <= len(types) <= ENDPOINT_TYPES_MAX:
        raise EndpointRefused("event_types_invalid", f"1..{ENDPOINT_TYPES_MAX} event types")
    try:
        found = tuple(EventType(t) for t in types)
    except ValueError:
        raise EndpointRefused(
            "event_types_invalid", f"known types: {', '.join(t.value for t in EventType)}"
        ) from None
    if len(set(found)) != len(found):
        raise EndpointRefused("event_types_invalid", "an event type is listed twice")
    return found


# -- retries --------------------------------------------------------------------------------------
BACKOFF_BASE_MS = 1_000
BACKOFF_CAP_MS = 3_600_000  # one hour
ATTEMPTS_MAX = 12  # 1+2+4+…+2048 s, capped: about 1.9 hours of trying, then dead-lettered


def backoff_ms(
    attempts: int,
    *,
    base_ms: int = BACKOFF_BASE_MS,
    cap_ms: int = BACKOFF_CAP_MS,
    rng: random.Random | None = None,
) -> int:
    """The pause after the ``attempts``-th failed attempt: base * 2^(attempts-1), at most
    ``cap_ms``, with "equal jitter" (half fixed, half random) so endpoints that failed together
    do not come back together."""
    if attempts < 1:
        raise UsageError("attempts start at 1")
    full = min(cap_ms, base_ms << min(attempts - 1, 40))
    half = full // 2
    return half + (rng or random.Random()).randint(0, full - half)
