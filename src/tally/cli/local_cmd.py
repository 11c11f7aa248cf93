"""tally local up | down | status: one redis-server on loopback for this machine, kept in
$TALLY_HOME, with the hardened persistence settings (AOF + RDB, no eviction)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import click

from tally.cli.output import emit, handles_errors, json_option
from tally.config import LOCAL_STATE
from tally.errors import ProcessError
from tally.ops.binary import RedisBinary, find_redis_server
from tally.ops.node import RedisNode
from tally.ops.profiles import single_node_directives

STOP_WAIT_S = 15.0


def _home(home: str | None) -> Path:
    return Path(home or os.environ.get("TALLY_HOME") or ".tally")


def start_local(
    home: Path, *, port: int = 0, die_with_parent: bool = False, binary: RedisBinary | None = None
) -> RedisNode:
    binary = binary or find_redis_server()
    node = RedisNode(
        name="local",
        dir=home / "redis",
        port=port,
        binary=binary,
        directives=single_node_directives(binary),
        die_with_parent=die_with_parent,
    )
    node.start()
    (home / LOCAL_STATE).write_text(json.dumps({"redis_url": node.url, "pid": node.pid}))
    return node


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _state(home: Path) -> dict[str, Any] | None:
    path = home / LOCAL_STATE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else None


@click.group()
def local() -> None:
    """Run a local redis-server for tally on this machine (loopback only)."""


@local.command("up")
@click.option("--home", envvar="TALLY_HOME")
@click.option("--port", default=0, help="Port (default: a free one).")
@json_option
@handles_errors
def up(home: str | None, port: int, as_json: bool) -> None:
    """Start it in the background; later commands find it through $TALLY_HOME/local.json."""
    base = _home(home)
    state = _state(base)
    if state and isinstance(state.get("pid"), int) and _alive(int(state["pid"])):
        emit(as_json, state, f"already running: {state['redis_url']}")
        return
    base.mkdir(parents=True, exist_ok=True)
    node = start_local(base, port=port)
    emit(
        as_json,
        {"redis_url": node.url, "pid": node.pid},
        f"redis-server {node.server_binary.version_text} at {node.url} (pid {node.pid})",
    )


@local.command("down")
@click.option("--home", envvar="TALLY_HOME")
@json_option
@handles_errors
def down(home: str | None, as_json: bool) -> None:
    """Stop it (SHUTDOWN with a save of the live dataset)."""
    base = _home(home)
    state = _state(base)
    if not state:
        emit(as_json, {"stopped": False}, "not running")
        return
    pid = int(state["pid"])
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)  # redis saves and exits on SIGTERM
        deadline = time.monotonic() + STOP_WAIT_S
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            raise ProcessError(f"redis-server pid {pid} did not stop within {STOP_WAIT_S}s")
    (base / LOCAL_STATE).unlink()
    emit(as_json, {"stopped": True, "pid": pid}, f"stopped pid {pid}")


@local.command("status")
@click.option("--home", envvar="TALLY_HOME")
@json_option
@handles_errors
def status(home: str | None, as_json: bool) -> None:
    """Is it running, and where."""
    state = _state(_home(home))
    running = state is not None and _alive(int(state["pid"]))
    emit(
        as_json,
        {"running": running, **(state or {})},
        f"running at {state['redis_url']}" if running and state else "not running",
    )
