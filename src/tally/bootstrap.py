"""The composition root: the one place that builds real adapters and wires them together."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tally.billing import recharge
from tally.billing.engine import Engine
from tally.billing.recharge import (
    Circuit,
    ClusterHealth,
    FollowingHealth,
    HealthBounds,
    Recharging,
    RedisHealth,
)
from tally.billing.recharge.saga import Fault
from tally.config import Settings
from tally.errors import ConfigError, LedgerNotInitialised
from tally.gateway.port import Gateway
from tally.ledger.sql_ledger import SqlLedger
from tally.store.cluster_store import ClusterStore, replicated_primaries
from tally.store.discovery import (
    CLUSTER_SCHEME,
    PrimaryLocator,
    SentinelTarget,
    SwitchMaster,
    SwitchMasterListener,
    cluster_client,
    parse_cluster_target,
    parse_target,
)
from tally.store.keys import KeyLayout
from tally.store.redis_store import RedisStore
from tally.sync.cluster_drain import ClusterDrainer
from tally.sync.cluster_init import init_cluster_store
from tally.sync.drainer import Drainer
from tally.sync.rebuild import RebuildReport, init_store


def redis_client(url: str, settings: Settings) -> redis.Redis:
    """Explicit timeouts and NO retries: redis-py's defaults retry, and a billing engine must
    see every failure and decide itself (the scripts are idempotent; the caller retries).
    A ``sentinel://`` URL gives the primary its Sentinels name, role checked (one-shot uses:
    init, the start-up epoch check; the engine keeps a locator to follow failovers)."""
    if url.startswith("sentinel://"):
        return primary_locator(url, settings).client()
    try:
        return redis.Redis.from_url(
            url,
            socket_timeout=settings.redis_socket_timeout_ms / 1000,
            socket_connect_timeout=settings.redis_connect_timeout_ms / 1000,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            max_connections=settings.redis_pool_max,
        )
    except ValueError as exc:
        raise ConfigError(f"bad Redis URL: {exc}", hint="use redis://host:port/db") from exc


@dataclass
class Deployment:
    settings: Settings
    ledger: SqlLedger
    store: RedisStore | ClusterStore
    layout: KeyLayout
    engine: Engine
    #: With a Sentinel URL: the locator the store follows failovers with (it knows how many
    #: replicas the Sentinels report, the drainer's automatic fence); None otherwise.
    locator: PrimaryLocator | None = None

    @property
    def client(self) -> redis.Redis:
        """The current primary's client (it changes after a Sentinel failover). On a Redis
        Cluster: redis-py's ``RedisCluster`` (drain, reconcile and rebuild take their cluster
        paths: ``sync.shard_rebuild.rebuild_store``; ``is_cluster`` tells)."""
        return self.store.client

    @property
    def is_cluster(self) -> bool:
        return isinstance(self.store, ClusterStore)

    def drainer(self, **options: Any) -> Drainer:
        """A drainer with this deployment's replica fence (``Settings.drain_replicas``), so
        nothing only the primary holds is settled; ``options`` go to ``Drainer``."""
        options.setdefault("fence_timeout_ms", self.settings.drain_fence_timeout_ms)
        options.setdefault("workers", self.settings.drain_workers)
        if isinstance(self.store, ClusterStore):
            if "replicas" not in options:  # auto: every replica of each primary (node table)
                options["replicas"] = self.settings.drain_replicas or 0
                options["per_primary"] = self.settings.drain_replicas is None
            return ClusterDrainer(self.store.client, self.layout, self.ledger, **options)
        options.setdefault("replicas", self.drain_fence())
        return Drainer(self.client, self.layout, self.ledger, **options)

    def drain_fence(self) -> int:
        """Replicas the drainer waits for before settling (not on a Redis Cluster): with a
        Sentinel URL, every replica the Sentinels know of unless set (read again each round by
        ``service.workers.DrainService``: the count can change with the topology)."""
        if self.locator is not None:
            return self.settings.drain_replicas_on_sentinel(known=self.locator.replicas_known)
        return self.settings.drain_replicas_effective

    def watch_failovers(
        self, on_event: Callable[[SwitchMaster], None]
    ) -> SwitchMasterListener | None:
        """With a Sentinel URL: a started listener that records every ``+switch-master`` and
        calls ``on_event`` once per failover (the caller stops it). None without Sentinel."""
        target = parse_target(self.settings.require_redis_url())
        if not isinstance(target, SentinelTarget):
            return None
        return SwitchMasterListener(target, on_event=on_event).start()

    def close(self) -> None:
        if isinstance(self.store, ClusterStore):
            self.store.close()  # its workers too
        else:
            self.client.close()
        self.ledger.close()

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def primary_locator(url: str, settings: Settings) -> PrimaryLocator:
    return PrimaryLocator(
        parse_target(url),
        socket_timeout_s=settings.redis_socket_timeout_ms / 1000,
        connect_timeout_s=settings.redis_connect_timeout_ms / 1000,
    )


def open_deployment(settings: Settings) -> Deployment:
    ledger = SqlLedger.open(settings.ledger_url)
    try:
        epoch = ledger.current_epoch()
        if epoch is None:
            raise LedgerNotInitialised(
                f"the ledger at {_safe(settings.ledger_url)} has no epoch yet"
            )
        url = settings.require_redis_url()
        layout = KeyLayout(epoch.namespace, epoch.shards)
        if url.startswith(CLUSTER_SCHEME):
            store: RedisStore | ClusterStore = cluster_store(url, settings, layout, epoch.epoch_id)
            view = ledger.epoch_view()  # a shard rebuilt alone starts at its own epoch
            if view is not None and view.epoch.epoch_id == epoch.epoch_id:
                store.set_epoch(epoch.epoch_id, view.overrides)
            return Deployment(settings, ledger, store, layout, Engine(store, ledger))
        rediscover, primary_moved, locator = None, None, None
        if url.startswith("sentinel://"):
            locator = primary_locator(url, settings)
            client, rediscover = locator.client(), locator.rediscover
            primary_moved = locator.primary_moved
        else:
            client = redis_client(url, settings)
        store = RedisStore(
            client,
            layout,
            epoch.epoch_id,
            wait_replicas=settings.wait_replicas_effective,
            wait_timeout_ms=settings.wait_timeout_ms,
            rediscover=rediscover,
            primary_moved=primary_moved,
            idempotency_window_ms=settings.idempotency_window_ms,
        )
    except BaseException:
        ledger.close()
        raise
    return Deployment(settings, ledger, store, layout, Engine(store, ledger), locator)


def cluster_store(url: str, settings: Settings, layout: KeyLayout, epoch_id: str) -> ClusterStore:
    """The store over a Redis Cluster (``redis+cluster://``), with the settings' timeouts, pool
    bound, durability (``WAIT`` per shard: automatic is 1 when the cluster has replicas) and
    idempotency window."""
    client = cluster_client(
        parse_cluster_target(url),
        socket_timeout_s=settings.redis_socket_timeout_ms / 1000,
        connect_timeout_s=settings.redis_connect_timeout_ms / 1000,
        max_connections=settings.redis_pool_max,
    )
    try:
        # auto: 1 when the cluster has replicas (config.Settings.wait_replicas_on_cluster)
        wait = (
            settings.wait_replicas
            if settings.wait_replicas is not None
            else settings.wait_replicas_on_cluster(replicated=replicated_primaries(client) > 0)
        )
    except BaseException:
        client.close()
        raise
    return ClusterStore(
        client,
        layout,
        epoch_id,
        wait_replicas=wait,
        wait_timeout_ms=settings.wait_timeout_ms,
        idempotency_window_ms=settings.idempotency_window_ms,
    )


def initialise_store(settings: Settings, layout: KeyLayout, ledger: SqlLedger) -> RebuildReport:
    """``tally init``: the first epoch on an empty store, a single primary or a Redis Cluster."""
    url = settings.require_redis_url()
    if url.startswith(CLUSTER_SCHEME):
        store = cluster_store(url, settings, layout, "")
        try:
            return init_cluster_store(store.cluster, layout, ledger)
        finally:
            store.close()
    client = redis_client(url, settings)
    try:
        return init_store(client, layout, ledger)
    finally:
        client.close()


def _safe(url: str) -> str:
    """A URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def recharging(
    dep: Deployment,
    gateway: Gateway,
    *,
    circuit: Circuit | None = None,
    bounds: HealthBounds | None = None,
    older_than_ms: int = 0,
    fault: Fault | None = None,
) -> Recharging:
    """The recharge machinery of a deployment (saga, completer, service, gate with its circuit
    and a health probe), built here and only here: ``tally serve``, the CLI and the lab wire it
    the same way. The probe asks the store's CURRENT client, so after a Sentinel failover the
    gate sees the new primary (it used to keep the client it was built with)."""
    health: recharge.HealthProbe
    if isinstance(dep.store, ClusterStore):  # per shard: one shard's trouble is its own
        health = ClusterHealth(
            dep.store.cluster,
            dep.layout,
            dep.ledger,
            bounds,
            replicas_needed=dep.store.wait_replicas,  # decided when the store opened
        )
    else:
        health = FollowingHealth(lambda: RedisHealth(dep.client, dep.layout, dep.ledger, bounds))
    return recharge.build(
        dep.engine,
        gateway,
        health,
        circuit=circuit,
        fault=fault,
        older_than_ms=older_than_ms,
    )
