"""Each fault, in each direction, against a real redis-server behind the proxy.

The timing checks are lower bounds that follow from a fault's meaning (a 200 ms link cannot answer
sooner than 200 ms); none of them is a performance assertion.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
import redis

from tally.errors import UsageError
from tally.ops.faultproxy import LinkSpec, ProxyHub, ProxyLimits, make_fault
from tally.ops.node import RedisNode
from tests.waiting import wait_for

from .conftest import LINK

LATENCY_MS = 200


def _ping_s(client: redis.Redis) -> float:
    start = time.monotonic()
    assert client.ping()
    return time.monotonic() - start


@pytest.mark.parametrize(("direction", "trips"), [("upstream", 1), ("downstream", 1), ("both", 2)])
def test_latency_delays_a_ping_by_at_least_the_latency_per_direction(
    hub: ProxyHub, via: Callable[..., redis.Redis], direction: str, trips: int
) -> None:
    client = via()
    client.ping()
    hub.set_fault(LINK, direction, "latency", latency_ms=LATENCY_MS, jitter_ms=0)
    assert _ping_s(client) >= trips * LATENCY_MS / 1000
    hub.clear(LINK)
    assert hub.status_of(LINK)["faults"] == {"upstream": {}, "downstream": {}}


def test_latency_with_jitter_never_goes_below_latency_minus_jitter(
    hub: ProxyHub, via: Callable[..., redis.Redis]
) -> None:
    client = via()
    hub.set_fault(LINK, "downstream", "latency", latency_ms=150, jitter_ms=50)
    assert min(_ping_s(client) for _ in range(5)) >= 0.1


def test_upstream_drop_holds_a_write_and_delivers_it_when_cleared(
    hub: ProxyHub, via: Callable[..., redis.Redis], redis_node: RedisNode
) -> None:
    client, direct = via(timeout_s=0.5), redis_node.client()
    client.ping()
    hub.set_fault(LINK, "upstream", "partition", mode="drop")
    with pytest.raises(redis.TimeoutError):
        client.set("k", "v")
    assert direct.get("k") is None  # the server never saw it
    hub.clear(LINK, "partition", "upstream")
    wait_for(lambda: direct.get("k") == b"v", what="held write delivered")


def test_downstream_drop_applies_the_write_but_loses_the_reply(
    hub: ProxyHub, via: Callable[..., redis.Redis], redis_node: RedisNode
) -> None:
    client, direct = via(timeout_s=0.5), redis_node.client()
    client.ping()
    hub.set_fault(LINK, "downstream", "partition", mode="drop")
    with pytest.raises(redis.TimeoutError):
        client.set("k", "v")
    assert direct.get("k") == b"v"  # an unknown outcome for the client: it was applied


def test_drop_both_ways_makes_a_new_client_time_out_until_cleared(
    hub: ProxyHub, via: Callable[..., redis.Redis]
) -> None:
    hub.set_fault(LINK, "both", "partition", mode="drop")
    with pytest.raises(redis.TimeoutError):
        via(timeout_s=0.5).ping()
    hub.clear(LINK)
    assert via().ping()


def test_refuse_makes_connect_fail_and_closes_live_connections(
    hub: ProxyHub, via: Callable[..., redis.Redis]
) -> None:
    live = via()
    live.ping()
    hub.set_fault(LINK, "both", "partition", mode="refuse")
    with pytest.raises(redis.ConnectionError, match="refused"):
        via().ping()
    with pytest.raises(redis.ConnectionError):
        live.ping()
    hub.clear(LINK)
    assert via().ping()


def _raw_connection(hub: ProxyHub) -> socket.socket:
    sock = socket.create_connection(hub.address(LINK), timeout=5)
    sock.sendall(b"PING\r\n")
    assert sock.recv(64) == b"+PONG\r\n"
    return sock


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(64) == b""
    except ConnectionResetError:
        return True


def _server_clients(node: RedisNode) -> int:
    return int(node.client().info("clients")["connected_clients"])


@pytest.mark.parametrize("direction", ["downstream", "both"])
def test_reset_sends_the_client_a_tcp_reset(
    hub: ProxyHub, redis_node: RedisNode, direction: str
) -> None:
    sock = _raw_connection(hub)
    hub.reset(LINK, direction)
    with sock, pytest.raises(ConnectionResetError):
        sock.recv(64)


def test_reset_upstream_closes_the_server_side_and_the_client_sees_eof(
    hub: ProxyHub, redis_node: RedisNode
) -> None:
    sock = _raw_connection(hub)
    before = _server_clients(redis_node)
    hub.reset(LINK, "upstream")
    with sock:
        assert sock.recv(64) == b""
    wait_for(lambda: _server_clients(redis_node) == before - 1, what="server saw the reset")
    assert hub.stats(LINK)["resets_total"] == 1


def test_reset_drops_a_live_redis_connection_once_and_new_ones_work(
    hub: ProxyHub, via: Callable[..., redis.Redis]
) -> None:
    live = via()
    first_id = live.client_id()
    hub.reset(LINK)
    # redis-py notices the dead idle connection and quietly opens a new one: a new client id
    # proves the old connection was dropped; the reset is not repeated for the new one.
    second_id = live.client_id()
    assert second_id != first_id
    assert live.client_id() == second_id


SIZE = 256 * 1024
RATE = 128 * 1024  # the transfer needs SIZE / RATE = 2 s on the capped link


def test_downstream_bandwidth_cap_slows_a_large_get(
    hub: ProxyHub, via: Callable[..., redis.Redis], redis_node: RedisNode
) -> None:
    redis_node.client().set("big", b"x" * SIZE)
    client = via(timeout_s=30)
    hub.set_fault(LINK, "downstream", "bandwidth", rate_bytes_s=RATE)
    start = time.monotonic()
    assert len(client.get("big") or b"") == SIZE
    assert time.monotonic() - start >= 0.9 * SIZE / RATE


def test_upstream_bandwidth_cap_slows_a_large_set(
    hub: ProxyHub, via: Callable[..., redis.Redis]
) -> None:
    client = via(timeout_s=30)
    hub.set_fault(LINK, "upstream", "bandwidth", rate_bytes_s=RATE)
    start = time.monotonic()
    client.set("big", b"x" * SIZE)
    assert time.monotonic() - start >= 0.9 * SIZE / RATE
    assert hub.stats(LINK)["bytes_upstream"] >= SIZE


def test_slow_close_passes_the_servers_close_on_late(hub: ProxyHub) -> None:
    hub.set_fault(LINK, "downstream", "slow_close", delay_ms=300)
    with socket.create_connection(hub.address(LINK), timeout=5) as sock:
        start = time.monotonic()
        sock.sendall(b"QUIT\r\n")
        assert sock.recv(64) == b"+OK\r\n"
        assert sock.recv(64) == b""
        assert time.monotonic() - start >= 0.3


def test_stats_count_bytes_per_direction_and_connections(
    hub: ProxyHub, via: Callable[..., redis.Redis]
) -> None:
    client = via()
    client.set("k", "v" * 1000)
    client.get("k")
    stats = hub.stats(LINK)
    assert stats["bytes_upstream"] > 1000 and stats["bytes_downstream"] > 1000
    assert stats["connections_open"] == 1 and stats["connections_total"] == 1


def test_connections_over_the_limit_are_closed_and_counted(redis_node: RedisNode) -> None:
    spec = LinkSpec(LINK, "127.0.0.1", redis_node.port)
    with ProxyHub([spec], limits=ProxyLimits(connections_max=1)) as hub:
        first = _raw_connection(hub)
        with first, socket.create_connection(hub.address(LINK), timeout=5) as second:
            second.sendall(b"PING\r\n")
            assert _closed_by_peer(second)
        wait_for(lambda: hub.stats(LINK)["connections_rejected"] == 1, what="rejection counted")


def test_a_stopped_hub_leaves_no_listener(redis_node: RedisNode) -> None:
    hub = ProxyHub([LinkSpec(LINK, "127.0.0.1", redis_node.port)]).start()
    address = hub.address(LINK)
    hub.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()


@pytest.mark.parametrize(
    ("kind", "direction", "params"),
    [
        ("flood", "both", {}),
        ("partition", "sideways", {}),
        ("partition", "upstream", {"mode": "refuse"}),
        ("partition", "both", {"mode": "maybe"}),
        ("latency", "both", {"latency_ms": 10, "jitter_ms": 20}),
        ("latency", "both", {}),
        ("bandwidth", "both", {"rate_bytes_s": 0}),
        ("reset", "both", {"extra": 1}),
    ],
)
def test_invalid_fault_requests_are_refused_with_a_reason(
    kind: str, direction: str, params: dict[str, object]
) -> None:
    with pytest.raises(UsageError):
        make_fault(kind, direction, **params)


def test_a_link_cannot_listen_beyond_loopback() -> None:
    with pytest.raises(UsageError, match="loopback"):
        LinkSpec("x", "127.0.0.1", 6380, listen_host="0.0.0.0")


def test_faults_on_an_unknown_link_name_the_known_links(hub: ProxyHub) -> None:
    with pytest.raises(UsageError, match=LINK):
        hub.set_fault("nowhere", "both", "reset")
