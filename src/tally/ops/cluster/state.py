"""The state file ``tally cluster up`` leaves in the base dir: what ``down``, ``status`` and
``node restart`` need to find every process again (pids, ports, folders, the proxy daemon)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tally.errors import ConfigError
from tally.ops.node import ConfigValue

STATE_FILE = "cluster-state.json"
STATE_VERSION = 2  # 2: per-data-center addresses and fronts


@dataclass
class ProcessState:
    name: str
    dc: str
    port: int
    dir: str
    pid: int | None
    kind: str  # "node" or "sentinel"
    role: str = ""  # the role at first start, for nodes
    directives: dict[str, ConfigValue] = field(default_factory=dict)
    host: str = "127.0.0.1"  # the real address (its data center's loopback address)
    front: tuple[str, int] | None = None  # the address everyone else uses
    bus_front: tuple[str, int] | None = None  # redis-cluster nodes: their cluster bus front


@dataclass
class RouteState:
    name: str
    src_dc: str
    node: str
    pair: str  # the topology link ("dc1-dc2"), "" inside one data center
    listen: tuple[str, int]  # the front this route serves


@dataclass
class ClusterState:
    topology: str
    profile: str
    password: str | None
    hub_pid: int | None
    hub_control_port: int | None
    processes: list[ProcessState]
    routes: list[RouteState]
    version: int = STATE_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> ClusterState:
        try:
            raw: dict[str, Any] = json.loads(text)
            if raw.get("version") != STATE_VERSION:
                raise ValueError(f"state version {raw.get('version')} != {STATE_VERSION}")
            processes = [
                ProcessState(**{**p, **{k: _address(p.get(k)) for k in ("front", "bus_front")}})
                for p in raw.pop("processes")
            ]
            routes = [RouteState(**{**r, "listen": tuple(r["listen"])}) for r in raw.pop("routes")]
            return cls(processes=processes, routes=routes, **raw)
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(
                f"{source} is not a tally cluster state file of this version: {exc}",
                hint="stop leftover processes by hand (their pids are in the file), "
                "then delete the file",
            ) from exc


def _address(raw: Any) -> tuple[str, int] | None:
    return (str(raw[0]), int(raw[1])) if raw else None


def state_path(base_dir: Path) -> Path:
    return Path(base_dir) / STATE_FILE


def write_state(base_dir: Path, state: ClusterState) -> Path:
    """Atomic, and readable only by its owner: it holds the Redis password."""
    path = state_path(base_dir)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(state.to_json())
    tmp.replace(path)
    return path


def read_state(base_dir: Path) -> ClusterState | None:
    path = state_path(base_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return ClusterState.from_json(text, str(path))
