"""Bounding request bodies before anything parses them: 413 on a declared Content-Length above
the cap, and on a chunked body the moment it crosses the cap."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tally.api.problems import PROBLEM, TYPE_BASE


class BodyTooLarge(HTTPException):
    """An HTTPException, so FastAPI's body reader passes it through as 413 (not 400)."""

    def __init__(self, cap: int) -> None:
        super().__init__(413, f"request bodies are limited to {cap} bytes")


def _problem_bytes(cap: int) -> bytes:
    return json.dumps(
        {
            "type": TYPE_BASE + "body_too_large",
            "title": "body too large",
            "status": 413,
            "code": "body_too_large",
            "detail": f"request bodies are limited to {cap} bytes",
        }
    ).encode()


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, body_bytes_max: int) -> None:
        self.app, self.cap = app, body_bytes_max

    async def _refuse(self, scope: Scope, send: Send) -> None:
        scope.setdefault("state", {})["tally_result"] = "body_too_large"
        body = _problem_bytes(self.cap)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", PROBLEM.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.cap):
                await self._refuse(scope, send)
                return
        seen = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.cap:
                    raise BodyTooLarge(self.cap)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(scope, send)
