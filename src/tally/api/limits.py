"""Bounding request bodies before anything parses them: 413 on a declared Content-Length above
the cap, and on a chunked body the moment it crosses the cap; 415 on a body that is not declared
JSON (every body this API takes is JSON; without this FastAPI reads it as bytes and answers 400)."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tally.api.problems import PROBLEM, TYPE_BASE


class BodyTooLarge(HTTPException):
    """An HTTPException, so FastAPI's body reader passes it through as 413 (not 400)."""

    def __init__(self, cap: int) -> None:
        super().__init__(413, f"request bodies are limited to {cap} bytes")


async def _send_problem(scope: Scope, send: Send, status: int, code: str, detail: str) -> None:
    """Answer before the app runs; the connection is closed (the body may be unread)."""
    scope.setdefault("state", {})["tally_result"] = code
    body = json.dumps(
        {
            "type": TYPE_BASE + code,
            "title": code.replace("_", " "),
            "status": status,
            "code": code,
            "detail": detail,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


def _unsupported_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """A body is present (a non-zero length, or chunked) and not declared JSON."""
    found = dict(headers)
    length = found.get(b"content-length", b"0")
    has_body = b"transfer-encoding" in found or (length.isdigit() and int(length) > 0)
    return has_body and not _is_json(found.get(b"content-type", b""))


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, body_bytes_max: int) -> None:
        self.app, self.cap = app, body_bytes_max

    async def _refuse(self, scope: Scope, send: Send) -> None:
        detail = f"request bodies are limited to {self.cap} bytes"
        await _send_problem(scope, send, 413, "body_too_large", detail)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        for name, value in headers:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.cap):
                await self._refuse(scope, send)
                return
        if _unsupported_body(headers):
            detail = "request bodies are JSON: send Content-Type: application/json"
            await _send_problem(scope, send, 415, "unsupported_media_type", detail)
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
