"""``HttpGateway``: the port over the simulator's HTTP API; ``SimulatorAdmin``: its fault and
record controls (not part of the port: a real provider has neither).

Mapping (no automatic retries anywhere; every timeout explicit):

- 200 -> succeeded, 402 -> declined (both carry the gateway's record).
- 409 -> ``IdempotencyConflict``; other 4xx -> ``GatewayRequestRejected`` (nothing was charged).
- 5xx (including an outage's 503 and uvicorn's overload 503), a timeout, a connection error, a
  response cut off or unreadable -> ``unknown`` from charge/refund, because a 5xx or a broken
  exchange cannot prove the charge did not happen; the caller resolves by ``lookup`` with the same
  key. ``lookup`` itself raises ``GatewayUnavailable`` / ``GatewayProtocolError`` instead.
- Loopback URLs only: the simulator never listens anywhere else.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from tally.domain.ids import check_id
from tally.domain.money import check_amount_minor, check_currency
from tally.errors import UsageError
from tally.gateway.bank import check_metadata
from tally.gateway.errors import (
    GatewayProtocolError,
    GatewayRequestRejected,
    GatewayUnavailable,
    IdempotencyConflict,
)
from tally.gateway.faults import Faults
from tally.gateway.outcomes import charge_outcome, refund_outcome
from tally.gateway.port import ChargeOutcome, OutcomeStatus, RefundOutcome
from tally.gateway.records import EXPORT_RECORDS_MAX, PAGE_MAX, Record

CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 5.0
POOL_TIMEOUT_S = 5.0
CONNECTIONS_MAX = 32


def check_loopback_url(base_url: str) -> str:
    url = httpx.URL(base_url)
    host = url.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if url.scheme != "http" or not loopback:
        raise UsageError(f"the gateway simulator is reached over http on loopback, not {base_url}")
    return base_url


def make_client(
    base_url: str,
    *,
    connect_timeout_s: float,
    read_timeout_s: float,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    timeout = httpx.Timeout(
        connect=connect_timeout_s, read=read_timeout_s, write=WRITE_TIMEOUT_S, pool=POOL_TIMEOUT_S
    )
    return httpx.Client(
        base_url=check_loopback_url(base_url),
        timeout=timeout,
        transport=transport or httpx.HTTPTransport(retries=0),  # no connect retries either
        limits=httpx.Limits(max_connections=CONNECTIONS_MAX),
        follow_redirects=False,
        trust_env=False,  # never route loopback traffic through an environment proxy
    )


class _Unanswered(Exception):
    """No usable answer: the outcome of the request is unknown."""


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def _fields(response: httpx.Response) -> tuple[str, ...]:
    try:
        return tuple(str(f) for f in response.json()["error"].get("fields", []))
    except (ValueError, KeyError, TypeError, AttributeError):
        return ()


class HttpGateway:
    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = make_client(
            base_url,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HttpGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def charge(
        self,
        idempotency_key: str,
        card_id: str,
        amount_minor: int,
        currency: str,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> ChargeOutcome:
        check_id(idempotency_key, "idempotency key")
        body = {
            "card": check_id(card_id, "card id"),
            "amount_minor": check_amount_minor(amount_minor),
            "currency": check_currency(currency),
            "metadata": check_metadata(metadata),
        }
        try:
            record, replayed = self._post_processed("/v1/charges", idempotency_key, body)
        except _Unanswered as exc:
            return ChargeOutcome(OutcomeStatus.unknown, idempotency_key, detail=str(exc))
        return charge_outcome(record, replayed=replayed)

    def refund(self, idempotency_key: str, charge_id: str, amount_minor: int) -> RefundOutcome:
        check_id(idempotency_key, "idempotency key")
        body = {"charge": check_id(charge_id, "charge id"), "amount_minor": amount_minor}
        check_amount_minor(amount_minor)
        try:
            record, replayed = self._post_processed("/v1/refunds", idempotency_key, body)
        except _Unanswered as exc:
            return RefundOutcome(OutcomeStatus.unknown, idempotency_key, detail=str(exc))
        return refund_outcome(record, replayed=replayed)

    def lookup(self, idempotency_key: str) -> ChargeOutcome | None:
        check_id(idempotency_key, "idempotency key")
        path = f"/v1/charges/by-key/{quote(idempotency_key, safe='')}"
        try:
            response = self._http.get(path)
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(f"lookup of {idempotency_key!r} failed: {exc!r}") from exc
        if response.status_code == 404:
            return None
        if response.status_code >= 500:
            raise GatewayUnavailable(f"lookup answered {response.status_code}")
        if response.status_code != 200:
            raise GatewayRequestRejected(f"lookup refused: {_error_message(response)}")
        try:
            return charge_outcome(Record.from_json_dict(_record_fields(response)), replayed=True)
        except (ValueError, TypeError, KeyError) as exc:
            raise GatewayProtocolError(f"unreadable lookup answer: {exc!r}") from exc

    def _post_processed(
        self, path: str, idempotency_key: str, body: dict[str, Any]
    ) -> tuple[Record, bool]:
        """POST and return (record, replayed); raise _Unanswered when the outcome is unknown."""
        try:
            response = self._http.post(
                path, json=body, headers={"Idempotency-Key": idempotency_key}
            )
        except httpx.HTTPError as exc:  # timeouts, refused/reset connections, cut-off responses
            raise _Unanswered(f"no answer from the gateway: {exc!r}") from exc
        status = response.status_code
        if status == 409:
            raise IdempotencyConflict(_error_message(response), fields=_fields(response))
        if 400 <= status < 500 and status != 402:
            raise GatewayRequestRejected(f"gateway refused ({status}): {_error_message(response)}")
        if status not in (200, 402):  # 5xx, or anything a gateway should never answer
            raise _Unanswered(f"gateway answered {status}: {_error_message(response)}")
        try:
            record = Record.from_json_dict(_record_fields(response))
        except (ValueError, TypeError, KeyError) as exc:
            raise _Unanswered(f"unreadable {status} answer: {exc!r}") from exc
        return record, response.headers.get("idempotent-replayed") == "true"


_RECORD_FIELDS = frozenset(Record.__dataclass_fields__)


def _record_fields(response: httpx.Response) -> dict[str, Any]:
    data = response.json()
    if not isinstance(data, dict):
        raise ValueError("answer is not a JSON object")
    return {k: v for k, v in data.items() if k in _RECORD_FIELDS}


class SimulatorAdmin:
    """The simulator's own controls: faults at runtime, its records, its health."""

    def __init__(self, base_url: str, *, timeout_s: float = READ_TIMEOUT_S) -> None:
        self._http = make_client(base_url, connect_timeout_s=timeout_s, read_timeout_s=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SimulatorAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(f"simulator {method} {path} failed: {exc!r}") from exc
        if response.status_code == 400:
            raise GatewayRequestRejected(_error_message(response))
        if response.status_code != 200:
            raise GatewayUnavailable(f"simulator {path} answered {response.status_code}")
        return response.json()

    def health(self) -> dict[str, Any]:
        return dict(self._json("GET", "/v1/health"))

    def faults(self) -> Faults:
        return Faults.from_dict(self._json("GET", "/v1/admin/faults"))

    def set_faults(self, **patch: Any) -> Faults:
        """Change some knobs (see tally.gateway.faults); returns all of them."""
        Faults().merged(patch)  # refuse bad knobs here, with the same message as the server
        return Faults.from_dict(self._json("POST", "/v1/admin/faults", json=patch))

    def iter_records(self) -> Iterator[Record]:
        after = 0
        for _ in range(EXPORT_RECORDS_MAX // PAGE_MAX + 1):
            page = self._json("GET", "/v1/records", params={"after_seq": after, "limit": PAGE_MAX})
            yield from (Record.from_json_dict(r) for r in page["records"])
            if not page["has_more"]:
                return
            after = int(page["next_after_seq"])
        raise GatewayProtocolError(f"more than {EXPORT_RECORDS_MAX} records: refusing to walk")

    def records(self) -> list[Record]:
        return list(self.iter_records())
