"""A front: one listener shared by several routes, each client served by the route of its
source address.

Why: Redis Sentinel keys an instance by its address (``is-master-down-by-addr``, hello messages,
the replica lists in ``INFO``), so every process must know a node by one and the same address.
A per-link listener gives a node one address per data center and the Sentinels never agree. A
front gives a node ONE address for everyone, while the path still depends on where the client
is: each data center's processes bind their own loopback address (127.0.k.1, so their outgoing
connections carry it as source address), and the front hands a connection from 127.0.k.1 to the
route "dc k -> this node" with that route's faults. Sources it does not know (the operator's
tools, clients that cannot choose a source address) take the ``default`` route.

A route is a :class:`~tally.ops.faultproxy.link.Link` made with ``listen=False``: faults, stats
and limits work exactly as on a link with its own listener, except that ``partition
mode=refuse`` cannot close a shared listener: the route's clients are accepted and reset at once
(a connection reset instead of ECONNREFUSED; Redis retries both the same way).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tally.errors import UsageError
from tally.ops.faultproxy.link import (
    Link,
    ProxyLimits,
    _is_loopback,
    _rst_on_close,
    close_listener,
    open_listener,
)

ROUTES_MAX = 64


@dataclass(frozen=True)
class FrontSpec:
    """``routes``: source address -> route (link) name; ``default``: the route for any other
    source address."""

    name: str
    default: str
    routes: Mapping[str, str] = field(default_factory=dict)
    listen_host: str = "127.0.0.1"
    listen_port: int = 0

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 64 or "/" in self.name:
            raise UsageError(f"front name must be 1-64 characters without '/': {self.name!r}")
        if not _is_loopback(self.listen_host):
            raise UsageError(f"the proxy listens on loopback only, not {self.listen_host!r}")
        if not 0 <= self.listen_port <= 65535:
            raise UsageError(f"port out of range: {self.listen_port}")
        if len(self.routes) > ROUTES_MAX:
            raise UsageError(f"a front has at most {ROUTES_MAX} routes")
        for source in self.routes:
            if not _is_loopback(source):
                raise UsageError(f"route sources are loopback addresses, not {source!r}")

    def route_names(self) -> set[str]:
        return {self.default, *self.routes.values()}


class Front:
    """The asyncio side of one front. ``lookup`` finds a route (a listener-less link) by name
    when a client arrives, so a route removed later is noticed, not served."""

    def __init__(
        self,
        spec: FrontSpec,
        lookup: Callable[[str], Link],
        buffer_bytes: int = ProxyLimits.socket_buffer_bytes,
    ) -> None:
        self.spec, self._lookup, self._buffer_bytes = spec, lookup, buffer_bytes
        self.port = spec.listen_port
        self.accepted: dict[str, int] = {}
        self._server: asyncio.Server | None = None

    async def open(self) -> None:
        self._server, self.port = await open_listener(
            f"front {self.spec.name}",
            self.spec.listen_host,
            self.port,
            self._on_accept,
            self._buffer_bytes,
        )

    async def close(self) -> None:
        await close_listener(self._server)
        self._server = None

    def route_for(self, source: str) -> str:
        return self.spec.routes.get(source, self.spec.default)

    async def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        route = self.route_for(str(peer[0]) if peer else "")
        try:
            link = self._lookup(route)
        except UsageError:
            _rst_on_close(writer)  # the route is gone: nothing may pass unfaulted
            writer.transport.abort()
            return
        self.accepted[route] = self.accepted.get(route, 0) + 1
        await link.accept(reader, writer)

    def status(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "listen": [self.spec.listen_host, self.port],
            "routes": dict(self.spec.routes),
            "default": self.spec.default,
            "accepted": dict(self.accepted),
        }
