"""A front: one address for a node, the route (and its faults) picked by the client's source
address. Real sockets from real source addresses (each "data center" a loopback address), a real
redis-server behind it."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tally.errors import UsageError
from tally.ops.faultproxy import FrontSpec, LinkSpec, ProxyHub
from tally.ops.node import RedisNode

DC2, DC3 = "127.0.2.1", "127.0.3.1"


@pytest.fixture
def front(redis_node: RedisNode) -> Iterator[tuple[ProxyHub, tuple[str, int]]]:
    routes = ("dc1-to-r1", "dc2-to-r1", "dc3-to-r1")
    links = [LinkSpec(name, "127.0.0.1", redis_node.port, listen=False) for name in routes]
    spec = FrontSpec("r1", default="dc1-to-r1", routes={DC2: "dc2-to-r1", DC3: "dc3-to-r1"})
    with ProxyHub(links) as hub:
        yield hub, hub.add_front(spec)


class _Client:
    """A RESP client whose connection leaves from ``source`` (as a process bound to it would)."""

    def __init__(self, source: str, address: tuple[str, int], timeout_s: float = 2.0) -> None:
        self.source, self.address, self.timeout_s = source, address, timeout_s
        self.sock: socket.socket | None = None

    def ping(self) -> bool:
        if self.sock is None:
            self.sock = socket.create_connection(
                self.address, self.timeout_s, source_address=(self.source, 0)
            )
        self.sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        reply = self.sock.recv(64)
        if not reply:
            raise ConnectionError("closed by the peer")
        return reply == b"+PONG\r\n"

    def __enter__(self) -> _Client:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sock is not None:
            self.sock.close()


def test_each_source_address_takes_its_own_route(front: tuple[ProxyHub, tuple[str, int]]) -> None:
    hub, address = front
    for source in ("127.0.0.1", DC2, DC3):
        with _Client(source, address) as client:
            assert client.ping()
    accepted = hub.fronts()["r1"]["accepted"]
    assert accepted == {"dc1-to-r1": 1, "dc2-to-r1": 1, "dc3-to-r1": 1}
    assert hub.status_of("dc2-to-r1")["listen"] is None  # a route: no listener of its own


def test_a_drop_partition_on_one_route_holds_only_that_source(
    front: tuple[ProxyHub, tuple[str, int]],
) -> None:
    hub, address = front
    hub.set_fault("dc2-to-r1", "both", "partition", mode="drop")
    with _Client(DC3, address) as dc3, _Client("127.0.0.1", address) as dc1:
        assert dc3.ping() and dc1.ping()
    with _Client(DC2, address, timeout_s=0.5) as dc2:
        with pytest.raises(TimeoutError):
            dc2.ping()
        hub.clear("dc2-to-r1")
        with _Client(DC2, address) as healed:
            assert healed.ping()


def test_a_refuse_partition_resets_that_source_at_once_and_clears(
    front: tuple[ProxyHub, tuple[str, int]],
) -> None:
    hub, address = front
    with _Client(DC3, address) as dc3:
        assert dc3.ping()
        hub.set_fault("dc3-to-r1", "both", "partition", mode="refuse")
        started = time.monotonic()
        with pytest.raises(OSError):
            dc3.ping()  # the open connection is closed
    with _Client(DC3, address) as fresh, pytest.raises(OSError):
        fresh.ping()  # a new one is reset
    assert time.monotonic() - started < 1.5  # refused, not held until the socket timeout
    with _Client(DC2, address) as dc2:
        assert dc2.ping()  # another route of the same front is untouched
    assert hub.stats("dc3-to-r1")["connections_rejected"] >= 1
    hub.clear("dc3-to-r1", "partition")
    with _Client(DC3, address) as again:
        assert again.ping()


def test_latency_applies_per_route(front: tuple[ProxyHub, tuple[str, int]]) -> None:
    hub, address = front
    hub.set_fault("dc2-to-r1", "both", "latency", latency_ms=150, jitter_ms=0)
    with _Client(DC2, address) as dc2, _Client(DC3, address) as dc3:
        dc2.ping(), dc3.ping()
        started = time.monotonic()
        dc2.ping()
        assert time.monotonic() - started >= 0.3  # 150 ms each way
        assert hub.status_of("dc3-to-r1")["faults"] == {"upstream": {}, "downstream": {}}


def test_a_front_refuses_routes_that_do_not_exist_or_have_their_own_listener(
    redis_node: RedisNode,
) -> None:
    with ProxyHub([LinkSpec("plain", "127.0.0.1", redis_node.port)]) as hub:
        with pytest.raises(UsageError, match="no link named"):
            hub.add_front(FrontSpec("f", default="missing"))
        with pytest.raises(UsageError, match="own listener"):
            hub.add_front(FrontSpec("f", default="plain"))
    with pytest.raises(UsageError, match="loopback"):
        FrontSpec("f", default="x", routes={"10.0.0.1": "x"})


def test_a_client_of_a_removed_route_is_reset_not_passed(
    front: tuple[ProxyHub, tuple[str, int]],
) -> None:
    hub, address = front
    hub.remove_link("dc2-to-r1")
    with _Client(DC2, address) as dc2, pytest.raises(OSError):
        dc2.ping()
