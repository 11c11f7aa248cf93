"""How the engine finds the Redis primary: a plain URL, or Sentinel.

Every client made here has explicit socket timeouts and NO retries (redis-py's defaults retry):
a failure reaches the caller at once, and the caller decides (``rediscover()`` after READONLY).

    target = parse_target("redis://:pw@127.0.0.1:6380/0")
    target = parse_target("sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/tally")
    target = parse_target("redis+cluster://:pw@127.0.0.1:7000,127.0.0.1:7001")  # ClusterTarget
    client = cluster_client(target)    # redis-py's RedisCluster, bounded timeouts and retries
    locator = PrimaryLocator(target)
    client = locator.client()          # the current primary, role checked
    ...                                # a write answers READONLY: the primary was demoted
    client = locator.rediscover()      # ask Sentinel again (raises StoreReadOnly if no primary)

    listener = SwitchMasterListener(sentinel_spec, on_event=...).start()  # +switch-master
    listener.events     # [SwitchMaster(at_s, sentinel, master_name, old, new)], each Sentinel's
    listener.failovers  # distinct failovers (on_event is called once for each)
    listener.stop()
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from tally.errors import ConfigError, StoreReadOnly, StoreUnavailable

SOCKET_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 1.0
MOVED_CHECK_INTERVAL_S = 0.5  # at most one "has the primary moved?" round per this long
SENTINELS_MAX = 16
EVENTS_MAX = 10_000
EVENTS_SCAN = 64  # recent events compared when telling a new failover from another announcement
SAME_FAILOVER_S = 60.0

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    password: str | None = None  # the data nodes' password
    sentinel_password: str | None = None  # Sentinels' own (None: they have none)
    db: int = 0

    def __post_init__(self) -> None:
        if not 1 <= len(self.sentinels) <= SENTINELS_MAX:
            raise ConfigError(f"give 1..{SENTINELS_MAX} Sentinel addresses")


CLUSTER_SCHEME = "redis+cluster://"
CLUSTER_STARTUP_NODES_MAX = 64
#: MOVED/ASK/TRYAGAIN rounds redis-py's RedisCluster may follow for one command (the store's
#: script calls follow their own, equally bounded: store.cluster_store.REDIRECT_ROUNDS)
CLUSTER_REDIRECTS_MAX = 3


@dataclass(frozen=True, slots=True)
class ClusterTarget:
    """A Redis Cluster, known by some of its nodes (redis-py learns the rest: CLUSTER SLOTS)."""

    startup_nodes: tuple[tuple[str, int], ...]
    password: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.startup_nodes) <= CLUSTER_STARTUP_NODES_MAX:
            raise ConfigError(f"give 1..{CLUSTER_STARTUP_NODES_MAX} cluster node addresses")


Target = str | SentinelTarget | ClusterTarget


def _addresses(hosts: str, text: str, what: str) -> list[tuple[str, int]]:
    addresses = []
    for one in hosts.split(","):
        host, _, port = one.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"bad {what} address {one!r} in {text!r}", hint="use host:port")
        addresses.append((host, int(port)))
    return addresses


def parse_cluster_target(text: str) -> ClusterTarget:
    """``redis+cluster://[:password@]host:port[,host:port...]`` (no path: a cluster has db 0)."""
    parts = urlsplit(text)
    auth, _, hosts = parts.netloc.rpartition("@")
    password = unquote(auth.partition(":")[2]) or None if auth else None
    if not hosts:
        raise ConfigError(f"{text!r} names no cluster node", hint="redis+cluster://h:p,h:p")
    if parts.path.strip("/") or parts.query:
        raise ConfigError(
            f"{text!r}: a cluster URL has no database or options", hint="redis+cluster://h:p,h:p"
        )
    return ClusterTarget(tuple(_addresses(hosts, text, "cluster node")), password=password)


def cluster_client(
    target: ClusterTarget,
    *,
    socket_timeout_s: float = SOCKET_TIMEOUT_S,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    max_connections: int = 64,
) -> RedisCluster:
    """redis-py's cluster client with explicit timeouts and bounded redirects and retries: no
    unbounded defaults. The store's script calls do not go through its command retries (they
    use their own pipelines, ``store.cluster_store``, where a broken connection is unknown)."""
    from redis.cluster import ClusterNode as _Node

    node: Any = _Node
    try:
        return RedisCluster(
            startup_nodes=[node(h, p) for h, p in target.startup_nodes],
            password=target.password,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            health_check_interval=0,
            max_connections=max_connections,
            retry=Retry(NoBackoff(), CLUSTER_REDIRECTS_MAX),
            require_full_coverage=False,
            dynamic_startup_nodes=False,
        )
    except (redis.RedisError, RedisClusterException) as exc:
        raise StoreUnavailable(f"no cluster node answered: {exc}") from exc


def parse_target(text: str) -> Target:
    """``redis://...`` stays a URL; ``sentinel://[:pw@]h:p,h:p/master[/db]`` a Sentinel target;
    ``redis+cluster://[:pw@]h:p[,h:p...]`` a Redis Cluster."""
    if text.startswith(CLUSTER_SCHEME):
        return parse_cluster_target(text)
    if not text.startswith("sentinel://"):
        if not text.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                f"not a Redis URL: {text!r}",
                hint="use redis://host:port/db, sentinel://host:port,host:port/master or "
                "redis+cluster://host:port,host:port",
            )
        return text
    parts = urlsplit(text)
    auth, _, hosts = parts.netloc.rpartition("@")
    password = unquote(auth.partition(":")[2]) or None if auth else None
    path = [p for p in parts.path.split("/") if p]
    if not path or not hosts:
        raise ConfigError(f"{text!r} names no master", hint="sentinel://h:p,h:p/MASTER")
    addresses = _addresses(hosts, text, "Sentinel")
    db = int(path[1]) if len(path) > 1 and path[1].isdigit() else 0
    return SentinelTarget(tuple(addresses), path[0], password=password, db=db)


def _options(socket_timeout_s: float, connect_timeout_s: float) -> dict[str, object]:
    return {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": connect_timeout_s,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }


class PrimaryLocator:
    """Finds the current primary and hands out a client for it."""

    def __init__(
        self,
        target: Target,
        *,
        socket_timeout_s: float = SOCKET_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        if isinstance(target, ClusterTarget):
            raise ConfigError(
                "a Redis Cluster has no single primary", hint="use discovery.cluster_client"
            )
        self.target: str | SentinelTarget = target
        self._options = _options(socket_timeout_s, connect_timeout_s)
        self._client: redis.Redis | None = None
        self.address: tuple[str, int] | None = None
        #: Replicas the Sentinels know of the primary (``num-slaves``: connected or not, the
        #: most any Sentinel reports), from the last time they were asked; None before that or
        #: for a plain URL. The drainer's automatic fence waits for all of them.
        self.replicas_known: int | None = None
        self._moved_checked_at = float("-inf")
        self._moved_lock = threading.Lock()

    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = self._discover()
        return self._client

    def rediscover(self) -> redis.Redis:
        """After READONLY or a lost connection: close the old client, find the primary again."""
        self.close()
        return self.client()

    def primary_moved(self) -> bool:
        """Whether the Sentinels name another primary than the one in use. Rate-limited (one
        round per ``MOVED_CHECK_INTERVAL_S``; False in between), False for a plain URL or when
        no Sentinel answers: a hint to reconnect, never a reason to fail."""
        if isinstance(self.target, str) or self.address is None:
            return False
        with self._moved_lock:
            now = time.monotonic()
            if now - self._moved_checked_at < MOVED_CHECK_INTERVAL_S:
                return False
            self._moved_checked_at = now
        try:
            named = self._ask_sentinels(self.target)
        except StoreUnavailable:
            return False
        return named != self.address

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(redis.RedisError):
                self._client.close()
        self._client = None

    def _discover(self) -> redis.Redis:
        if isinstance(self.target, str):
            client: redis.Redis = redis.Redis.from_url(self.target, **self._options)
            kwargs = client.connection_pool.connection_kwargs
            self.address = (str(kwargs.get("host")), int(kwargs.get("port", 6379)))
            return client
        self.address = self._ask_sentinels(self.target)
        client = redis.Redis(
            host=self.address[0],
            port=self.address[1],
            db=self.target.db,
            password=self.target.password,
            **self._options,  # type: ignore[arg-type]
        )
        _check_is_primary(client, self.address)
        return client

    def _ask_sentinels(self, target: SentinelTarget) -> tuple[str, int]:
        """Every Sentinel at once (each bounded by the client's timeouts), then
        ``choose_primary`` over the answers: not simply the first that answers."""
        with ThreadPoolExecutor(len(target.sentinels), thread_name_prefix="sentinel-ask") as pool:
            replies = list(pool.map(lambda hp: self._ask_one(target, *hp), target.sentinels))
        answers = [r for r in replies if isinstance(r, SentinelAnswer)]
        errors = [r for r in replies if isinstance(r, str)]
        chosen = choose_primary(answers, errors)
        self.replicas_known = max(a.replicas_known for a in answers)
        return chosen

    def _ask_one(self, target: SentinelTarget, host: str, port: int) -> SentinelAnswer | str:
        sentinel = redis.Redis(
            host=host,
            port=port,
            password=target.sentinel_password,
            **self._options,  # type: ignore[arg-type]
        )
        try:
            with contextlib.closing(sentinel):
                named = _execute(
                    sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", target.master_name
                )
                state = _execute(sentinel, "SENTINEL", "MASTER", target.master_name)
        except (redis.RedisError, OSError) as exc:
            return f"{host}:{port}: {exc}"
        if not named:
            return f"{host}:{port}: does not know {target.master_name!r}"
        return SentinelAnswer.parse(f"{host}:{port}", named, state)


@dataclass(frozen=True, slots=True)
class SentinelAnswer:
    """One Sentinel's view: the address it names (``GET-MASTER-ADDR-BY-NAME``: during its own
    failover, once the promotion is confirmed, the promoted replica), the primary its config
    holds, its flags for that primary and its config epoch."""

    sentinel: str
    named: tuple[str, int]
    configured: tuple[str, int]
    flags: frozenset[str]
    config_epoch: int
    #: ``num-slaves``: every replica this Sentinel knows of the primary, connected or not
    replicas_known: int = 0

    @property
    def failing_over(self) -> bool:
        return "failover_in_progress" in self.flags

    @classmethod
    def parse(cls, sentinel: str, named: Any, state: Any) -> SentinelAnswer:
        if isinstance(state, dict):
            fields = {_text(k): v for k, v in state.items()}
        else:
            fields = {_text(k): v for k, v in zip(state[::2], state[1::2], strict=True)}
        address = (_text(named[0]), int(named[1]))
        configured = (_text(fields.get("ip", address[0])), int(fields.get("port", address[1])))
        flags = frozenset(_text(fields.get("flags", b"")).split(","))
        return cls(sentinel, address, configured, flags, int(fields.get("config-epoch", 0)),
                   int(fields.get("num-slaves", 0)))  # fmt: skip


def choose_primary(answers: list[SentinelAnswer], errors: list[str]) -> tuple[str, int]:
    """The primary to use, from the Sentinels that answered:

    * a Sentinel that is failing over the primary and has not confirmed a promotion yet (it
      still names the old primary) means the old one is on its way out: no primary now
      (``StoreUnavailable``; the caller retries). An old primary restarted in that window
      answers ROLE master, and a replica that still follows it can acknowledge writes the
      failover then discards (seen in the lab: chaos seed 2, r1 killed and started again while
      Sentinel promoted r3);
    * otherwise the newest view: the highest config epoch (a failover raises it; a Sentinel that
      was cut off during one still names the old primary with the old epoch), a confirmed
      promotion counting as newer than its Sentinel's current epoch; the first in the list among
      equals."""
    if not answers:
        raise StoreUnavailable("no Sentinel named a primary: " + "; ".join(errors))
    for a in answers:
        if a.failing_over and a.named == a.configured:
            raise StoreUnavailable(
                f"Sentinel {a.sentinel} is failing over {a.named[0]}:{a.named[1]} and has not "
                "promoted a replica yet (retry: the new primary is named once it is promoted)"
            )
    ranked = [(a.config_epoch + (1 if a.failing_over else 0), -i, a) for i, a in enumerate(answers)]
    return max(ranked, key=lambda r: (r[0], r[1]))[2].named


def _execute(client: Any, *args: object) -> Any:
    """redis-py's ``execute_command`` is untyped; keep the escape hatch in one place."""
    return client.execute_command(*args)


def _pubsub(client: Any) -> Any:
    return client.pubsub()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _check_is_primary(client: redis.Redis, address: tuple[str, int]) -> None:
    """Sentinel can be behind (F4: a primary restarted as a replica): trust ROLE, not Sentinel."""
    try:
        role = _text(_execute(client, "ROLE")[0])
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise StoreUnavailable(f"primary {address[0]}:{address[1]} unreachable: {exc}") from exc
    except redis.RedisError as exc:
        raise StoreUnavailable(f"primary {address[0]}:{address[1]}: {exc}") from exc
    if role != "master":
        client.close()
        raise StoreReadOnly(f"{address[0]}:{address[1]} is a {role}, not a primary")


def wait_for_primary(
    locator: PrimaryLocator, *, timeout_s: float, not_at: tuple[str, int] | None = None
) -> redis.Redis:
    """Rediscover until a primary (other than ``not_at``) answers, within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client = locator.rediscover()
            if not_at is None or locator.address != not_at:
                return client
        except (StoreUnavailable, StoreReadOnly) as exc:
            last = exc
        time.sleep(0.1)
    raise StoreUnavailable(f"no new primary within {timeout_s}s (last: {last})")


@dataclass(frozen=True, slots=True)
class SwitchMaster:
    at_s: float  # time.time() when the event arrived
    sentinel: tuple[str, int]
    master_name: str
    old: tuple[str, int]
    new: tuple[str, int]


@dataclass
class SwitchMasterListener:
    """Subscribes to ``+switch-master`` on every Sentinel (one thread each) and records events.
    Every Sentinel announces the same failover: ``on_event`` is called once per failover (the
    first announcement of an old -> new switch within ``SAME_FAILOVER_S``), on a listener
    thread, and must not block."""

    target: SentinelTarget
    on_event: Callable[[SwitchMaster], None] | None = None
    events: list[SwitchMaster] = field(default_factory=list)
    failovers: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> SwitchMasterListener:
        for address in self.target.sentinels:
            thread = threading.Thread(
                target=self._listen,
                args=(address,),
                name=f"switch-master-{address[1]}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads.clear()

    def __enter__(self) -> SwitchMasterListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _listen(self, address: tuple[str, int]) -> None:
        while not self._stop.is_set():  # reconnects (paced) while the Sentinel is away
            try:
                self._listen_once(address)
            except (redis.RedisError, OSError):
                self._stop.wait(0.5)

    def _listen_once(self, address: tuple[str, int]) -> None:
        options = _options(SOCKET_TIMEOUT_S, CONNECT_TIMEOUT_S)
        client = redis.Redis(
            host=address[0],
            port=address[1],
            password=self.target.sentinel_password,
            **options,  # type: ignore[arg-type]
        )
        with contextlib.closing(client), contextlib.closing(_pubsub(client)) as pubsub:
            pubsub.subscribe("+switch-master")
            while not self._stop.is_set():
                message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                if message is not None and message.get("type") == "message":
                    self._record(address, _text(message["data"]))

    def _record(self, sentinel: tuple[str, int], data: str) -> None:
        fields_ = data.split()  # "<name> <old ip> <old port> <new ip> <new port>"
        if len(fields_) != 5 or fields_[0] != self.target.master_name:
            return
        event = SwitchMaster(
            time.time(),
            sentinel,
            fields_[0],
            (fields_[1], int(fields_[2])),
            (fields_[3], int(fields_[4])),
        )
        with self._lock:
            first = not any(
                (e.old, e.new) == (event.old, event.new) and event.at_s - e.at_s < SAME_FAILOVER_S
                for e in self.events[-EVENTS_SCAN:]
            )
            if first:
                self.failovers += 1
            if len(self.events) < EVENTS_MAX:
                self.events.append(event)
        if first and self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # a failing callback must not stop the listening
                log.exception("on_event failed for %s", event)

    def snapshot(self) -> list[SwitchMaster]:
        with self._lock:
            return list(self.events)
