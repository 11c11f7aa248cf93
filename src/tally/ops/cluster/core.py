"""A whole topology as real processes on loopback: Redis nodes, Sentinels and fault proxies.

Addressing (one address per process for everyone, the path depending on where the client is):

* Each data center has its own loopback address, ``127.0.k.1`` for the k-th data center of the
  topology (all of 127.0.0.0/8 is local on Linux). Its processes listen there, and their
  outgoing connections carry it as source address (``bind`` is the source address for Redis
  6.2's replication and Sentinel links; 7.0 needs ``bind-source-addr``, set here).
* Every process (node or Sentinel) has a FRONT: a fault-proxy listener in its data center, the
  one address everyone uses for it: replicas replicate from the primary's front, Sentinels
  monitor it, replicas and Sentinels announce their fronts (``replica-announce-ip/port``,
  ``sentinel announce-ip/port``), so ``INFO``, hello messages and ``SENTINEL`` replies name
  fronts only, and a failover keeps every link behind the proxies.
* A front passes each connection to the route ``<source dc>-to-<process>`` chosen by the
  client's source address (``tally.ops.faultproxy.front``); a route between two data centers
  carries its topology link's latency and bandwidth cap, and ``partition(dc_a, dc_b)`` applies
  a fault to every route of that pair, both ways. Routes inside a data center carry no faults.
* A ``kind = "redis-cluster"`` topology: each node has a second front for its cluster bus
  (``<node>-bus``, routes ``<source dc>-to-<node>-bus``), announced with
  ``cluster-announce-ip/port/bus-port``, so gossip, failure detection and failover votes cross
  the same links and take the same faults as replication and clients; ``CLUSTER NODES`` and
  MOVED replies name fronts only. The node's real bus port is its data port + 10000 (the only
  choice on 6.2; 7.0 is told the same with ``cluster-port``). Formation: ``formation.py``.
* Clients with no data-center address (an engine, a test, redis-py cannot pick a source
  address) count as sitting in ``topology.client_dc``. Operator tools (``ClusterNode.client``,
  status, the lab's monitor) use a process's REAL address and bypass the proxies: a partition
  never hides the cluster from its operator.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import redis

from tally.errors import ConfigError, InfrastructureError, ProcessError, TallyError
from tally.ops.binary import RedisBinary, find_redis_server
from tally.ops.cluster.admission import Admission, judge, sync_user_directives
from tally.ops.cluster.formation import form_cluster
from tally.ops.cluster.hubd import start_hub_daemon, stop_hub_daemon
from tally.ops.cluster.procs import command, pid_alive, stop_pid, wait_gone
from tally.ops.cluster.state import (
    ClusterState,
    ProcessState,
    RouteState,
    read_state,
    write_state,
)
from tally.ops.faultproxy import FrontSpec, ProxyControl, ProxyHub
from tally.ops.faultproxy import LinkSpec as ProxyLinkSpec
from tally.ops.node import ConfigValue, RedisNode, free_port_pair
from tally.ops.profiles import (
    CLUSTER_BUS_PORT_OFFSET,
    ClusterAnnounce,
    NodeRole,
    ProfileParams,
    cluster_node_directives,
    node_directives,
    sentinel_directives,
    uses_sentinel,
)
from tally.ops.topology import LinkSpec as TopologyLink
from tally.ops.topology import NodeSpec, Topology
from tally.store.discovery import SentinelTarget

PASSWORD_ENV = "TALLY_REDIS_PASSWORD"
SYNC_TIMEOUT_S = 30.0
SENTINEL_READY_TIMEOUT_S = 20.0
POLL_S = 0.05


class Hub(Protocol):
    """What the cluster needs of a proxy hub: ``ProxyHub`` in process, ``ProxyControl`` daemon."""

    def add_link(self, spec: ProxyLinkSpec) -> tuple[str, int]: ...
    def add_front(self, spec: FrontSpec) -> tuple[str, int]: ...
    def set_fault(self, link: str, direction: str, kind: str, **params: Any) -> None: ...
    def clear(self, link: str, kind: str | None = None, direction: str = "both") -> None: ...
    def status(self) -> dict[str, dict[str, Any]]: ...


class ClusterNode:
    """A handle on one process of the cluster (a data node or a Sentinel)."""

    def __init__(self, name: str, dc: str, node: RedisNode, role: str, pid: int | None = None):
        self.name, self.dc, self.node, self.role = name, dc, node, role
        self._attached_pid = pid  # a process an earlier `cluster up` started
        self.front: tuple[str, int] | None = None  # the address everyone else uses
        self.bus_front: tuple[str, int] | None = None  # redis-cluster: its cluster bus front
        # hardened redis-cluster: run after every start (the sync quarantine's judgement)
        self.after_start: Callable[[ClusterNode], Admission] | None = None
        self.admission: Admission | None = None  # the last judgement

    @property
    def pid(self) -> int | None:
        return self.node.pid if self.node.process is not None else self._attached_pid

    @property
    def port(self) -> int:
        return self.node.port

    @property
    def address(self) -> tuple[str, int]:
        """The REAL address: the operator's way in, past every proxy."""
        return self.node.host, self.node.port

    def is_running(self) -> bool:
        pid = self.pid
        return pid is not None and pid_alive(pid)

    def client(self, **overrides: Any) -> redis.Redis:
        return self.node.client(**overrides)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing saved."""
        if self.node.process is not None:
            self.node.kill()
        elif self._attached_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._attached_pid, signal.SIGKILL)
            wait_gone(self._attached_pid, 10.0)
            self._attached_pid = None

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop(self, *, save: bool = False) -> None:
        if self.node.process is not None:
            self.node.stop(save=save)
        elif self._attached_pid is not None:
            password = None if self.node.sentinel else self.node.password
            stop_pid(
                self._attached_pid,
                host=self.node.host,
                port=self.port,
                password=password,
                save=save,
            )
            self._attached_pid = None

    def start(self) -> None:
        self.node.start()
        if self.after_start is not None:
            self.admission = self.after_start(self)

    def restart(self, *, directives: Mapping[str, ConfigValue] | None = None) -> None:
        """Plain restart (no checks): SHUTDOWN SAVE as an operator would, mutate, start."""
        self.stop(save=True)
        if directives is not None:
            self.node.directives.update(directives)
        self.start()

    def live_role(self) -> str:
        """``master``, ``slave``, ``sentinel`` or ``down``."""
        try:
            with contextlib.closing(self.client(socket_timeout=1.0)) as c:
                return str(command(c, "ROLE")[0].decode())
        except (redis.RedisError, OSError):
            return "down"


class Cluster:
    """Start, steer and stop a topology. ``detach=True`` (``tally cluster up``) leaves the
    processes running after this Python process exits and records them in the state file."""

    def __init__(
        self,
        topology: Topology,
        *,
        profile: str | None = None,
        params: ProfileParams | None = None,
        password: str | None = None,
        binary: RedisBinary | None = None,
        sentinels: bool | None = None,
        detach: bool = False,
    ) -> None:
        self.topology = topology.with_profile(profile) if profile else topology
        self.params = params or ProfileParams.from_mapping(
            self.topology.params, source=f"{self.topology.source} [params]"
        )
        self.binary = binary or find_redis_server()
        hardened = self.topology.profile == "hardened"
        self.password = (
            (password or os.environ.get(PASSWORD_ENV) or secrets.token_hex(16))
            if hardened
            else None
        )
        self.with_sentinels = (
            uses_sentinel(self.topology.profile) if sentinels is None else sentinels
        ) and not self.topology.is_cluster  # a Redis Cluster fails over by itself
        if self.with_sentinels and not self.topology.sentinels:
            raise ConfigError(
                f"{self.topology.source}: the {self.topology.profile} profile runs Sentinel",
                hint="declare one [[sentinel]] per data center",
            )
        if self.topology.is_cluster and self.topology.profile == "hardened":
            _check_shards_can_write(self.topology, self.params)
        self.detach = detach
        self.base_dir = self.topology.base_dir
        self.nodes: dict[str, ClusterNode] = {}
        self.sentinels: dict[str, ClusterNode] = {}
        self.routes: dict[str, RouteState] = {}
        self.hub: Hub | None = None
        self.hub_pid: int | None = None
        self.hub_control_port: int | None = None

    # -- addressing --------------------------------------------------------------------------
    def dc_address(self, dc: str) -> str:
        """``127.0.k.1`` for the k-th data center of the topology."""
        return f"127.0.{self.topology.dcs.index(dc) + 1}.1"

    @staticmethod
    def route_name(src_dc: str, target: str) -> str:
        return f"{src_dc}-to-{target}"

    def _handle(self, name: str) -> ClusterNode:
        handle = self.nodes.get(name) or self.sentinels.get(name)
        if handle is None:
            raise ConfigError(f"no node or Sentinel named {name!r} in this cluster")
        return handle

    def front(self, name: str) -> tuple[str, int]:
        """The address every process and client uses for node or Sentinel ``name``."""
        handle = self._handle(name)
        if handle.front is None:
            raise InfrastructureError(f"{name} has no front address (the cluster is not up)")
        return handle.front

    def reach(self, src_dc: str, node_name: str) -> tuple[str, int]:
        """The address a process in ``src_dc`` uses for ``node_name``: its front, the same from
        everywhere (the front picks the route by the client's source address)."""
        if src_dc not in self.topology.dcs:
            raise ConfigError(f"no data center named {src_dc!r}")
        return self.front(node_name)

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """The Sentinels' fronts (a client in ``topology.client_dc`` reaches the others through
        their links)."""
        return [self.front(name) for name in self.sentinels]

    def startup_nodes(self) -> list[tuple[str, int]]:
        """redis-cluster: every data node's front, what a cluster client is given (redis-py's
        ``RedisCluster(startup_nodes=...)``); it learns the slot map from any one that answers."""
        return [self.front(name) for name in self.nodes]

    def sentinel_target(self) -> SentinelTarget:
        """What ``tally.store.discovery`` needs to find this cluster's primary."""
        return SentinelTarget(
            tuple(self.sentinel_addresses()), self.topology.master_name, password=self.password
        )

    def routes_between(self, dc_a: str, dc_b: str) -> list[str]:
        pair = self.topology.link(dc_a, dc_b).name
        return [r.name for r in self.routes.values() if r.pair == pair]

    # -- faults ------------------------------------------------------------------------------
    def partition(self, dc_a: str, dc_b: str, *, mode: str = "drop") -> None:
        for name in self.routes_between(dc_a, dc_b):
            self._hub().set_fault(name, "both", "partition", mode=mode)

    def heal(self, dc_a: str, dc_b: str) -> None:
        for name in self.routes_between(dc_a, dc_b):
            self._hub().clear(name, "partition")

    def isolate(self, dc: str, *, mode: str = "drop") -> None:
        for other in self.topology.dcs:
            if other != dc:
                self.partition(dc, other, mode=mode)

    def heal_all(self) -> None:
        for name in self.routes:
            self._hub().clear(name, "partition")

    def _hub(self) -> Hub:
        if self.hub is None:
            raise InfrastructureError("the cluster's proxy hub is not running")
        return self.hub

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Cluster:
        existing = read_state(self.base_dir)
        if existing is not None and any(
            p.pid is not None and pid_alive(p.pid) for p in existing.processes
        ):
            raise ConfigError(
                f"a cluster is already up in {self.base_dir}",
                hint="run `tally cluster down --topology ...` first",
            )
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._check_addresses()
        if self.topology.is_cluster:
            self._check_no_earlier_cluster()
        try:
            self._plan_processes()
            self._start_hub()
            self._add_routes()
            self._start_nodes()
            if self.with_sentinels:
                self._start_sentinels()
            self.save_state()
        except BaseException:
            with contextlib.suppress(TallyError):
                self.stop()
            raise
        return self

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _check_addresses(self) -> None:
        """Every data center's loopback address can be bound (Linux: all of 127.0.0.0/8)."""
        for dc in self.topology.dcs:
            host = self.dc_address(dc)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                try:
                    probe.bind((host, 0))
                except OSError as exc:
                    raise ConfigError(
                        f"cannot bind {host} for data center {dc}: {exc}",
                        hint="a cluster gives each data center its own loopback address "
                        "(127.0.k.1); on macOS add them with `sudo ifconfig lo0 alias 127.0.k.1`",
                    ) from exc

    def _check_no_earlier_cluster(self) -> None:
        """A redis-cluster is formed once: its nodes.conf names every node by the fronts of
        that run, and a new ``up`` has new ports, so an old node could never rejoin (and a
        fresh formation is refused: SET-CONFIG-EPOCH, ADDSLOTS). Refuse before starting."""
        stale = [
            n.name for n in self.topology.nodes if (self.base_dir / n.name / "nodes.conf").exists()
        ]
        if stale:
            raise ConfigError(
                f"{self.base_dir} holds an earlier cluster's nodes.conf ({', '.join(stale)})",
                hint="starting a stopped redis-cluster in place is not supported yet; move the "
                "base dir away (its data goes with it) or pass another --base-dir",
            )

    def _redis_node(self, name: str, **kwargs: Any) -> RedisNode:
        return RedisNode(
            name=name,
            dir=self.base_dir / name,
            binary=self.binary,
            die_with_parent=not self.detach,
            **kwargs,
        )

    def _plan_processes(self) -> None:
        for spec in self.topology.nodes:
            host = self.dc_address(spec.dc)
            # A cluster node's bus listens at data port + 10000: both must be free.
            port = free_port_pair(host, CLUSTER_BUS_PORT_OFFSET) if self.topology.is_cluster else 0
            node = self._redis_node(spec.name, host=host, port=port, password=self.password)
            self.nodes[spec.name] = ClusterNode(spec.name, spec.dc, node, spec.role)
            self._quarantine(self.nodes[spec.name])
        if self.with_sentinels:
            for s in self.topology.sentinels:
                node = self._redis_node(s.name, host=self.dc_address(s.dc), sentinel=True)
                self.sentinels[s.name] = ClusterNode(s.name, s.dc, node, "sentinel")

    # -- the sync quarantine (tally.ops.cluster.admission) -----------------------------------
    @property
    def quarantines(self) -> bool:
        """Hardened cluster nodes start with their replication user off; every start is judged."""
        return self.topology.is_cluster and self.topology.profile == "hardened"

    def _quarantine(self, handle: ClusterNode) -> None:
        if self.quarantines:
            handle.after_start = self.judge

    def judge(self, handle: ClusterNode) -> Admission:
        """Admit ``handle`` to serve syncs, or keep it out (the reason says why), against the
        other nodes of its shard in the topology."""
        shard = next(s for s in self.topology.shards if handle.name in {n.name for n in s.nodes})
        peers = {
            n.name: functools.partial(self.nodes[n.name].client, socket_timeout=2.0)
            for n in shard.nodes
            if n.name != handle.name and n.name in self.nodes
        }
        try:
            return judge(handle.name, functools.partial(handle.client, socket_timeout=5.0), peers)
        except (redis.RedisError, OSError) as exc:
            return Admission(handle.name, False, f"could not be judged: {exc}")

    def judge_all(self) -> list[Admission]:
        """``tally cluster admit``: every running node judged again."""
        out = []
        for handle in self.nodes.values():
            if handle.is_running():
                handle.admission = self.judge(handle)
                out.append(handle.admission)
        return out

    def _start_hub(self) -> None:
        if self.detach:
            self.hub_pid, self.hub_control_port = start_hub_daemon(self.base_dir)
            self.hub = ProxyControl(self.hub_control_port)
        else:
            self.hub = ProxyHub().start()

    def _add_routes(self) -> None:
        """Per process: one route from every data center, then its front (module doc); a
        redis-cluster node gets the same again for its cluster bus."""
        for target in [*self.nodes.values(), *self.sentinels.values()]:
            target.front = self._add_front(target, target.port, "")
            if self.topology.is_cluster and target.role != "sentinel":
                bus_port = target.port + CLUSTER_BUS_PORT_OFFSET
                target.bus_front = self._add_front(target, bus_port, "-bus")

    def _add_front(self, target: ClusterNode, port: int, suffix: str) -> tuple[str, int]:
        hub = self._hub()
        routes: dict[str, str] = {}
        for src_dc in self.topology.dcs:
            name = self.route_name(src_dc, target.name) + suffix
            upstream = ProxyLinkSpec(
                name, target.node.host, port, listen_host=target.node.host, listen=False
            )
            hub.add_link(upstream)
            routes[self.dc_address(src_dc)] = name
            pair = self.topology.link(src_dc, target.dc).name if src_dc != target.dc else ""
            self.routes[name] = RouteState(name, src_dc, target.name, pair, ("", 0))
            if pair:
                self._link_faults(name, self.topology.link(src_dc, target.dc))
        default = routes[self.dc_address(self.topology.client_dc)]
        front = hub.add_front(
            FrontSpec(target.name + suffix, default, routes, listen_host=target.node.host)
        )
        for name in routes.values():
            self.routes[name].listen = front
        return front

    def _link_faults(self, route: str, link: TopologyLink) -> None:
        hub = self._hub()
        if link.latency_ms > 0:
            hub.set_fault(route, "both", "latency", latency_ms=link.latency_ms)
        if link.bandwidth_bytes_per_s > 0:
            hub.set_fault(route, "both", "bandwidth", rate_bytes_s=link.bandwidth_bytes_per_s)

    def slowest_link_bytes_per_s(self) -> int:
        rates = [lk.bandwidth_bytes_per_s for lk in self.topology.links if lk.bandwidth_bytes_per_s]
        return min(rates, default=0)

    def _addressing(self, handle: ClusterNode) -> dict[str, ConfigValue]:
        """Outgoing connections leave from the data center's address; the bind is loopback
        only, so protected mode (which admits 127.0.0.1 alone) is off."""
        out: dict[str, ConfigValue] = {"protected-mode": "no"}
        if self.binary.at_least(7, 0):
            out["bind-source-addr"] = handle.node.host
        return out

    def directives_for(self, spec: NodeSpec) -> dict[str, ConfigValue]:
        if self.topology.is_cluster:
            return self._cluster_directives_for(spec)
        primary = self.topology.primary
        if spec.role == "primary":
            role = NodeRole(None, replicas_expected=len(self.topology.replicas))
        else:
            role = NodeRole(self.front(primary.name))
        handle = self.nodes[spec.name]
        front_host, front_port = self.front(spec.name)
        return {
            **node_directives(
                self.topology.profile,
                self.binary,
                role,
                params=self.params,
                password=self.password,
                slowest_link_bytes_per_s=self.slowest_link_bytes_per_s(),
            ),
            **self._addressing(handle),
            "replica-announce-ip": front_host,
            "replica-announce-port": front_port,
        }

    def _cluster_directives_for(self, spec: NodeSpec) -> dict[str, ConfigValue]:
        """Every node starts as an empty primary (a file's ``replicaof`` would make a cluster
        node refuse to start); formation gives it slots or a primary to replicate."""
        handle = self.nodes[spec.name]
        front_host, front_port = self.front(spec.name)
        if handle.bus_front is None:
            raise InfrastructureError(f"{spec.name} has no cluster bus front")
        replicas = len(self.topology.shard_of(spec.name).replicas)
        announce = ClusterAnnounce(front_host, front_port, handle.bus_front[1])
        return {
            **node_directives(
                self.topology.profile,
                self.binary,
                NodeRole(None, replicas_expected=replicas),
                params=self.params,
                password=self.password,
                slowest_link_bytes_per_s=self.slowest_link_bytes_per_s(),
            ),
            **cluster_node_directives(
                self.topology.profile, self.binary, handle.port, announce, params=self.params
            ),
            **self._addressing(handle),
            "replica-announce-ip": front_host,
            "replica-announce-port": front_port,
            **(sync_user_directives(self.password or "") if self.quarantines else {}),
        }

    def _start_nodes(self) -> None:
        if self.topology.is_cluster:
            self._start_cluster_nodes()
            return
        ordered = [self.topology.primary, *self.topology.replicas]
        for spec in ordered:
            handle = self.nodes[spec.name]
            handle.node.directives.update(self.directives_for(spec))
            handle.start()
        self.wait_replicas_in_sync()

    def _start_cluster_nodes(self) -> None:
        for spec in self.topology.nodes:
            handle = self.nodes[spec.name]
            handle.node.directives.update(self.directives_for(spec))
            handle.start()
        form_cluster(self)
        self.wait_replicas_in_sync()

    def sentinel_directives_for(self, handle: ClusterNode) -> dict[str, ConfigValue]:
        directives = sentinel_directives(
            self.topology.master_name,
            self.front(self.topology.primary.name),
            params=self.params,
            password=self.password,
            replicas=len(self.topology.nodes) - 1,
        )
        host, port = self.front(handle.name)
        monitor = directives.pop("sentinel")
        assert not isinstance(monitor, str | int)  # sentinel_directives returns its lines
        lines = [*monitor, f"announce-ip {host}", f"announce-port {port}"]
        return {**directives, **self._addressing(handle), "sentinel": lines}

    def _start_sentinels(self) -> None:
        for handle in self.sentinels.values():
            handle.node.directives.update(self.sentinel_directives_for(handle))
            handle.start()
        self.wait_sentinels_ready()

    def wait_replicas_in_sync(self, timeout_s: float = SYNC_TIMEOUT_S) -> None:
        """Every running replica reports ``master_link_status:up``, and the primary counts enough
        good replicas to accept writes (``min-replicas-to-write``: a replica's first ACK can
        arrive after its link is up, and until then the primary answers NOREPLICAS)."""
        deadline = time.monotonic() + timeout_s
        pending = [h for h in self.nodes.values() if h.is_running()]
        while pending and time.monotonic() < deadline:
            pending = [
                h for h in pending if not (_link_up_or_primary(h) and _enough_good_replicas(h))
            ]
            if pending:
                time.sleep(POLL_S)
        if pending:
            names = ", ".join(h.name for h in pending)
            raise ProcessError(f"replicas not in sync within {timeout_s}s: {names}")

    def wait_sentinels_ready(self, timeout_s: float = SENTINEL_READY_TIMEOUT_S) -> None:
        """Every Sentinel sees the primary and all other Sentinels (so a failover can start)."""
        others = len(self.sentinels) - 1
        deadline = time.monotonic() + timeout_s
        pending = list(self.sentinels.values())
        while pending and time.monotonic() < deadline:
            pending = [s for s in pending if _sentinel_peers(s, self.topology.master_name) < others]
            if pending:
                time.sleep(0.2)
        if pending:
            raise ProcessError(
                f"Sentinels did not find each other within {timeout_s}s: "
                + ", ".join(s.name for s in pending)
            )

    def stop(self) -> None:
        """Stop Sentinels first (no failover while stopping), then replicas, primary, proxies.
        Every process is tried; the first failure is raised at the end."""
        errors: list[Exception] = []
        order = [*self.sentinels.values(), *reversed(list(self.nodes.values()))]
        for handle in order:
            try:
                handle.stop()
            except (TallyError, OSError) as exc:
                errors.append(exc)
        self._stop_hub(errors)
        if self.detach or read_state(self.base_dir) is not None:
            self.save_state()
        if errors:
            raise errors[0]

    def _stop_hub(self, errors: list[Exception]) -> None:
        try:
            if isinstance(self.hub, ProxyHub):
                self.hub.stop()
            elif isinstance(self.hub, ProxyControl):
                self.hub.close()
            if self.hub_pid is not None:
                stop_hub_daemon(self.hub_pid)
        except (TallyError, OSError) as exc:
            errors.append(exc)
        self.hub, self.hub_pid = None, None

    # -- state ---------------------------------------------------------------------------------
    def state(self) -> ClusterState:
        processes = [
            ProcessState(
                h.name,
                h.dc,
                h.port,
                str(h.node.dir),
                h.pid,
                kind,
                h.role if kind == "node" else "",
                dict(h.node.directives),
                h.node.host,
                h.front,
                h.bus_front,
            )
            for kind, handles in (("node", self.nodes), ("sentinel", self.sentinels))
            for h in handles.values()
        ]
        return ClusterState(
            topology=self.topology.source,
            profile=self.topology.profile,
            password=self.password,
            hub_pid=self.hub_pid,
            hub_control_port=self.hub_control_port,
            processes=processes,
            routes=list(self.routes.values()),
        )

    def save_state(self) -> Path:
        return write_state(self.base_dir, self.state())

    @classmethod
    def attach(cls, topology: Topology, *, binary: RedisBinary | None = None) -> Cluster:
        """The cluster an earlier ``tally cluster up`` left running (from its state file)."""
        state = read_state(topology.base_dir)
        if state is None:
            raise ConfigError(
                f"no cluster state in {topology.base_dir}",
                hint="start one with `tally cluster up --topology ...`",
            )
        cluster = cls(
            topology.with_profile(state.profile),
            password=state.password,
            binary=binary,
            detach=True,
        )
        cluster.password = state.password
        for p in state.processes:
            node = cluster._redis_node(
                p.name,
                host=p.host,
                port=p.port,
                directives=dict(p.directives),
                sentinel=p.kind == "sentinel",
                password=state.password if p.kind == "node" else None,
            )
            handles = cluster.nodes if p.kind == "node" else cluster.sentinels
            handles[p.name] = ClusterNode(p.name, p.dc, node, p.role or "sentinel", p.pid)
            handles[p.name].front = p.front
            handles[p.name].bus_front = p.bus_front
            if p.kind == "node":
                cluster._quarantine(handles[p.name])
        cluster.routes = {r.name: r for r in state.routes}
        cluster.hub_pid, cluster.hub_control_port = state.hub_pid, state.hub_control_port
        if state.hub_control_port is not None and state.hub_pid and pid_alive(state.hub_pid):
            cluster.hub = ProxyControl(state.hub_control_port)
        return cluster

    # -- queries -------------------------------------------------------------------------------
    def primary(self) -> ClusterNode | None:
        """The running node that answers ROLE ``master`` (the first, if several do)."""
        primaries = self.primaries()
        return primaries[0] if primaries else None

    def primaries(self) -> list[ClusterNode]:
        """Every running node that answers ROLE ``master`` (one per shard in a redis-cluster)."""
        return [h for h in self.nodes.values() if h.is_running() and h.live_role() == "master"]


def _check_shards_can_write(topology: Topology, params: ProfileParams) -> None:
    """A shard with fewer replicas than ``min-replicas-to-write`` could never accept a write:
    say so before starting anything, not after a sync timeout."""
    for shard in topology.shards:
        if len(shard.replicas) < params.min_replicas_to_write:
            raise ConfigError(
                f"{topology.source}: shard {shard.name} has {len(shard.replicas)} replica(s) "
                f"but params.min_replicas_to_write = {params.min_replicas_to_write}: its "
                "primary would refuse every write",
                hint="add replicas (in other data centers: TP013) or lower "
                "params.min_replicas_to_write",
            )


def _link_up_or_primary(handle: ClusterNode) -> bool:
    try:
        with contextlib.closing(handle.client(socket_timeout=1.0)) as c:
            info = c.info("replication")
    except (redis.RedisError, OSError):
        return False
    return info.get("role") == "master" or info.get("master_link_status") == "up"


def _enough_good_replicas(handle: ClusterNode) -> bool:
    """True for a replica, and for a primary that counts at least ``min-replicas-to-write`` good
    replicas (the INFO field exists only while that setting is on)."""
    try:
        with contextlib.closing(handle.client(socket_timeout=1.0)) as c:
            info = c.info("replication")
            if info.get("role") != "master" or "min_slaves_good_slaves" not in info:
                return True
            wanted = int(c.config_get("min-replicas-to-write").get("min-replicas-to-write") or 0)
    except (redis.RedisError, OSError):
        return False
    return int(info["min_slaves_good_slaves"]) >= wanted


def _sentinel_peers(handle: ClusterNode, master_name: str) -> int:
    try:
        with contextlib.closing(handle.client(socket_timeout=1.0)) as c:
            raw = command(c, "SENTINEL", "MASTER", master_name)
    except (redis.RedisError, OSError):
        return -1
    info = raw if isinstance(raw, dict) else dict(zip(raw[::2], raw[1::2], strict=True))
    value = info.get(b"num-other-sentinels", info.get("num-other-sentinels", -1)) or -1
    return int(value)
