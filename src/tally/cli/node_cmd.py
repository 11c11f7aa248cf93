"""``tally node restart NODE --topology FILE [--safe] [--set KEY=VALUE]...``: restart one node of
a cluster that ``tally cluster up`` started. Exit codes: 0 restarted (and, with --safe, verified),
1 refused or quarantined by --safe (the message says why), 2 usage or infrastructure error.

--safe (``tally.ops.restart``): preflight with the figures the cluster was sized from, start
quarantined (no writes, no syncs served, replica-priority 0 so Sentinel never promotes it),
verify, then admit (the configured replica-priority back) or keep it quarantined."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from tally.cli.cluster_cmd import base_dir_option, load, topology_option
from tally.cli.output import EXIT_REFUSED, handles_errors, json_option
from tally.errors import UsageError
from tally.ops.cluster import Cluster
from tally.ops.node import ConfigValue
from tally.ops.preflight import PreflightParams
from tally.ops.restart import REPLICA_SYNC_TIMEOUT_S, safe_restart


@click.group(name="node")
def node() -> None:
    """One node of a running cluster."""


def _mutations(pairs: tuple[str, ...]) -> dict[str, ConfigValue]:
    out: dict[str, ConfigValue] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {pair!r}: use KEY=VALUE, e.g. --set appendonly=yes")
        out[key.strip()] = value.strip()
    return out


@node.command(name="restart")
@click.argument("name")
@topology_option
@base_dir_option
@click.option(
    "--safe", is_flag=True, help="Preflight, quarantined start, verify (see ops.restart)."
)
@click.option(
    "--sync-timeout-s",
    type=click.FloatRange(0, 3600),
    default=REPLICA_SYNC_TIMEOUT_S,
    show_default=True,
    help="With --safe: how long a replica may take to resync from its primary before its own "
    "data is judged (empty or another epoch: kept quarantined).",
)
@click.option("--set", "sets", multiple=True, help="Change a directive: KEY=VALUE (repeatable).")
@click.option("--unset", "unsets", multiple=True, help="Drop a directive (repeatable).")
@json_option
@handles_errors
def restart(
    name: str,
    topology_path: Path,
    base_dir: Path | None,
    safe: bool,
    sync_timeout_s: float,
    sets: tuple[str, ...],
    unsets: tuple[str, ...],
    as_json: bool,
) -> None:
    """Restart NODE with its recorded config plus --set/--unset changes."""
    cluster = Cluster.attach(load(topology_path, base_dir))
    if name not in cluster.nodes:
        raise UsageError(f"no node {name!r}; nodes: {', '.join(cluster.nodes)}")
    handle = cluster.nodes[name]
    mutations = _mutations(sets)
    live = handle.live_role()
    expected = {"master": "primary", "slave": "replica"}.get(live, handle.role)
    if not safe:
        for key in unsets:
            handle.node.directives.pop(key, None)
        handle.restart(directives=mutations)
        cluster.save_state()
        _say(as_json, {"node": name, "ok": True, "safe": False}, f"{name} restarted (unchecked)")
        return
    # the figures the cluster's configs were generated from (one set: tally.ops.profiles)
    params = PreflightParams.for_topology(cluster.topology, sizing=cluster.params)
    report = safe_restart(
        handle.node,
        expected_role=expected,
        mutations=mutations,
        removals=unsets,
        params=params,
        stop=lambda: handle.stop(save=True),
        replica_sync_timeout_s=sync_timeout_s,
    )
    cluster.save_state()
    _say(as_json, report.to_dict(), f"{name}: {report.stage}: {report.message}")
    if not report.ok:
        sys.exit(EXIT_REFUSED)


def _say(as_json: bool, data: dict[str, object], human: str) -> None:
    click.echo(json.dumps(data, sort_keys=True, default=str) if as_json else human)
