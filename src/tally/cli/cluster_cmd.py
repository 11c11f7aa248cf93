"""``tally cluster up|down|status --topology FILE``: a topology as real processes on loopback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tally.cli.output import handles_errors, json_option
from tally.errors import ConfigError
from tally.ledger.sql_ledger import SqlLedger
from tally.ops.cluster import Cluster, read_state, state_path
from tally.ops.cluster.status import cluster_status, compare_ledger_epochs
from tally.ops.preflight import check_topology
from tally.ops.topology import PROFILES, Topology, load_topology
from tally.store.keys import KeyLayout

topology_option = click.option(
    "--topology",
    "topology_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Topology TOML (see examples/topology-3dc.toml).",
)


def load(topology_path: Path, base_dir: Path | None = None) -> Topology:
    topology = load_topology(topology_path)
    return topology.with_base_dir(base_dir) if base_dir is not None else topology


base_dir_option = click.option(
    "--base-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Override the topology's base_dir.",
)


@click.group(name="cluster")
def cluster() -> None:
    """Run a topology (nodes, Sentinels, fault proxies) as real processes on loopback; a
    ``kind = "redis-cluster"`` topology is formed into a Redis Cluster (slots, replicas)."""


@cluster.command(name="up")
@topology_option
@base_dir_option
@click.option("--profile", type=click.Choice(PROFILES), default=None, help="Override the file's.")
@json_option
@handles_errors
def up(topology_path: Path, base_dir: Path | None, profile: str | None, as_json: bool) -> None:
    """Start every node, Sentinel and the proxy daemon; they keep running after this exits.
    Placement findings (TP013) are reported on stderr, not refused: the lab runs such
    topologies on purpose."""
    topology = load(topology_path, base_dir)
    for finding in check_topology(topology):
        click.echo(
            f"preflight {finding.rule_id} {finding.severity.value}: {finding.detail}", err=True
        )
    running = Cluster(topology, profile=profile, detach=True).start()
    status = cluster_status(running)
    if running.hub is not None and hasattr(running.hub, "close"):
        running.hub.close()
    _print(status, as_json, f"cluster up; state in {running.base_dir}")


@cluster.command(name="down")
@topology_option
@base_dir_option
@json_option
@handles_errors
def down(topology_path: Path, base_dir: Path | None, as_json: bool) -> None:
    """Stop everything `up` recorded (SHUTDOWN NOSAVE, SIGTERM, SIGKILL, each with a deadline)."""
    topology = load(topology_path, base_dir)
    if read_state(topology.base_dir) is None:
        raise ConfigError(f"no cluster state in {topology.base_dir}", hint="nothing to stop")
    Cluster.attach(topology).stop()
    state_path(topology.base_dir).unlink(missing_ok=True)
    payload = {"stopped": True, "base_dir": str(topology.base_dir)}
    click.echo(json.dumps(payload) if as_json else f"cluster down ({topology.base_dir})")


@cluster.command(name="admit")
@topology_option
@base_dir_option
@json_option
@handles_errors
def admit(topology_path: Path, base_dir: Path | None, as_json: bool) -> None:
    """Judge every running node of a hardened Redis Cluster again for the sync quarantine: a
    node serves syncs to its replicas only once its data may be copied (a primary holding no
    tally epoch while a node of its shard does stays out: `tally rebuild --shard K` promotes
    that node). Exit 1 when a node stays out."""
    attached = Cluster.attach(load(topology_path, base_dir))
    if not attached.quarantines:
        raise ConfigError(
            f"{topology_path}: only hardened redis-cluster topologies start quarantined",
            hint="nothing to admit",
        )
    judged = attached.judge_all()
    if as_json:
        click.echo(json.dumps([{"node": a.node, "admitted": a.admitted, "reason": a.reason}
                               for a in judged]))  # fmt: skip
    else:
        for a in judged:
            click.echo(f"{a.node:<8} {'admitted' if a.admitted else 'KEPT OUT':<9} {a.reason}")
    if not all(a.admitted for a in judged):
        raise SystemExit(1)


@cluster.command(name="status")
@topology_option
@base_dir_option
@json_option
@handles_errors
@click.option(
    "--ledger-url",
    default=None,
    help="redis-cluster topologies: also show the ledger's epoch for each logical shard beside "
    "the one its primary holds, and flag every shard where they differ (EPOCH MISMATCH).",
)
def status(
    topology_path: Path, base_dir: Path | None, as_json: bool, ledger_url: str | None
) -> None:
    """Roles, replication offsets and lag, proxy links and faults, Sentinels' view."""
    attached = Cluster.attach(load(topology_path, base_dir))
    found = cluster_status(attached)
    if ledger_url is not None and found.get("cluster"):
        with SqlLedger.open(ledger_url) as ledger:
            view = ledger.epoch_view()
        if view is not None:
            values = [KeyLayout(view.epoch.namespace, view.epoch.shards).epoch_value(i)
                      for i in view.shard_ids]  # fmt: skip
            found["cluster"]["ledger_epoch"] = view.epoch.epoch_id
            found["cluster"]["epoch_mismatch"] = compare_ledger_epochs(
                found["cluster"], view.epoch.namespace, values
            )
    _print(found, as_json, "")


def _print(status: dict[str, Any], as_json: bool, header: str) -> None:
    if as_json:
        click.echo(json.dumps(status, sort_keys=True))
        return
    if header:
        click.echo(header)
    click.echo(
        f"{status.get('kind', 'replicated')}, profile {status['profile']};"
        f" primaries: {', '.join(status['primaries']) or '-'}"
    )
    for name, node in status["nodes"].items():
        extra = ""
        if node.get("role") == "slave":
            extra = f" link={node.get('link')} lag_bytes={node.get('lag_bytes', '?')}"
        if node.get("sync") == "QUARANTINED":
            extra += " sync=QUARANTINED (tally cluster admit)"
        click.echo(
            f"  node {name:<8} {node['dc']:<6} {node['front'] or '-':<21} (real {node['address']})"
            f" {node.get('role', '?'):<6}"
            f" offset={node.get('offset', '-')} keys={node.get('keys', '-')}{extra}"
        )
    _print_shards(status.get("cluster"))
    for name, sentinel in status["sentinels"].items():
        click.echo(
            f"  sentinel {name:<8} {sentinel['front'] or '-':<21} primary={sentinel.get('primary')}"
        )
    for name, link in status["links"].items():
        if isinstance(link, dict):
            faults = (
                ",".join(f"{d}:{'+'.join(f)}" for d, f in link.get("faults", {}).items()) or "-"
            )
            click.echo(
                f"  route {name:<14} {link['pair'] or 'local':<8} open={link.get('connections_open')}"
                f" faults={faults}"
            )


def _print_shards(view: dict[str, Any] | None) -> None:
    """redis-cluster topologies: per shard, the primary serving it now and its slots."""
    if not view:
        return
    click.echo(
        f"  cluster state={view['state']} slots_ok={view['slots_ok']} (seen by {view['seen_by']});"
        f" clients start from {','.join(view.get('startup_nodes', [])) or '-'}"
    )
    for name, shard in view["shards"].items():
        click.echo(
            f"  shard {name:<6} primary={shard['primary']:<8} slots={shard['slots']:<5}"
            f" {','.join(shard['ranges'])}"
            f" replicas={','.join(shard['replicas']) or '-'}"
            f" config_epoch={shard['config_epoch']} store_epoch={shard['store_epoch'] or '-'}"
            + (" FAILING" if shard["failing"] else "")
        )
        if "ledger_epochs" in shard:  # --ledger-url: each logical shard, store vs ledger
            store = shard.get("store_epochs") or {}
            for key, want in shard["ledger_epochs"].items():
                flag = " EPOCH MISMATCH" if key in shard["epoch_mismatch"] else ""
                click.echo(f"    {key} store={store.get(key) or '-'} ledger={want}{flag}")
