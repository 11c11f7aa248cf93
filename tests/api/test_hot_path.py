"""The hot debit path in process (``TallyApp`` + ``api.hot``): it answers before the middleware
stack yet keeps what the stack did for it: the metrics, the body bound, a 500 problem for a bug;
everything else still passes through every middleware."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from tally.api import ApiContext
from tally.api.app import create_app
from tally.api.context import Readiness
from tally.api.hot import HOT_BODY_BYTES_MAX, HotDebits
from tally.billing.engine import Engine
from tally.domain.results import Result
from tally.domain.transfers import TransferResult
from tally.ledger.sql_api_keys import ApiKeyStore
from tally.ledger.sql_ledger import SqlLedger
from tally.store.fake import FakeStore


class Seen:
    """A middleware that records the paths it saw (the outer stack's stand-in)."""

    def __init__(self, app: ASGIApp, seen: list[str]) -> None:
        self.app, self.seen = app, seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append(scope["path"])
        await self.app(scope, receive, send)


class Client:
    """httpx over ASGI on one loop of its own (starlette's TestClient wants httpx2)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.runner = asyncio.Runner()
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://tally.test",
            headers={"Authorization": f"Bearer {key}"},
        )

    def get(self, path: str) -> httpx.Response:
        return self.runner.run(self.http.get(path))

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.runner.run(self.http.post(path, **kw))

    def close(self) -> None:
        self.runner.run(self.http.aclose())
        self.runner.close()


class Api:
    def __init__(self, tmp_path: Path) -> None:
        self.ledger = SqlLedger.open(f"sqlite:///{tmp_path / 'l.sqlite3'}")
        self.debits: list[tuple[Any, ...]] = []
        self.fail_with: Exception | None = None
        keys = ApiKeyStore(self.ledger)
        self.context = ApiContext(
            engine=Engine(FakeStore(), self.ledger),
            ledger=self.ledger,
            keys=keys,
            readiness=lambda: Readiness(True, None, {}),
            admin=None,  # type: ignore[arg-type]
            async_debit=self.debit,
        )
        self.app = create_app(self.context)
        self.seen: list[str] = []
        self.app.add_middleware(Seen, seen=self.seen)
        assert isinstance(self.app.hot, HotDebits)
        self.hot: HotDebits = self.app.hot
        self.key = keys.create("service").key
        self.client = Client(self.app, self.key)

    async def debit(self, *args: Any) -> TransferResult:
        if self.fail_with is not None:
            raise self.fail_with
        self.debits.append(args)
        return TransferResult(args[0], Result.ok, 900)

    def warm_key(self) -> None:
        """Any authenticated request on the full path verifies and caches the key."""
        assert self.client.get("/v1/accounts/nobody").status_code == 404

    def metric(self, name: str) -> float:
        for line in self.client.get("/metrics").text.splitlines():
            if line.split(" ")[0] == name:
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    one = Api(tmp_path)
    try:
        yield one
    finally:
        one.client.close()
        one.ledger.close()


DEBIT = {"transfer_id": "d1", "account_id": "alice", "amount_minor": 100}
OK_COUNT = 'tally_api_operations_total{operation="debit",result="ok"}'
LATENCY_COUNT = 'tally_api_request_duration_seconds_count{operation="debit"}'


def test_a_hot_debit_skips_the_middleware_stack_and_is_still_counted(api: Api) -> None:
    """Seen failing before: the hot layer was a middleware inside the stack, so ``Seen`` (and
    Starlette's ServerErrorMiddleware, FastAPI's telemetry wrapper...) ran for every debit; and
    with the metrics left to ``MetricsMiddleware`` a hot debit was not counted (0.0)."""
    api.warm_key()
    api.seen.clear()
    reply = api.client.post("/v1/debits", json=DEBIT)
    assert reply.status_code == 201, reply.text
    assert reply.json()["balance_minor"] == 900
    assert api.hot.hot == 1 and api.seen == []
    assert api.metric(OK_COUNT) == 1.0
    assert api.metric(LATENCY_COUNT) == 1.0


def test_a_debit_with_an_unknown_key_goes_through_every_middleware(api: Api) -> None:
    reply = api.client.post("/v1/debits", json=DEBIT)  # key not cached yet: the full path
    assert reply.status_code == 201
    assert api.hot.passed == 1 and api.seen == ["/v1/debits"]


def test_a_body_without_a_small_content_length_takes_the_full_path_and_its_bound(
    api: Api,
) -> None:
    """The hot layer is outside the body-limit middleware now: a big body must not be read by
    it, and the API's 413 must still come from the full path."""
    api.warm_key()
    big = {**DEBIT, "transfer_id": "x" * 10, "pad": "p" * (HOT_BODY_BYTES_MAX + 10)}
    reply = api.client.post("/v1/debits", json=big)
    assert api.hot.hot == 0 and api.hot.passed == 1
    assert reply.status_code == 400  # the full path's validation: "pad" is not a field
    huge = b'{"transfer_id": "' + b"x" * 2_000_000 + b'"}'
    reply = api.client.post(
        "/v1/debits", content=huge, headers={"Content-Type": "application/json"}
    )
    assert (reply.status_code, reply.json()["code"]) == (413, "body_too_large")
    assert api.debits == []


def test_a_bug_in_the_hot_path_is_a_500_problem_counted_as_internal_error(api: Api) -> None:
    api.warm_key()
    api.fail_with = RuntimeError("boom")
    reply = api.client.post("/v1/debits", json=DEBIT)
    assert reply.status_code == 500
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.json()["code"] == "internal_error" and "boom" not in reply.text
    assert (
        api.metric('tally_api_operations_total{operation="debit",result="internal_error"}') == 1.0
    )


def test_a_well_formed_batch_is_parsed_once_and_skips_the_stack(api: Api) -> None:
    """Seen failing before: the batch went through every middleware and FastAPI's own body
    parsing (``Seen`` saw it, ``hot`` stayed 0)."""
    api.warm_key()
    api.seen.clear()
    debits = [{**DEBIT, "transfer_id": f"b{i}"} for i in range(3)]
    reply = api.client.post("/v1/debits/batch", json={"debits": debits})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert [r["transfer_id"] for r in body["results"]] == ["b0", "b1", "b2"]
    assert (body["ok"], body["refused"]) == (0, 3)  # no such account in the store
    assert api.hot.hot == 1 and api.seen == []
    assert api.metric('tally_api_operations_total{operation="debit_batch",result="partial"}') == 1


def test_a_batch_with_one_bad_item_takes_the_full_path_and_its_400(api: Api) -> None:
    api.warm_key()
    debits = [DEBIT, {**DEBIT, "transfer_id": "b1", "amount_minor": "5"}]
    reply = api.client.post("/v1/debits/batch", json={"debits": debits})
    assert (reply.status_code, reply.json()["code"]) == (400, "invalid_request")
    assert reply.json()["errors"][0]["loc"] == ["body", "debits", "1", "amount_minor"]
    assert api.hot.hot == 0 and api.hot.passed == 1
