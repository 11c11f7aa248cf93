"""``POST /v1/debits`` without FastAPI's per-request machinery, for the common case only.

Profiled under load (py-spy, 64 in flight): routing, dependency solving and response-model
handling took about 60% of the event loop per single debit, the debit itself a few percent;
then (with this layer inside them) the outer middlewares took about a fifth of the busy time
per debit: Starlette's ``ServerErrorMiddleware``, FastAPI's exception-telemetry (an environment
read per request) and body-limit wrappers, tally's body-limit and metrics middlewares. So
``TallyApp`` (the FastAPI app) hands the hot route to this layer before any of them, and it does
itself what they would do for it: the body bound (a ``Content-Length`` of at most
``HOT_BODY_BYTES_MAX``, far under the API's cap), the operations and latency metrics
(``ApiMetrics.record``, as ``MetricsMiddleware`` records), and the 500 problem for a bug.

It answers when the request is plainly well-formed: a JSON body, a key already verified (the
key cache), a body the same ``DebitIn`` model accepts, an ``Idempotency-Key`` equal to the
transfer id or absent. Anything else (no key, an unknown key, bad JSON, a validation error,
another content type, a body without a small ``Content-Length``) goes, untouched and with its
body replayed, to the FastAPI app and its middlewares, which decide exactly as they always did.
The reply (status, body, ``Idempotent-Replayed``, problem+json) is built by the route module's
own functions, so the two paths cannot drift apart.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tally.api import problems
from tally.api.auth import KeyCache
from tally.api.context import ApiContext
from tally.api.metrics import ApiMetrics
from tally.api.routes import transfers
from tally.api.schemas import BatchIn, DebitIn
from tally.errors import TallyError

log = logging.getLogger("tally.api")

PATH = "/v1/debits"
BATCH_PATH = "/v1/debits/batch"
#: Bodies larger than this take the full path (a debit is ~100 bytes).
HOT_BODY_BYTES_MAX = 4096


class HotDebits:
    """``app``: the full path (the FastAPI app's own ``__call__``, middlewares and all)."""

    def __init__(
        self,
        app: ASGIApp,
        context: ApiContext,
        cache: KeyCache,
        route: Any,
        metrics: ApiMetrics,
        batch_route: Any = None,
    ) -> None:
        self.app, self.context, self.cache, self.route = app, context, cache, route
        self.batch_route = batch_route
        self.metrics = metrics
        self.hot = 0
        self.passed = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if scope["path"] == PATH and self.context.async_debit is not None:
            bound = HOT_BODY_BYTES_MAX
        elif scope["path"] == BATCH_PATH and self.batch_route is not None:
            bound = self.context.body_bytes_max  # the API's own cap, as the full path has it
        else:
            await self.app(scope, receive, send)
            return
        found = self._headers(scope, bound)
        if found is None:  # untouched: nothing read yet
            self.passed += 1
            await self.app(scope, receive, send)
            return
        key_id, idempotency_key = found
        started = time.perf_counter()
        body, more = await _read(receive, bound)
        if scope["path"] == PATH:
            body_in = None if more else self._body(body, idempotency_key)
            if body_in is not None:
                self._admitted(scope, key_id)
                await self._debit(scope, receive, send, body_in, started)
                return
        else:
            batch_in = None if more else _batch(body)
            if batch_in is not None:
                self._admitted(scope, key_id)
                await self._batch(scope, receive, send, batch_in, started)
                return
        self.passed += 1
        await self.app(scope, _replay(body, more, receive), send)

    def _admitted(self, scope: Scope, key_id: str) -> None:
        self.hot += 1
        scope.setdefault("state", {})["api_key_id"] = key_id

    def _headers(self, scope: Scope, bound: int) -> tuple[str, str | None] | None:
        """(the cached key's id, the Idempotency-Key) when the headers qualify, else None."""
        key, content_type, idempotency_key, length = None, None, None, None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    key = credentials.strip()
            elif name == b"x-api-key" and key is None:
                key = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value
            elif name == b"idempotency-key":
                idempotency_key = value.decode("latin-1")
            elif name == b"content-length":
                length = value
        if (
            not key
            or content_type != b"application/json"
            or length is None
            or not length.isdigit()
            or int(length) > bound
        ):
            return None
        found = self.cache.get(hashlib.sha256(key.encode("utf-8", "replace")).hexdigest())
        if found is None:  # unknown or expired: the full path verifies (and caches) it
            return None
        return found.key_id, idempotency_key

    def _body(self, body: bytes, idempotency_key: str | None) -> DebitIn | None:
        if len(body) > HOT_BODY_BYTES_MAX:
            return None
        try:
            body_in = DebitIn.model_validate_json(body)
        except ValidationError:
            return None
        if idempotency_key is not None and idempotency_key != body_in.transfer_id:
            return None
        return body_in

    async def _debit(
        self, scope: Scope, receive: Receive, send: Send, body: DebitIn, started: float
    ) -> None:
        scope["route"] = self.route  # the metrics name the operation by it
        request = Request(scope, receive)
        assert self.context.async_debit is not None
        response: Response
        try:
            r = await self.context.async_debit(
                body.transfer_id,
                body.account_id,
                body.amount_minor,
                body.currency or "",
                body.occurred_at_ms,
            )
        except Exception as exc:
            response = await _failed(request, exc)
        else:
            out = transfers.out("debit", body, r.result, r.balance_minor)
            response = transfers.respond(request, out, r.result, r.replayed)
        await self._answer(scope, receive, send, response, started)

    async def _batch(
        self, scope: Scope, receive: Receive, send: Send, body: BatchIn, started: float
    ) -> None:
        scope["route"] = self.batch_route
        request = Request(scope, receive)
        response: Response
        try:
            response = await transfers.batch(request, body)
        except Exception as exc:
            response = await _failed(request, exc)
        await self._answer(scope, receive, send, response, started)

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, response: Response, started: float
    ) -> None:
        status = 500
        try:
            status = response.status_code
            await response(scope, receive, send)
        finally:
            self.metrics.record(scope, status, started)


async def _failed(request: Request, exc: Exception) -> Response:
    """What the app's exception handlers answer: a TallyError's problem, else (a bug) the 500
    problem that ServerErrorMiddleware and ``on_unexpected`` give."""
    if isinstance(exc, TallyError):
        try:
            return await problems.on_tally_error(request, exc)
        except Exception as unknown:  # a TallyError of no known kind: a bug
            exc = unknown
    log.error("unexpected error in %s", request.url.path, exc_info=exc)
    return await problems.on_unexpected(request, exc)


#: Body messages read at most before the hot path gives up and replays them to the full path
#: (uvicorn hands over what arrived since the last read: a 1 MB body is a few messages).
READS_MAX = 1024


def _batch(body: bytes) -> BatchIn | None:
    """The batch body parsed and validated in one step (pydantic's own JSON parser: measured
    ~1.6x faster than FastAPI's ``json.loads`` then validation, for 1,000 debits)."""
    try:
        return BatchIn.model_validate_json(body)
    except ValidationError:
        return None


async def _read(receive: Receive, bound: int) -> tuple[bytes, list[Message]]:
    """The whole body (its ``Content-Length`` was checked at most ``bound``; uvicorn delivers
    a small one in one message, a large one or another server's in several), or, when it did
    not complete within READS_MAX messages and ``bound`` bytes, the messages read so far, to
    replay to the full path."""
    read: list[Message] = []
    size = 0
    for _ in range(READS_MAX):
        message = await receive()
        read.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if size > bound:
            break
        if not message.get("more_body", False):
            return b"".join(m.get("body", b"") for m in read), []
    return b"", read


def _replay(body: bytes, read: list[Message], receive: Receive) -> Receive:
    pending = list(read) or [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
