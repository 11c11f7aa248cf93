"""Safe restart of one Redis node: the 2013 restart (F3 empty dataset, F4 read-only primary)
refused or contained.

    1. Before: record the live role, DBSIZE and the tally epoch keys; ``SAVE`` so dump.rdb is
       current (an operator's snapshot before a restart).
    2. Preflight the new config (``tally.ops.preflight``) against the data dir; any error-level
       finding (AOF on with no AOF file beside a good RDB: would come back EMPTY; replicaof on the
       primary or pointing at itself: would come back READ-ONLY) refuses the restart and the node
       keeps running untouched.
    3. Stop (SHUTDOWN SAVE) and start QUARANTINED: the default user may not write, SYNC or PSYNC,
       so neither clients nor replicas can touch or copy a dataset that is not verified yet.
    4. Verify: not empty when it was not, same epoch values, same role. Pass: lift the quarantine
       and write the plain config back. Fail: the node stays quarantined (writes answer NOPERM,
       replicas cannot full-sync the bad dataset) and the report says why.
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
from tally.ops.preflight import Finding, PreflightParams, check_config_file, has_errors
from tally.store.keys import KeyLayout

QUARANTINE_RULES = "~* &* +@all -@write -sync -psync"
SAVE_TIMEOUT_S = 60.0


@dataclass
class Snapshot:
    role: str  # "master", "slave" or "down"
    keys: int | None = None
    epochs: list[str | None] = field(default_factory=list)


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
            role = str(command(c, "ROLE")[0].decode())
            epochs: list[Any] = command(c, "MGET", *(layout.epoch(s) for s in range(layout.shards)))
            keys = int(command(c, "DBSIZE"))
            return Snapshot(role, keys, [e.decode() if e else None for e in epochs])
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
    out = {k: v for k, v in directives.items() if k != "requirepass"}
    secret = f">{password}" if password else "nopass"
    out["user"] = f"default on {secret} {QUARANTINE_RULES}"
    return out


def _verify(before: Snapshot, after: Snapshot, expected_role: str) -> str | None:
    want = "master" if expected_role == "primary" else "slave"
    if after.role != want:
        return f"came back as {after.role}, expected {want} (read-only primary: F4)"
    if want == "slave":
        return None  # a replica's data comes from its primary
    if before.keys and not after.keys:
        return f"came back EMPTY ({before.keys} keys before): F3, the AOF/RDB config loads nothing"
    if before.role != "down" and before.epochs != after.epochs:
        return f"epoch keys differ: before {before.epochs[:2]}…, after {after.epochs[:2]}…"
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
) -> RestartReport:
    """Restart ``node`` with ``mutations`` applied, refusing or containing a bad restart.
    ``stop`` (optional) stops the running process when it is not ``node``'s own child."""
    layout = layout or KeyLayout()
    new = {k: v for k, v in {**node.directives, **(mutations or {})}.items() if k not in removals}
    before = snapshot(node, layout)
    if before.role != "down":
        _save(node)
    findings = preflight(node, new, expected_role, params)
    if has_errors(findings):
        errors = "; ".join(f"{f.rule_id} {f.title}" for f in findings if f.severity == "error")
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
    after = _wait_loaded(node, layout)
    problem = _verify(before, after, expected_role)
    if problem is not None:
        return RestartReport(
            node.name,
            False,
            "quarantined",
            f"{problem}; kept out of service (no writes, no syncs)",
            findings,
            before,
            after,
        )
    _admit(node)
    return RestartReport(
        node.name, True, "admitted", "restarted and verified", findings, before, after
    )


def _wait_loaded(node: RedisNode, layout: KeyLayout, timeout_s: float = 10.0) -> Snapshot:
    """A replica reports its role at once; give ROLE a moment to settle after start."""
    deadline = time.monotonic() + timeout_s
    after = snapshot(node, layout)
    while after.role == "down" and time.monotonic() < deadline:
        time.sleep(0.05)
        after = snapshot(node, layout)
    return after


def _admit(node: RedisNode) -> None:
    with contextlib.closing(node.client()) as c:
        command(c, "ACL", "SETUSER", "default", "+@all")
    node.write_config()  # the plain config on disk: a later restart is not quarantined
