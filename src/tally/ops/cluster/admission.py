"""The sync quarantine of hardened Redis Cluster nodes: a node serves SYNC/PSYNC to its
replicas only once tally has judged that its dataset may be copied.

The danger (the 2013 defect on one shard): a primary restarted by hand with a config that loads
nothing (``appendonly yes`` with no AOF) is back before ``cluster-node-timeout``, so nobody fails
it over; it is its slots' primary again, EMPTY, and within a second its replicas full-sync the
empty set. The epoch check then refuses every write to the shard (``store_lost``), but every
copy of what the shard's journal held undrained is gone: a rebuild from the ledger restores
the balances without those debits (measured in the cluster lab: 11-16 acknowledged debits).

The defence, in the node's own config file, so it holds for a restart tally never sees:
replicas authenticate as ``tally-sync`` (``masteruser``), a user that may run only the
replication handshake and is OFF in the file. Every start of the node therefore refuses its
replicas (they retry every second and keep their own data) until :func:`judge` admits it at
runtime (``ACL SETUSER tally-sync on``, never written back to the file):

* a replica, or a primary holding no slots (a node being formed): admitted (it copies, or
  serves nothing);
* a primary holding tally's epoch keys: admitted (its data is the shard's);
* a primary holding no epoch key while a node of its shard does: KEPT OUT; the shard refuses
  writes (``store_lost``) and ``tally rebuild --shard K`` promotes the replica that holds the
  epoch (``CLUSTER FAILOVER TAKEOVER``, :mod:`tally.sync.shard_promote`), undrained journal
  included, instead of rebuilding from the ledger;
* a primary holding no epoch key while a node of its shard cannot be asked: kept out (unknown
  is not nothing-to-lose); ``tally cluster admit`` judges again;
* no copy of the shard holds an epoch (a cluster tally has not initialised): admitted.

Writes are NOT blocked by the quarantine: tally's scripts refuse them on a shard without its
epoch, and clients of other applications are the operator's business.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import redis

from tally.ops.cluster.procs import command
from tally.ops.node import ConfigValue

SYNC_USER = "tally-sync"
#: what a replica sends its primary: AUTH (always allowed), PING, REPLCONF, PSYNC (SYNC: old)
SYNC_RULES = "resetchannels -@all +ping +replconf +psync +sync"
EPOCH_PATTERN = "*}:epoch"  # tally's per-shard epoch keys: namespace:{namespace.k}:epoch
SCAN_COUNT = 1000
SCAN_ROUNDS_MAX = 200  # bounded: at most 200 x 1000 keys looked at per node
LOADING_WAIT_S = 60.0  # a node loading its AOF answers LOADING until it is done
POLL_S = 0.05

Connect = Callable[[], redis.Redis]


def sync_user_directives(password: str) -> dict[str, ConfigValue]:
    """What a hardened cluster node's config adds: replicas sync as ``tally-sync``, which the
    file leaves OFF (the password only as its SHA-256, as ACL files keep it)."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    return {"masteruser": SYNC_USER, "user": [f"{SYNC_USER} off #{digest} {SYNC_RULES}"]}


@dataclass(frozen=True, slots=True)
class Admission:
    node: str
    admitted: bool
    reason: str


def epoch_keys_held(client: redis.Redis) -> int:
    """How many of tally's epoch keys the node holds (a bounded SCAN; keys only, so a replica
    answers without READONLY)."""
    held, cursor = 0, 0
    for _ in range(SCAN_ROUNDS_MAX):
        cursor, keys = client.scan(cursor, match=EPOCH_PATTERN, count=SCAN_COUNT)
        held += len(keys)
        if cursor == 0:
            break
    return held


def is_admitted(client: redis.Redis) -> bool | None:
    """Whether ``tally-sync`` is on; None on a node whose config has no such user."""
    reply = command(client, "ACL", "GETUSER", SYNC_USER)
    if reply is None:
        return None
    fields = reply if isinstance(reply, dict) else dict(zip(reply[0::2], reply[1::2], strict=False))
    flags = fields.get(b"flags", fields.get("flags")) or []
    return any(f in (b"on", "on") for f in flags)


def admit(client: redis.Redis) -> None:
    command(client, "ACL", "SETUSER", SYNC_USER, "on")


def _wait_loaded(client: redis.Redis, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:  # bounded by the deadline
        try:
            command(client, "PING")
            return
        except redis.BusyLoadingError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(POLL_S)


def _owns_slots(client: redis.Redis) -> bool:
    raw = command(client, "CLUSTER", "NODES")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 8 and "myself" in fields[2].split(","):
            return any(not item.startswith("[") for item in fields[8:])
    return False


def judge(
    name: str,
    connect: Connect,
    peers: Mapping[str, Connect],
    *,
    loading_wait_s: float = LOADING_WAIT_S,
) -> Admission:
    """Judge one node (``connect``: its real address) against the other nodes of its shard
    (``peers``) and admit it when its dataset may be copied; see the module docstring."""
    with contextlib.closing(connect()) as c:
        _wait_loaded(c, loading_wait_s)
        state = is_admitted(c)
        if state is None:
            return Admission(name, True, f"no {SYNC_USER} user: not a quarantined config")
        if state:  # a running node loses nothing by itself; what it replicates, its replicas do
            return Admission(name, True, "already admitted")
        role = str(command(c, "ROLE")[0].decode())
        if role != "master":
            return _let_in(c, name, "a replica: it copies its primary")
        if not _owns_slots(c):
            return _let_in(c, name, "a primary with no slots")
        own = epoch_keys_held(c)
        if own:
            return _let_in(c, name, f"holds {own} epoch key(s)")
        holders, unknown = [], []
        for peer, open_peer in sorted(peers.items()):
            try:
                with contextlib.closing(open_peer()) as p:
                    if epoch_keys_held(p):
                        holders.append(peer)
            except (redis.RedisError, OSError):
                unknown.append(peer)
        if holders:
            return Admission(
                name,
                False,
                f"an EMPTY primary (no epoch key) while {', '.join(holders)} of its shard "
                "hold(s) the epoch: kept from serving syncs so they keep the shard's data; "
                "promote one (`tally rebuild --shard K` does)",
            )
        if unknown:
            return Admission(
                name,
                False,
                f"an empty primary and {', '.join(unknown)} of its shard could not be asked: "
                "kept out until judged again (`tally cluster admit`)",
            )
        return _let_in(c, name, "no node of its shard holds an epoch: nothing to protect")


def _let_in(client: redis.Redis, name: str, reason: str) -> Admission:
    admit(client)
    return Admission(name, True, reason)
