"""uvicorn's httptools protocol, with a response's head and body leaving in one write.

uvicorn writes a response as two ``transport.write`` calls (the status line and headers, then
the body). With uvloop each is a ``send`` syscall right away when the socket buffer is empty:
two syscalls, two TCP segments, and the client woken twice, per ~100-byte debit reply. The
profile of a worker at 64 in flight (README, HTTP) had the head write alone at ~24% of the
worker's samples.

``OneWriteHttpTools`` gives uvicorn's protocol a transport that collects the writes made in one
turn of the event loop and sends them as one write at the end of that turn (``call_soon``:
no timer, nothing waits for company; a response's head and body are written in the same turn
because uvicorn's ``send`` does not suspend between them). ``close`` and a protocol switch send
what was collected first; ``abort`` drops it, as the transport's own ``abort`` would.

``HTTP_IMPLS`` maps ``--http`` to what ``uvicorn.Config(http=...)`` takes:
``httptools`` (this, the default), ``httptools-split`` (uvicorn's own, two writes: the control
for the benchmark) and ``h11``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _OneWriteTransport:
    """Delegates to the real transport; ``write`` collects until the end of the loop turn."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()
        self._transport.set_protocol(protocol)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteHttpTools(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrapped: Any = _OneWriteTransport(transport, asyncio.get_running_loop())
        super().connection_made(wrapped)


HTTP_IMPLS: dict[str, Any] = {
    "httptools": OneWriteHttpTools,
    "httptools-split": "httptools",
    "h11": "h11",
}


def http_impl(name: str) -> Any:
    """What ``uvicorn.Config(http=...)`` takes for ``--http NAME``."""
    return HTTP_IMPLS[name]
