"""Events fixtures: the recharge helpers (one wiring, from the composition root), a fake gateway,
the outbox read back, and a test receiver: a real HTTP server on loopback that verifies every
webhook's signature with the same ``standardwebhooks`` library a consumer would use."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tally.gateway import FakeGateway
from tally.ledger import sql_outbox
from tally.ledger.sql_ledger import SqlLedger
from tally.ledger.sql_outbox import StoredEvent


@pytest.fixture
def fake_gateway() -> Iterator[FakeGateway]:
    gw = FakeGateway()
    yield gw
    gw.close()


def outbox(ledger: SqlLedger, type_: str | None = None) -> list[StoredEvent]:
    with ledger.transaction() as conn:
        found = sql_outbox.events_after(conn, 0, sql_outbox.PAGE_MAX)
    return [e for e in found if type_ is None or e.type == type_]


STALL_S_MAX = 60


@dataclass
class Receiver:
    """Answers ``status_for(n)`` to the n-th request (0-based); records every request whose
    signature verified (``received``) and every one that did not (``rejected``)."""

    secret: str = ""
    status_for: Callable[[int], int] = lambda _n: 200
    received: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    requests: int = 0
    #: The request with this index is recorded, then not answered until ``release`` is set
    #: (``stalled`` says it arrived): the sender is blocked mid-request, e.g. to be killed.
    stall_at: int | None = None
    stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def ids(self) -> list[str]:
        with self.lock:
            return [r["headers"]["webhook-id"] for r in self.received]

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            n = self.requests
            self.requests += 1
        try:
            event = Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError as exc:
            with self.lock:
                self.rejected.append(str(exc))
            return 400
        status = self.status_for(n)
        with self.lock:
            self.received.append(
                {"headers": headers, "event": event, "status": status, "body": body}
            )
        if n == self.stall_at:
            self.stalled.set()
            self.release.wait(STALL_S_MAX)
        return status


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            status = receiver.handle(headers, body)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            return

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(r))
    thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield r
    finally:
        r.release.set()
        r.server.shutdown()
        r.server.server_close()
        thread.join(10)


def data_of(event: StoredEvent) -> dict[str, Any]:
    return json.loads(event.data)  # type: ignore[no-any-return]


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[SqlLedger]:
    opened = SqlLedger.open(ledger_url)
    try:
        yield opened
    finally:
        opened.close()
