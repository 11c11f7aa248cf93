"""One proxied link: a loopback listener, its connections, and the faults applied to them.

Runs inside an asyncio loop (the hub's). Each connection is four tasks: a reader and a writer per
direction joined by a bounded queue, so a slow or held side back-pressures the other through
``drain()`` and the kernel socket buffers instead of growing memory.

Every socket of the proxy (listeners, so their accepted connections, and the connection to the
upstream) has fixed kernel buffers (``ProxyLimits.socket_buffer_bytes``): with Linux's
autotuning (``tcp_rmem`` up to 32 MB here) a sender in front of a throttled link could push
6 MB into the proxy's receive buffer in 3 s, which no WAN path with a bottleneck takes in; a
primary's output buffer for a replica behind such a link then never grew and the lab's
output-buffer loop came and went with the kernel's mood (measured 2026-12-04).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from tally.errors import UsageError
from tally.ops.faultproxy.faults import Direction, DirectionFaults, Fault, FaultKind

UP, DOWN = Direction.UPSTREAM, Direction.DOWNSTREAM


@dataclass(frozen=True)
class LinkSpec:
    """A link: clients connect to ``listen_host:listen_port`` (0 = any free port), the proxy
    connects on to ``upstream_host:upstream_port``. ``listen=False``: a route with no listener
    of its own; its clients arrive through a front (:mod:`tally.ops.faultproxy.front`) that
    picks the route by their source address."""

    name: str
    upstream_host: str
    upstream_port: int
    listen_port: int = 0
    listen_host: str = "127.0.0.1"
    listen: bool = True

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 64 or "/" in self.name:
            raise UsageError(f"link name must be 1-64 characters without '/': {self.name!r}")
        if not _is_loopback(self.listen_host):
            raise UsageError(f"the proxy listens on loopback only, not {self.listen_host!r}")
        for port in (self.upstream_port, self.listen_port):
            if not 0 <= port <= 65535:
                raise UsageError(f"port out of range: {port}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ProxyLimits:
    connections_max: int = 256  # per link; more are closed at once and counted as rejected
    chunk_bytes: int = 16_384  # one read
    queue_chunks_max: int = 16  # per direction per connection: at most 256 KiB in flight
    connect_timeout_s: float = 5.0  # to the upstream
    hold_connect_s_max: float = 60.0  # a connection accepted during a drop partition waits so long
    drain_timeout_s: float = 600.0  # one write may wait this long for the peer to read
    # SO_RCVBUF and SO_SNDBUF of every proxy socket (Linux doubles it): with the queue above,
    # at most ~0.7 MB of a direction is between the sender's socket and the receiver's
    socket_buffer_bytes: int = 65_536


@dataclass
class LinkStats:
    bytes_upstream: int = 0
    bytes_downstream: int = 0
    connections_open: int = 0
    connections_total: int = 0
    connections_rejected: int = 0
    connect_failures: int = 0
    resets_total: int = 0

    def add(self, direction: Direction, count: int) -> None:
        if direction is UP:
            self.bytes_upstream += count
        else:
            self.bytes_downstream += count


def _retrieve(task: asyncio.Future[None]) -> None:
    """A peer going away is how connections end: the error is retrieved, not logged. (A task
    cancelled mid-drain can still finish with the peer's reset after ``run`` looked at it.)"""
    if not task.cancelled():
        task.exception()


def bounded_socket(family: int, buffer_bytes: int) -> socket.socket:
    """A non-blocking TCP socket whose kernel buffers are fixed before it connects or listens
    (the window scale is agreed at the handshake; accepted sockets inherit the listener's)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_bytes)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1448)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def open_listener(
    what: str,
    host: str,
    port: int,
    on_accept: Callable[..., Awaitable[None]],
    buffer_bytes: int = ProxyLimits.socket_buffer_bytes,
) -> tuple[asyncio.Server, int]:
    """A listener for a link or a front, and the port it got (``port`` 0 picks one)."""
    sock = None
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = bounded_socket(family, buffer_bytes)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        server = await asyncio.start_server(on_accept, sock=sock)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise UsageError(f"{what}: cannot listen on {host}:{port}: {exc}") from exc
    return server, int(server.sockets[0].getsockname()[1])


async def open_bounded_connection(
    host: str, port: int, buffer_bytes: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _, _, _, address = infos[0]
    sock = bounded_socket(family, buffer_bytes)
    try:
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def close_listener(server: asyncio.Server | None) -> None:
    if server is not None:
        server.close()
        await server.wait_closed()


def _rst_on_close(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Connection:
    def __init__(self, link: Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.link = link
        self.client = (reader, writer)
        self.server_writer: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        try:
            server_reader, self.server_writer = await self._connect()
        except (OSError, TimeoutError):
            self.link.stats.connect_failures += 1
            self.close()
            return
        client_reader, client_writer = self.client
        up: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(self.link.limits.queue_chunks_max)
        down: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(self.link.limits.queue_chunks_max)
        self.tasks = [
            asyncio.ensure_future(self.link.read_loop(client_reader, up)),
            asyncio.ensure_future(self.link.write_loop(up, self.server_writer, UP)),
            asyncio.ensure_future(self.link.read_loop(server_reader, down)),
            asyncio.ensure_future(self.link.write_loop(down, client_writer, DOWN)),
        ]
        for task in self.tasks:
            task.add_done_callback(_retrieve)
        try:
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            self.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # Like a SYN during a partition: nothing reaches the server until the link heals.
        limits, passable = self.link.limits, self.link.passable
        await asyncio.wait_for(
            asyncio.gather(passable[UP].wait(), passable[DOWN].wait()), limits.hold_connect_s_max
        )
        spec = self.link.spec
        return await asyncio.wait_for(
            open_bounded_connection(
                spec.upstream_host, spec.upstream_port, limits.socket_buffer_bytes
            ),
            limits.connect_timeout_s,
        )

    def reset(self, direction: Direction) -> None:
        sides = direction.expand()
        if DOWN in sides:
            _rst_on_close(self.client[1])
        if UP in sides and self.server_writer is not None:
            _rst_on_close(self.server_writer)
        self.close()

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for writer in (self.client[1], self.server_writer):
            if writer is not None:
                writer.transport.abort()  # no flush: the connection is over


class Link:
    """The asyncio side of one link. Every method runs on the hub's loop."""

    def __init__(self, spec: LinkSpec, limits: ProxyLimits) -> None:
        self.spec, self.limits = spec, limits
        self.port = spec.listen_port
        self.faults = {UP: DirectionFaults(), DOWN: DirectionFaults()}
        self.passable = {UP: asyncio.Event(), DOWN: asyncio.Event()}
        for event in self.passable.values():
            event.set()
        self.refusing = False
        self.stats = LinkStats()
        self.connections: set[_Connection] = set()
        self._bucket_next = {UP: 0.0, DOWN: 0.0}
        self._server: asyncio.Server | None = None

    # -- listener ------------------------------------------------------------------------------
    async def open(self) -> None:
        if not self.spec.listen:
            return  # a route: its front accepts for it
        self._server, self.port = await open_listener(
            f"link {self.spec.name}",
            self.spec.listen_host,
            self.port,
            self._on_accept,
            self.limits.socket_buffer_bytes,
        )

    async def _close_listener(self) -> None:
        await close_listener(self._server)
        self._server = None

    async def close(self) -> None:
        await self._close_listener()
        for conn in list(self.connections):
            conn.close()

    async def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.accept(reader, writer)

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one accepted client connection (from this link's listener or a front's)."""
        if self.refusing or len(self.connections) >= self.limits.connections_max:
            self.stats.connections_rejected += 1
            if self.refusing:
                _rst_on_close(writer)  # through a shared front: a reset stands for "refused"
            writer.transport.abort()
            return
        conn = _Connection(self, reader, writer)
        self.connections.add(conn)
        self.stats.connections_total += 1
        self.stats.connections_open += 1
        try:
            await conn.run()
        except asyncio.CancelledError:
            # The hub is stopping. This is the top of the handler task, and asyncio's stream
            # server would log a cancelled handler as an unhandled error.
            conn.close()
        finally:
            self.connections.discard(conn)
            self.stats.connections_open -= 1

    # -- faults --------------------------------------------------------------------------------
    async def set_fault(self, fault: Fault) -> None:
        if fault.kind is FaultKind.RESET:
            self.stats.resets_total += 1
            for conn in list(self.connections):
                conn.reset(fault.direction)
            return
        if fault.kind is FaultKind.PARTITION and fault.params["mode"] == "refuse":
            self.refusing = True
            await self._close_listener()
            for conn in list(self.connections):
                conn.close()
            return
        for direction in fault.direction.expand():
            fault.apply_to(self.faults[direction])
            if fault.kind is FaultKind.PARTITION:
                self.passable[direction].clear()

    async def clear(self, kind: FaultKind | None, direction: Direction) -> None:
        if kind in (None, FaultKind.PARTITION) and direction is Direction.BOTH and self.refusing:
            self.refusing = False
            await self.open()
        for one in direction.expand():
            self.faults[one].clear(kind)
            if not self.faults[one].held:
                self.passable[one].set()
            if self.faults[one].rate_bytes_s is None:
                self._bucket_next[one] = 0.0

    def status(self) -> dict[str, Any]:
        faults: dict[str, Any] = {d.value: self.faults[d].describe() for d in (UP, DOWN)}
        if self.refusing:
            faults["both"] = {"partition": {"mode": "refuse"}}
        return {
            "name": self.spec.name,
            "listen": [self.spec.listen_host, self.port] if self.spec.listen else None,
            "upstream": [self.spec.upstream_host, self.spec.upstream_port],
            "faults": faults,
            "stats": asdict(self.stats),
        }

    # -- the data path -------------------------------------------------------------------------
    async def read_loop(
        self, src: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:  # bounded by the connection: ends at EOF, error or cancel
            data = await src.read(self.limits.chunk_bytes)
            await queue.put((loop.time(), data))
            if not data:
                return

    async def write_loop(
        self,
        queue: asyncio.Queue[tuple[float, bytes]],
        dst: asyncio.StreamWriter,
        direction: Direction,
    ) -> None:
        loop, faults = asyncio.get_running_loop(), self.faults[direction]
        while True:  # bounded by the connection: ends at EOF, error or cancel
            arrived, data = await queue.get()
            await self.passable[direction].wait()  # drop partition: held, never lost
            delay_s = arrived + faults.delay_s() - loop.time()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            if not data:
                await asyncio.sleep(faults.slow_close_ms / 1000.0)
                if dst.can_write_eof():
                    dst.write_eof()
                return
            for piece in self._slices(direction, data):
                await self._throttle(direction, len(piece))
                # counted before the write: the peer may read it (and a reader of the stats look)
                # before the write returns, and the stats must never show less than it has seen
                self.stats.add(direction, len(piece))
                dst.write(piece)
                await asyncio.wait_for(dst.drain(), self.limits.drain_timeout_s)

    def _slices(self, direction: Direction, data: bytes) -> list[bytes]:
        rate = self.faults[direction].rate_bytes_s
        size = len(data) if rate is None else max(64, rate // 20)  # ~50 ms of the link each
        return [data[i : i + size] for i in range(0, len(data), size)]

    async def _throttle(self, direction: Direction, nbytes: int) -> None:
        rate = self.faults[direction].rate_bytes_s
        if rate is None:
            return
        now = asyncio.get_running_loop().time()
        done_at = max(now, self._bucket_next[direction]) + nbytes / rate
        self._bucket_next[direction] = done_at  # the link is shared by all its connections
        await asyncio.sleep(done_at - now)
