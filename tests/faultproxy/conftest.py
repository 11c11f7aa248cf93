"""A proxy hub in front of a real redis-server, and helpers to talk through it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tally.ops.faultproxy import LinkSpec, ProxyHub
from tally.ops.node import RedisNode

LINK = "dc1-dc2"


@pytest.fixture
def hub(redis_node: RedisNode) -> Iterator[ProxyHub]:
    """One link, ``dc1-dc2``, in front of ``redis_node``; stopped after the test."""
    with ProxyHub([LinkSpec(LINK, "127.0.0.1", redis_node.port)]) as running:
        yield running


def client_via(hub: ProxyHub, link: str = LINK, timeout_s: float = 5.0) -> redis.Redis:
    host, port = hub.address(link)
    return redis.Redis(
        host=host,
        port=port,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


@pytest.fixture
def via(hub: ProxyHub) -> Iterator[Callable[..., redis.Redis]]:
    """Makes clients that connect through the link; closes them after the test."""
    made: list[redis.Redis] = []

    def make(timeout_s: float = 5.0) -> redis.Redis:
        made.append(client_via(hub, timeout_s=timeout_s))
        return made[-1]

    yield make
    for client in made:
        client.close()
