"""A response's head and body leave in one write (``OneWriteHttpTools``), on a real uvicorn
server over loopback; uvicorn's own protocol is the control (two writes). Keep-alive and
``Connection: close`` still deliver every byte."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tally.service.http_protocol import OneWriteHttpTools
from tally.service.http_workers import listening_socket

BODY = b'{"transfer_id":"t1","result":"ok"}'


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


WRITES: list[bytes] = []


class _Recorder:
    """The real transport, with every ``write`` recorded (what reaches the socket)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._t = transport

    def write(self, data: bytes) -> None:
        WRITES.append(bytes(data))
        self._t.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)


class RecordedOneWrite(OneWriteHttpTools):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Recorder(transport))  # type: ignore[arg-type]


class RecordedSplit(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Recorder(transport))  # type: ignore[arg-type]


def _serve(protocol: type) -> Iterator[int]:
    sock = listening_socket("127.0.0.1", 0)
    config = uvicorn.Config(app, http=protocol, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


def _exchange(port: int, requests: list[bytes]) -> bytes:
    """Send each request, read until the server closes (the last one says Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        for r in requests:
            c.sendall(r)
        chunks = []
        while chunk := c.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


REQUEST = b"POST /v1/debits HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"
LAST = b"POST /v1/debits HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}"


@pytest.mark.parametrize(
    ("protocol", "writes_per_response"), [(RecordedOneWrite, 1), (RecordedSplit, 2)]
)
def test_a_response_leaves_in_one_write_and_every_byte_arrives(
    protocol: type, writes_per_response: int
) -> None:
    WRITES.clear()
    for port in _serve(protocol):
        received = _exchange(port, [REQUEST, REQUEST, LAST])  # keep-alive, then close
    assert received.count(b"HTTP/1.1 201") == 3
    assert received.count(BODY) == 3, "every body arrived, the last before the close"
    assert len(WRITES) == 3 * writes_per_response, WRITES
    if writes_per_response == 1:
        assert all(w.startswith(b"HTTP/1.1 201") and w.endswith(BODY) for w in WRITES)


class _Sink:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False


def test_a_reply_leaves_when_its_body_is_written_not_at_the_end_of_the_turn() -> None:
    """64 replies resolved in one loop turn each leave as soon as complete (holding them all to
    the end of the turn made tally slower at 64 in flight); a lone write leaves at the turn's
    end."""
    from tally.service.http_protocol import _OneWriteTransport

    async def scenario() -> None:
        sink = _Sink()
        t = _OneWriteTransport(sink, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"HEAD1")
        t.write(b"BODY1")
        assert sink.writes == [b"HEAD1BODY1"], "sent at the body write, in this turn"
        t.write(b"HEAD2")
        assert sink.writes == [b"HEAD1BODY1"], "a head alone is held..."
        await asyncio.sleep(0)
        assert sink.writes == [b"HEAD1BODY1", b"HEAD2"], "...until the end of the turn"

    asyncio.run(scenario())
