"""uvicorn's httptools protocol, with a response's head and body leaving in one write.

uvicorn writes a response as two ``transport.write`` calls (the status line and headers, then
the body). With uvloop each is a ``send`` syscall right away when the socket buffer is empty:
two syscalls, two TCP segments, and the client woken twice, per ~100-byte debit reply. The
profile of a worker at 64 in flight (README, HTTP) had the head write alone at ~24% of the
worker's samples.

``OneWriteHttpTools`` gives uvicorn's protocol a transport that holds a write until the next
one and sends the two as one write at once (a response's head and body come in the same turn
of the loop: uvicorn's ``send`` does not suspend between them); a write left alone (a streamed
head, a ``100 Continue``) leaves at the end of that turn (``call_soon``: no timer). ``close``
and a protocol switch send what is held first; ``abort`` drops it, as the transport's own would.

Measured (README, HTTP): holding every write to the end of the turn was worse for tally at 64
in flight, as one coalesced batch resolves 64 requests in one turn and their replies then all
waited for the last of them; holding only the head until its body sends each reply as soon
as it is complete.

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
        if not self._pending:  # held until the next write, or the end of this loop turn
            self._pending.append(bytes(data))
            self._loop.call_soon(self.flush)
            return
        self._pending.append(bytes(data))  # the body after a held head: both leave now
        self.flush()

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
