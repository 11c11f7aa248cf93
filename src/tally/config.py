"""Settings: command-line options win over environment variables, which win over defaults.

TALLY_REDIS_URL     the Redis primary (default: the local deployment `tally local up` or
                    `tally serve` recorded in $TALLY_HOME/local.json)
TALLY_LEDGER_URL    sqlite:///... or postgresql://... (default: $TALLY_HOME/ledger.sqlite3)
TALLY_HOME          where local state lives (default: ./.tally)
TALLY_NAMESPACE     key prefix in Redis (default: tally)
TALLY_SHARDS        logical shards, fixed at `tally init` (default: 16)
TALLY_IDEMPOTENCY_WINDOW_S  how long Redis keeps each transfer id's record (exact replays), in
                    seconds: default 604800 (7 days); 0 keeps them forever; else 60 .. 366 days.
                    Transfers whose occurred_at is older than 6/7 of it are refused (README)
TALLY_DRAIN_REPLICAS  replicas that must hold a journal entry before the drainer settles it in
                    the ledger: a whole number, or `auto` (the default): 1 for a sentinel://
                    URL (a deployment with replicas to fail over to), for a redis+cluster://
                    URL whose primaries have replicas, else 0 (a single node)
TALLY_DRAIN_WORKERS groups of shards the drainer settles at once into PostgreSQL, each in its
                    own transaction (default 2; 1..8; SQLite: always 1)
TALLY_WAIT_REPLICAS replicas that must acknowledge a transfer's write before it is answered as
                    decided (else: outcome unknown, retry by id): `auto` (the default) is 1
                    for a sentinel:// URL; for a redis+cluster:// URL 1 when the cluster's
                    node table (CLUSTER NODES, read when the store opens) shows a replica of
                    any primary, 0 when it shows none; else 0
TALLY_WAIT_TIMEOUT_MS  how long that acknowledgement is waited for (default 500)
TALLY_WEBHOOK_HOSTS the only hosts webhooks may go to (default: any)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tally.domain.events import EndpointRefused, parse_hosts
from tally.domain.limits import (
    DRAIN_FENCE_TIMEOUT_MS_DEFAULT,
    DRAIN_FENCE_TIMEOUT_MS_MAX,
    DRAIN_REPLICAS_MAX,
    DRAIN_WORKERS_DEFAULT,
    DRAIN_WORKERS_MAX,
    IDEMPOTENCY_WINDOW_MS_DEFAULT,
    IDEMPOTENCY_WINDOW_MS_MAX,
    IDEMPOTENCY_WINDOW_MS_MIN,
)
from tally.errors import ConfigError
from tally.store.keys import SHARDS_DEFAULT

LOCAL_STATE = "local.json"
#: Long enough for a replica across a WAN link on a busy machine to acknowledge (a REPLCONF
#: GETACK round trip), short enough that a caller hears "unknown" well inside its own timeout.
WAIT_TIMEOUT_MS_DEFAULT = 500
DRAIN_REPLICAS_AUTO = "auto"
#: Variables that describe this machine (which redis-server it runs), not a deployment.
#: Settings of the machine rather than of one deployment, kept for child processes: the
#: redis-server binary CI chose, and where this machine lets webhooks go.
MACHINE_VARS = frozenset({"TALLY_REDIS_SERVER", "TALLY_WEBHOOK_HOSTS"})


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child tally that chooses its own deployment: every ``TALLY_*``
    setting dropped but the machine's (``TALLY_REDIS_SERVER``: CI runs the suite on each
    binary, and a child must run the same one)."""
    env = dict(os.environ if base is None else base)
    return {k: v for k, v in env.items() if not k.startswith("TALLY_") or k in MACHINE_VARS}


@dataclass(frozen=True)
class Settings:
    home: Path
    redis_url: str | None
    ledger_url: str
    namespace: str = "tally"
    shards: int = SHARDS_DEFAULT
    redis_socket_timeout_ms: int = 2000
    redis_connect_timeout_ms: int = 1000
    redis_pool_max: int = 64
    #: Replicas that must acknowledge a transfer's write (``WAIT`` on the connection that wrote)
    #: before it is answered as decided; fewer within ``wait_timeout_ms``: the caller gets
    #: ``StoreOutcomeUnknown`` (applied on a primary that a failover may still discard; a retry
    #: of the same id replays). None: automatic, see ``wait_replicas_effective``.
    wait_replicas: int | None = None
    wait_timeout_ms: int = WAIT_TIMEOUT_MS_DEFAULT
    #: Replicas that must have a journal entry before the drainer settles it (invariant 9: a
    #: failover must not lose what the ledger calls settled). None: automatic, every replica
    #: (``drain_replicas_effective``, ``drain_replicas_on_sentinel``; on a cluster, per primary:
    #: ``sync.cluster_drain.ClusterDrainer``).
    drain_replicas: int | None = None
    #: How long one drain round waits for them (WAIT); below the socket timeout.
    drain_fence_timeout_ms: int = DRAIN_FENCE_TIMEOUT_MS_DEFAULT
    #: Groups of shards the drainer settles at once (PostgreSQL), each in its own transaction.
    drain_workers: int = DRAIN_WORKERS_DEFAULT
    #: Transfer-id records are kept this long in Redis (two generations dropped whole); 0 keeps
    #: them forever. Outside the window the store refuses transfers by their occurred_at, so a
    #: replay is never applied twice (README, "Idempotency window").
    idempotency_window_ms: int = IDEMPOTENCY_WINDOW_MS_DEFAULT
    #: The only hosts webhooks may be sent to (``TALLY_WEBHOOK_HOSTS``); None: any host.
    webhook_hosts: frozenset[str] | None = None

    def __post_init__(self) -> None:
        replicas = self.drain_replicas
        if replicas is not None and (
            isinstance(replicas, bool)
            or not isinstance(replicas, int)
            or not 0 <= replicas <= DRAIN_REPLICAS_MAX
        ):
            raise ConfigError(
                f"drain_replicas must be 0..{DRAIN_REPLICAS_MAX} or automatic, got {replicas!r}",
                hint="set TALLY_DRAIN_REPLICAS to a whole number or `auto`",
            )
        wait = self.wait_replicas
        if wait is not None and (
            isinstance(wait, bool)
            or not isinstance(wait, int)
            or not 0 <= wait <= DRAIN_REPLICAS_MAX
        ):
            raise ConfigError(
                f"wait_replicas must be 0..{DRAIN_REPLICAS_MAX} or automatic, got {wait!r}",
                hint="set TALLY_WAIT_REPLICAS to a whole number or `auto`",
            )
        wait_ms_max = self.redis_socket_timeout_ms - 1
        if not 1 <= self.wait_timeout_ms <= wait_ms_max:
            raise ConfigError(
                f"wait_timeout_ms must be 1..{wait_ms_max} (below the Redis socket timeout), "
                f"got {self.wait_timeout_ms}",
                hint="set TALLY_WAIT_TIMEOUT_MS",
            )
        if not 1 <= self.drain_workers <= DRAIN_WORKERS_MAX:
            raise ConfigError(
                f"drain_workers must be 1..{DRAIN_WORKERS_MAX}, got {self.drain_workers}",
                hint="set TALLY_DRAIN_WORKERS",
            )
        fence_ms_max = min(DRAIN_FENCE_TIMEOUT_MS_MAX, self.redis_socket_timeout_ms - 1)
        if not 1 <= self.drain_fence_timeout_ms <= fence_ms_max:
            raise ConfigError(
                f"drain_fence_timeout_ms must be 1..{fence_ms_max} (below the Redis socket "
                f"timeout of {self.redis_socket_timeout_ms} ms), got {self.drain_fence_timeout_ms}"
            )

    @property
    def wait_replicas_effective(self) -> int:
        """``wait_replicas``, or when automatic: 1 for a Sentinel URL, 0 otherwise. With
        Sentinel a failover promotes a replica, so a write only the primary holds may vanish
        after it was answered (the lab's primary-pause: writes queued on a stalled primary are
        applied when it resumes, before it learns its replicas are gone, then discarded at its
        demotion). Waiting for one replica turns that answer into "unknown", which a caller
        retries by id; min-replicas-to-write alone is checked too late for those writes.
        A cluster URL's automatic value needs its node table: ``wait_replicas_on_cluster``."""
        if self.wait_replicas is not None:
            return self.wait_replicas
        return 1 if (self.redis_url or "").startswith("sentinel://") else 0

    def wait_replicas_on_cluster(self, *, replicated: bool) -> int:
        """``wait_replicas`` on a Redis Cluster (``redis+cluster://``), or when automatic: 1
        when the cluster has replicas (``replicated``: the node table read when the store opens
        shows a replica of some primary), 0 when it has none. A shard's failover promotes its
        replica, so a write only the old primary held vanishes after it was answered (shown
        by tests/cluster/test_cluster_wait.py); a cluster without replicas has no failover to
        lose it to, and a WAIT there would only time out. ``WAIT`` goes to each primary on the
        connection that wrote (``store.cluster_store``), so it counts that shard's replicas."""
        if self.wait_replicas is not None:
            return self.wait_replicas
        return 1 if replicated else 0

    @property
    def drain_replicas_effective(self) -> int:
        """``drain_replicas``, or when automatic: 0 for a plain URL (one node as far as tally
        knows, like the embedded default; a fence there would never pass) and, for a Sentinel
        URL before the Sentinels were asked, 1; once they were, ``drain_replicas_on_sentinel``."""
        if self.drain_replicas is not None:
            return self.drain_replicas
        return 1 if (self.redis_url or "").startswith("sentinel://") else 0

    def drain_replicas_on_sentinel(self, *, known: int | None) -> int:
        """``drain_replicas`` with a Sentinel URL, or when automatic: EVERY replica the
        Sentinels know of the primary (``known``: ``num-slaves``, connected or not; at least 1).
        One is not enough: a replica cut off from the primary can be the one Sentinel promotes
        while the old primary, with another replica still following it, goes on settling
        entries in the ledger that the promotion discards (chaos seed 3 under load, 2026-12-04:
        nine balances above the ledger). The price: while a known replica is down or cut off,
        nothing is settled (drain lag grows; the recharge gate closes past its bound) until it
        is back, or until an operator removes it (``SENTINEL RESET``) or sets
        ``TALLY_DRAIN_REPLICAS`` to a number."""
        if self.drain_replicas is not None:
            return self.drain_replicas
        return max(1, min(known or 0, DRAIN_REPLICAS_MAX))

    @classmethod
    def resolve(
        cls, *, redis_url: str | None = None, ledger_url: str | None = None, home: str | None = None
    ) -> Settings:
        home_path = Path(home or os.environ.get("TALLY_HOME") or ".tally")
        shards_text = os.environ.get("TALLY_SHARDS", str(SHARDS_DEFAULT))
        if not shards_text.isdigit() or not shards_text.isascii():  # "²" is a digit to isdigit
            raise ConfigError(f"TALLY_SHARDS must be a whole number, got {shards_text!r}")
        return cls(
            home=home_path,
            redis_url=redis_url or os.environ.get("TALLY_REDIS_URL") or local_redis_url(home_path),
            ledger_url=ledger_url
            or os.environ.get("TALLY_LEDGER_URL")
            or f"sqlite:///{home_path / 'ledger.sqlite3'}",
            namespace=os.environ.get("TALLY_NAMESPACE", "tally"),
            shards=int(shards_text),
            drain_replicas=parse_drain_replicas(
                os.environ.get("TALLY_DRAIN_REPLICAS", DRAIN_REPLICAS_AUTO)
            ),
            drain_workers=parse_count(
                os.environ.get("TALLY_DRAIN_WORKERS", str(DRAIN_WORKERS_DEFAULT)),
                "TALLY_DRAIN_WORKERS",
            ),
            idempotency_window_ms=parse_window_s(
                os.environ.get(
                    "TALLY_IDEMPOTENCY_WINDOW_S", str(IDEMPOTENCY_WINDOW_MS_DEFAULT // 1000)
                )
            ),
            webhook_hosts=parse_webhook_hosts(os.environ.get("TALLY_WEBHOOK_HOSTS")),
            wait_replicas=parse_drain_replicas(
                os.environ.get("TALLY_WAIT_REPLICAS", DRAIN_REPLICAS_AUTO), "TALLY_WAIT_REPLICAS"
            ),
            wait_timeout_ms=parse_ms(
                os.environ.get("TALLY_WAIT_TIMEOUT_MS", str(WAIT_TIMEOUT_MS_DEFAULT)),
                "TALLY_WAIT_TIMEOUT_MS",
            ),
        )

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise ConfigError(
                "no Redis configured",
                hint="pass --redis-url or set TALLY_REDIS_URL, or start one with `tally local up`",
            )
        return self.redis_url


def _whole(text: str, must_be: str) -> int:
    """``text`` (surrounding spaces allowed) as a whole number of ASCII digits, else a
    ConfigError: ``<must_be>, got <text>``."""
    value = text.strip()
    if not value.isdigit() or not value.isascii():
        raise ConfigError(f"{must_be}, got {text!r}")
    return int(value)


def parse_drain_replicas(text: str, variable: str = "TALLY_DRAIN_REPLICAS") -> int | None:
    """``auto`` (or empty) -> None; a whole number -> itself; anything else is a ConfigError."""
    if text.strip().lower() in ("", DRAIN_REPLICAS_AUTO):
        return None
    return _whole(text, f"{variable} must be a whole number or {DRAIN_REPLICAS_AUTO!r}")


def parse_count(text: str, variable: str) -> int:
    return _whole(text, f"{variable} must be a whole number")


def parse_ms(text: str, variable: str) -> int:
    return _whole(text, f"{variable} must be whole milliseconds")


def parse_window_s(text: str) -> int:
    """Whole seconds -> ms, within ``IDEMPOTENCY_WINDOW_MS_MAX``."""
    window_ms = _whole(text, "TALLY_IDEMPOTENCY_WINDOW_S must be whole seconds") * 1000
    if window_ms and not IDEMPOTENCY_WINDOW_MS_MIN <= window_ms <= IDEMPOTENCY_WINDOW_MS_MAX:
        raise ConfigError(
            f"TALLY_IDEMPOTENCY_WINDOW_S must be 0 (forever) or "
            f"{IDEMPOTENCY_WINDOW_MS_MIN // 1000}..{IDEMPOTENCY_WINDOW_MS_MAX // 1000} seconds, "
            f"got {text.strip()}",
            hint="a window shorter than a minute would refuse ordinary client clock drift",
        )
    return window_ms


def local_redis_url(home: Path) -> str | None:
    state = home / LOCAL_STATE
    if not state.exists():
        return None
    try:
        url = json.loads(state.read_text())["redis_url"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{state} is unreadable: {exc}", hint=f"delete {state} and run `tally local up`"
        ) from exc
    if not isinstance(url, str):
        raise ConfigError(f"{state}: redis_url must be a string")
    return url


def parse_webhook_hosts(text: str | None) -> frozenset[str] | None:
    try:
        return parse_hosts(text)
    except EndpointRefused as exc:
        raise ConfigError(
            str(exc.args[0]), hint="e.g. TALLY_WEBHOOK_HOSTS=hooks.example.com"
        ) from None
