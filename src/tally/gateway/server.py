"""The payment gateway simulator: a Stripe-like JSON API over HTTP on loopback, backed by a
durable SQLite record store in its data dir (the bank's own truth, independent of tally).

    POST /v1/charges               Idempotency-Key; {card, amount_minor, currency, metadata?}
    GET  /v1/charges/by-key/{key}  the charge made under a key, or 404
    POST /v1/refunds               Idempotency-Key; {charge, amount_minor}
    GET  /v1/records               ?after_seq=N&limit=M: every charge/refund processed, oldest first
    GET  /v1/admin/faults          the fault knobs (tally.gateway.faults)
    POST /v1/admin/faults          change some knobs: {"latency_ms": 50, ...}
    GET  /v1/health

Answers: 200 processed and succeeded, 402 processed and declined (both carry the record),
``Idempotent-Replayed: true`` when answered from the first request's record, 400 malformed,
409 key reused with other parameters, 413 body too large, 503 outage (nothing processed).
Health, records and admin stay up during an outage so it can be ended. A gateway that refuses
connections is ``SimulatorProcess.stop()`` (``start()`` reuses the port); a hung one is ``pause()``.

The stack is uvicorn (h11) + a bare Starlette router, on one event loop: a request's key check
and its insert run without an ``await`` between them, so concurrent requests with one key cannot
both be processed. Each record is committed (``synchronous=FULL``) before the answer is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from tally.errors import UsageError
from tally.gateway.bank import Bank, ChargeRequest, Processed, RefundRequest
from tally.gateway.errors import IdempotencyConflict
from tally.gateway.faults import Faults
from tally.gateway.records import PAGE_MAX, RecordStore

BODY_BYTES_MAX = 16 * 1024
CONCURRENCY_MAX = 128
BACKLOG = 256
KEEP_ALIVE_S = 5
GRACEFUL_SHUTDOWN_S = 2
HEADER_BYTES_MAX = 16 * 1024
READY_FILENAME = "simulator.json"
LOG_FILENAME = "simulator.log"

Endpoint = Callable[[Request], Awaitable[Response]]


class HttpProblem(Exception):
    def __init__(self, status: int, kind: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.kind, self.extra = status, kind, extra


def error_response(status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, **extra}}, status_code=status)


class DroppedResponse(Response):
    """Sends the status line and headers, then closes the connection without the body: the
    outcome is committed but the client never reads it (uvicorn closes an incomplete response)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )


def handled(endpoint: Endpoint) -> Endpoint:
    async def wrapper(request: Request) -> Response:
        try:
            return await endpoint(request)
        except HttpProblem as exc:
            return error_response(exc.status, exc.kind, str(exc), **exc.extra)
        except IdempotencyConflict as exc:
            return error_response(
                409, "idempotency_error", exc.args[0], hint=exc.hint, fields=list(exc.fields)
            )
        except UsageError as exc:
            return error_response(400, "invalid_request_error", exc.args[0], hint=exc.hint)

    return wrapper


async def read_json(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > BODY_BYTES_MAX:
        raise HttpProblem(413, "invalid_request_error", f"body over {BODY_BYTES_MAX} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > BODY_BYTES_MAX:
            raise HttpProblem(413, "invalid_request_error", f"body over {BODY_BYTES_MAX} bytes")
    try:
        data = json.loads(body or b"{}")
    except ValueError as exc:
        raise HttpProblem(400, "invalid_request_error", f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise HttpProblem(400, "invalid_request_error", "body must be a JSON object")
    return data


def only_fields(data: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise HttpProblem(400, "invalid_request_error", f"unknown parameters {unknown}")


def idempotency_key(request: Request) -> str:
    key = request.headers.get("idempotency-key")
    if not key:
        raise HttpProblem(400, "invalid_request_error", "the Idempotency-Key header is required")
    return key


def record_body(done: Processed) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {
        "object": done.record.kind,
        **done.record.to_json_dict(),
        "replayed": done.replayed,
    }
    if done.record.status == "succeeded":
        return 200, body
    code = done.record.reason or "declined"
    body["error"] = {"type": "card_error", "code": code, "message": f"declined: {code}"}
    return 402, body


class Simulator:
    """The HTTP face of one ``Bank``."""

    def __init__(self, bank: Bank) -> None:
        self.bank = bank

    def routes(self) -> list[Route]:
        return [
            Route("/v1/health", handled(self.health), methods=["GET"]),
            Route("/v1/charges", handled(self.charge), methods=["POST"]),
            Route("/v1/charges/by-key/{key}", handled(self.lookup), methods=["GET"]),
            Route("/v1/refunds", handled(self.refund), methods=["POST"]),
            Route("/v1/records", handled(self.records), methods=["GET"]),
            Route("/v1/admin/faults", handled(self.get_faults), methods=["GET"]),
            Route("/v1/admin/faults", handled(self.set_faults), methods=["POST"]),
        ]

    def app(self) -> Router:
        return Router(routes=self.routes())

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True, "pid": os.getpid()})

    async def charge(self, request: Request) -> Response:
        self._refuse_in_outage()
        key = idempotency_key(request)
        data = await read_json(request)
        only_fields(data, {"card", "amount_minor", "currency", "metadata"})
        req = ChargeRequest(
            key, data.get("card"), data.get("amount_minor"), data.get("currency"),  # type: ignore[arg-type]
            data.get("metadata"),  # type: ignore[arg-type]
        )  # fmt: skip
        await self._latency()
        return await self._answer(self.bank.charge(req))

    async def refund(self, request: Request) -> Response:
        self._refuse_in_outage()
        key = idempotency_key(request)
        data = await read_json(request)
        only_fields(data, {"charge", "amount_minor"})
        req = RefundRequest(key, data.get("charge"), data.get("amount_minor"))  # type: ignore[arg-type]
        await self._latency()
        return await self._answer(self.bank.refund(req))

    async def lookup(self, request: Request) -> Response:
        self._refuse_in_outage()
        record = self.bank.lookup(request.path_params["key"])
        if record is None:
            raise HttpProblem(404, "invalid_request_error", "no charge with this idempotency key")
        return JSONResponse({"object": "charge", **record.to_json_dict()})

    async def records(self, request: Request) -> Response:
        after = _int_param(request, "after_seq", 0)
        limit = min(_int_param(request, "limit", PAGE_MAX), PAGE_MAX)
        page = self.bank.store.page(after, limit)
        return JSONResponse(
            {
                "records": [r.to_json_dict() for r in page],
                "next_after_seq": page[-1].seq if page else after,
                "has_more": len(page) == limit,
            }
        )

    async def get_faults(self, request: Request) -> Response:
        return JSONResponse(self.bank.faults.to_dict())

    async def set_faults(self, request: Request) -> Response:
        self.bank.set_faults(self.bank.faults.merged(await read_json(request)))
        return JSONResponse(self.bank.faults.to_dict())

    def _refuse_in_outage(self) -> None:
        if self.bank.faults.outage:
            raise HttpProblem(503, "api_error", "the payment gateway is down (simulated outage)")

    async def _latency(self) -> None:
        if self.bank.faults.latency_ms:
            await asyncio.sleep(self.bank.faults.latency_ms / 1000)

    async def _answer(self, done: Processed) -> Response:
        status, body = record_body(done)
        headers = {"Idempotent-Replayed": "true" if done.replayed else "false"}
        if done.lose_response == "drop":
            return DroppedResponse(json.dumps(body), status_code=status, headers=headers)
        if done.lose_response == "delay":
            await asyncio.sleep(self.bank.faults.timeout_delay_ms / 1000)
        return JSONResponse(body, status_code=status, headers=headers)


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 18:
        raise HttpProblem(400, "invalid_request_error", f"{name} must be a non-negative integer")
    return int(raw)


# -- process entry point ---------------------------------------------------------------------
def check_loopback(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise UsageError(f"host must be a loopback IP address, got {host!r:.60}") from exc
    if not address.is_loopback:
        raise UsageError(f"the simulator binds loopback only, not {host}")
    return host


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc}") from exc
    return sock


def write_ready_file(data_dir: Path, host: str, port: int) -> Path:
    """Tell whoever started us which port we got (``--port 0`` lets the kernel choose)."""
    url_host = f"[{host}]" if ":" in host else host
    info = {"pid": os.getpid(), "host": host, "port": port, "url": f"http://{url_host}:{port}"}
    path = data_dir / READY_FILENAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)
    return path


def uvicorn_config(app: Router, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, http="h11", loop="asyncio", lifespan="off",
        limit_concurrency=CONCURRENCY_MAX, backlog=BACKLOG, timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        h11_max_incomplete_event_size=HEADER_BYTES_MAX, access_log=False, log_level="warning",
        proxy_headers=False, server_header=False,
    )  # fmt: skip


def serve(host: str, port: int, data_dir: Path, faults: Faults | None = None) -> None:
    """Run the simulator in this process until SIGTERM/SIGINT."""
    check_loopback(host)
    data_dir = Path(data_dir)
    store = RecordStore.in_dir(data_dir)
    sock = bind_socket(host, port)
    try:
        bound_port = int(sock.getsockname()[1])
        ready = write_ready_file(data_dir, host, bound_port)
        app = Simulator(Bank(store, faults)).app()
        uvicorn.Server(uvicorn_config(app, host, bound_port)).run(sockets=[sock])
        ready.unlink(missing_ok=True)
    finally:
        sock.close()
        store.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m tally.gateway.server``: what ``SimulatorProcess`` runs (the CLI is
    ``tally gateway serve``)."""
    parser = argparse.ArgumentParser(prog="tally.gateway.server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--faults-json", default="{}")
    args = parser.parse_args(argv)
    faults = Faults.from_dict(json.loads(args.faults_json))
    serve(args.host, args.port, args.data_dir, faults)


if __name__ == "__main__":
    main()
