"""``POST /v1/debits`` without FastAPI's per-request machinery, for the common case only.

Profiled under load (py-spy, 64 in flight): routing, dependency solving and response-model
handling took about 60% of the event loop per single debit, the debit itself a few percent.
This ASGI layer sits inside the metrics and body-limit middlewares and answers the one hot route
when the request is plainly well-formed: a JSON body, a key already verified (the key cache),
a body the same ``DebitIn`` model accepts, an ``Idempotency-Key`` equal to the transfer id or
absent. Anything else (no key, an unknown key, bad JSON, a validation error, another content
type) goes, untouched and with its body replayed, to the FastAPI app, which decides exactly as
it always did. The reply (status, body, ``Idempotent-Replayed``, problem+json) is built by the
route module's own functions, so the two paths cannot drift apart.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tally.api import problems
from tally.api.auth import KeyCache
from tally.api.context import ApiContext
from tally.api.routes import transfers
from tally.api.schemas import DebitIn
from tally.errors import TallyError

PATH = "/v1/debits"
#: Bodies larger than this take the full path (a debit is ~100 bytes).
HOT_BODY_BYTES_MAX = 4096


class HotDebits:
    def __init__(self, app: ASGIApp, context: ApiContext, cache: KeyCache, route: Any) -> None:
        self.app, self.context, self.cache, self.route = app, context, cache, route
        self.hot = 0
        self.passed = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != PATH
            or scope["method"] != "POST"
            or self.context.async_debit is None
        ):
            await self.app(scope, receive, send)
            return
        body, more = await _read(receive)
        body_in = None if more else self._admit(scope, body)
        if body_in is None:
            self.passed += 1
            await self.app(scope, _replay(body, more, receive), send)
            return
        self.hot += 1
        await self._debit(scope, receive, send, body_in)

    def _admit(self, scope: Scope, body: bytes) -> DebitIn | None:
        key, content_type, idempotency_key = None, None, None
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
        if not key or content_type != b"application/json" or len(body) > HOT_BODY_BYTES_MAX:
            return None
        found = self.cache.get(hashlib.sha256(key.encode("utf-8", "replace")).hexdigest())
        if found is None:  # unknown or expired: the full path verifies (and caches) it
            return None
        try:
            body_in = DebitIn.model_validate_json(body)
        except ValidationError:
            return None
        if idempotency_key is not None and idempotency_key != body_in.transfer_id:
            return None
        scope.setdefault("state", {})["api_key_id"] = found.key_id
        return body_in

    async def _debit(self, scope: Scope, receive: Receive, send: Send, body: DebitIn) -> None:
        scope["route"] = self.route  # the metrics name the operation by it
        request = Request(scope, receive)
        assert self.context.async_debit is not None
        try:
            r = await self.context.async_debit(
                body.transfer_id,
                body.account_id,
                body.amount_minor,
                body.currency or "",
                body.occurred_at_ms,
            )
        except TallyError as exc:
            response = await problems.on_tally_error(request, exc)
        else:
            out = transfers.out("debit", body, r.result, r.balance_minor)
            response = transfers.respond(request, out, r.result, r.replayed)
        await response(scope, receive, send)


async def _read(receive: Receive) -> tuple[bytes, list[Message]]:
    """The body when it came whole in one message (the usual case for a small POST); else the
    messages read so far, to replay to the full path."""
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        return message.get("body", b""), []
    return b"", [message]


def _replay(body: bytes, read: list[Message], receive: Receive) -> Receive:
    pending = list(read) or [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
