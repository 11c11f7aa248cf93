"""Safe restart of one Redis node: the 2013 restart (F3 empty dataset, F4 read-only primary)
refused or contained.

    1. Before: record the live role, DBSIZE and the tally epoch keys; ``SAVE`` so dump.rdb is
       current (an operator's snapshot before a restart).
    2. Preflight the new config (``tally.ops.preflight``) against the data dir; any error-level
       finding (AOF on with no AOF file beside a good RDB: would come back EMPTY; replicaof on the
       primary or pointing at itself: would come back READ-ONLY) refuses the restart and the node
       keeps running untouched. So does TP011 for a node meant to be a replica: without
       ``replicaof`` it would come back as a primary, which Sentinel can promote as it is (below).
    3. Stop (SHUTDOWN SAVE) and start QUARANTINED: the default user may not write, SYNC or PSYNC,
       so neither clients nor replicas can touch or copy a dataset that is not verified yet, and
       ``replica-priority 0``, so Sentinel never picks the node in a failover.
    4. Verify: the same role; a replica whose link to its primary is up within
       ``replica_sync_timeout_s`` holds its primary's data and passes; otherwise not empty when
       it was not, same epoch values. Pass: lift the quarantine (all commands, the configured
       ``replica-priority`` back, Redis's 100 when none) and write the plain config back. Fail:
       the node stays quarantined and the report says why.

What the quarantine does in a Sentinel deployment (shown on real processes in
``tests/cluster/test_quarantine_sentinel.py``):

* It prevents writes (NOPERM), replicas copying the dataset (SYNC/PSYNC answer NOPERM: they keep
  their own data and retry), and Sentinel promoting the node while it is a replica: Sentinel
  skips a replica with priority 0 when it selects one, so a failover picks another replica or,
  with none, aborts (``-failover-abort-no-good-slave``) and retries later, never this node.
* It does not prevent Sentinel from repointing the node: REPLICAOF and CONFIG REWRITE (sent
  after a failover, ``+fix-slave-config``, ``+convert-to-slave``) pass the ACL, and the node
  then copies the current primary's dataset over its unverified one. It stays quarantined
  (priority 0, no writes, no syncs served) until admitted.
* It does not make Sentinel fail over from a quarantined PRIMARY (one that came back empty): it
  answers PING, so Sentinel keeps it as the primary while every write fails NOPERM, until the
  operator restores the data or runs ``SENTINEL FAILOVER``.
* Sentinel learns the priority from the node's INFO (every 10 s; every second while the
  primary or the replica's own link is down), and a primary's INFO carries no priority at all.
  A node that came back as a primary although meant to be a replica keeps the priority Sentinel
  cached, and Sentinel promotes it as it is (it already answers role master): hence the TP011
  refusal in step 2. A failover that selects a replica in the seconds between the restart and
  Sentinel's next INFO of it still sees the old priority.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from tally.errors import ProcessError
from tally.ops.cluster.procs import command
from tally.ops.node import ConfigValue, RedisNode, render_config
from tally.ops.preflight import Finding, PreflightParams, check_config_file
from tally.store.keys import KeyLayout

QUARANTINE_RULES = "~* &* +@all -@write -sync -psync"
#: Warnings that refuse a restart all the same: TP011, a replica whose config has no replicaof,
#: would come back as a primary that Sentinel can promote with the priority it cached.
REFUSED_WARNINGS = frozenset({"TP011"})
REPLICA_PRIORITY_DEFAULT = 100  # Redis's own; what admission restores when the config sets none
SAVE_TIMEOUT_S = 60.0
REPLICA_SYNC_TIMEOUT_S = 30.0
POLL_S = 0.05


@dataclass
class Snapshot:
    role: str  # "master", "slave" or "down"
    keys: int | None = None
    epochs: list[str | None] = field(default_factory=list)
    link: str | None = None  # a replica's ROLE state: "connected" once synced from its primary


@dataclass
class RestartReport:
    node: str
    ok: bool
    stage: str  # "refused" (not stopped), "quarantined" (restarted, kept out), "admitted"
    message: str
    findings: list[Finding] = field(default_factory=list)
    before: Snapshot | None = None
    after: Snapshot | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "ok": self.ok,
            "stage": self.stage,
            "message": self.message,
            "findings": [f.to_dict() for f in self.findings],
            "before": vars(self.before) if self.before else None,
            "after": vars(self.after) if self.after else None,
        }


def snapshot(node: RedisNode, layout: KeyLayout) -> Snapshot:
    try:
        with contextlib.closing(node.client(socket_timeout=5.0)) as c:
            reply = command(c, "ROLE")
            role = str(reply[0].decode())
            link = str(reply[3].decode()) if role == "slave" else None
            epochs: list[Any] = command(c, "MGET", *(layout.epoch(s) for s in range(layout.shards)))
            keys = int(command(c, "DBSIZE"))
            return Snapshot(role, keys, [e.decode() if e else None for e in epochs], link)
    except (redis.RedisError, OSError):
        return Snapshot("down")


def preflight(
    node: RedisNode,
    directives: Mapping[str, ConfigValue],
    role: str,
    params: PreflightParams | None = None,
) -> list[Finding]:
    """Check the config the node would start with, against its data dir, without starting it."""
    candidate = node.dir / "redis.conf.next"
    candidate.write_text(render_config({**node.base_directives(), **directives}))
    try:
        return check_config_file(candidate, role=role, params=params, data_dir=node.dir)
    finally:
        candidate.unlink(missing_ok=True)


def _save(node: RedisNode) -> None:
    """A blocking SAVE so dump.rdb holds the live dataset before the restart is judged."""
    client = node.client(socket_timeout=SAVE_TIMEOUT_S)
    with contextlib.suppress(redis.RedisError, OSError), contextlib.closing(client) as c:
        if c.dbsize() > 0:
            command(c, "SAVE")


def quarantine_directives(
    directives: Mapping[str, ConfigValue], password: str | None
) -> dict[str, ConfigValue]:
    """The config a node starts with before it is verified: no writes, no SYNC/PSYNC served, and
    ``replica-priority 0`` so that Sentinel never picks it in a failover."""
    out = {k: v for k, v in directives.items() if k != "requirepass"}
    secret = f">{password}" if password else "nopass"
    users = directives.get("user", [])
    others = [users] if isinstance(users, str | int) else list(users)  # e.g. tally-sync
    out["user"] = [f"default on {secret} {QUARANTINE_RULES}", *map(str, others)]
    out["replica-priority"] = 0
    return out


def _verify(before: Snapshot, after: Snapshot, expected_role: str) -> str | None:
    want = "master" if expected_role == "primary" else "slave"
    if after.role != want:
        return f"came back as {after.role}, expected {want} (read-only primary: F4)"
    if after.link == "connected":
        return None  # a replica synced from its primary: its data is the primary's
    unsynced = " and has not resynced from its primary" if want == "slave" else ""
    if before.keys and not after.keys:
        return (
            f"came back EMPTY ({before.keys} keys before){unsynced}: F3, the AOF/RDB config "
            "loads nothing"
        )
    if before.role != "down" and before.epochs != after.epochs:
        return (
            f"epoch keys differ{unsynced}: before {before.epochs[:2]}…, after {after.epochs[:2]}…"
        )
    return None


def safe_restart(
    node: RedisNode,
    *,
    expected_role: str,
    mutations: Mapping[str, ConfigValue] | None = None,
    removals: tuple[str, ...] = (),
    layout: KeyLayout | None = None,
    params: PreflightParams | None = None,
    stop: Any = None,
    replica_sync_timeout_s: float = REPLICA_SYNC_TIMEOUT_S,
) -> RestartReport:
    """Restart ``node`` with ``mutations`` applied, refusing or containing a bad restart.
    ``stop`` (optional) stops the running process when it is not ``node``'s own child. A
    replica gets ``replica_sync_timeout_s`` to resync from its primary before its own data is
    judged."""
    layout = layout or KeyLayout()
    new = {k: v for k, v in {**node.directives, **(mutations or {})}.items() if k not in removals}
    before = snapshot(node, layout)
    if before.role != "down":
        _save(node)
    findings = preflight(node, new, expected_role, params)
    refusals = [f for f in findings if f.severity == "error" or f.rule_id in REFUSED_WARNINGS]
    if refusals:
        errors = "; ".join(f"{f.rule_id} {f.title}" for f in refusals)
        return RestartReport(
            node.name, False, "refused", f"refused before stop: {errors}", findings, before
        )
    (stop or (lambda: node.stop(save=True)))()
    node.directives = quarantine_directives(new, node.password)
    try:
        node.start()
    except ProcessError as exc:
        node.directives = new
        return RestartReport(node.name, False, "failed", str(exc), findings, before)
    node.directives = new
    after = _wait_loaded(node, layout, replica_sync_timeout_s if expected_role == "replica" else 0)
    problem = _verify(before, after, expected_role)
    if problem is not None:
        return RestartReport(
            node.name,
            False,
            "quarantined",
            f"{problem}; kept out of service (no writes, no syncs, replica-priority 0)",
            findings,
            before,
            after,
        )
    _admit(node)
    return RestartReport(
        node.name, True, "admitted", "restarted and verified", findings, before, after
    )


def _wait_loaded(
    node: RedisNode, layout: KeyLayout, sync_timeout_s: float, timeout_s: float = 10.0
) -> Snapshot:
    """ROLE answered (a moment after start), and for a replica, up to ``sync_timeout_s`` more
    for its link to its primary to be ``connected`` (the sync done)."""
    deadline = time.monotonic() + timeout_s
    after = snapshot(node, layout)
    while after.role == "down" and time.monotonic() < deadline:
        time.sleep(POLL_S)
        after = snapshot(node, layout)
    deadline = time.monotonic() + sync_timeout_s
    while after.role == "slave" and after.link != "connected" and time.monotonic() < deadline:
        time.sleep(POLL_S)
        after = snapshot(node, layout)
    return after


def _admit(node: RedisNode) -> None:
    """Lift the quarantine: all commands, the configured replica-priority (Sentinel reads it
    from the next INFO), and the plain config on disk so a later restart is not quarantined."""
    priority = node.directives.get("replica-priority", REPLICA_PRIORITY_DEFAULT)
    with contextlib.closing(node.client()) as c:
        command(c, "ACL", "SETUSER", "default", "+@all")
        command(c, "CONFIG", "SET", "replica-priority", str(priority))
    node.write_config()
