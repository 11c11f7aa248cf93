"""The embedded Redis of ``tally serve``: one redis-server on loopback in $TALLY_HOME/redis with
the single-node profile (``tally.ops.profiles.single_node_directives``: hardened persistence,
AOF everysec + RDB snapshots, noeviction, a password), kept across restarts of tally (same dir,
same port when free, same password)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
from pathlib import Path

from tally.config import LOCAL_STATE
from tally.ops.binary import RedisBinary, find_redis_server
from tally.ops.node import RedisNode
from tally.ops.profiles import single_node_directives

SECRET_FILE = "redis.secret"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _password(home: Path) -> str:
    path = home / SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_hex(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password)
    return password


def _previous_port(home: Path) -> int:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        port = int(json.loads((home / LOCAL_STATE).read_text())["port"])
        if port > 0 and _port_free(port):
            return port
    return 0


def embedded_node(home: Path, *, port: int = 0, binary: RedisBinary | None = None) -> RedisNode:
    """Not started yet. Dies with this process (PR_SET_PDEATHSIG): a crash leaves no orphan.
    ``binary``: the redis-server to run (default: the one tally finds)."""
    binary = binary or find_redis_server()
    password = _password(home)
    return RedisNode(
        name="local",
        dir=home / "redis",
        port=port or _previous_port(home),
        binary=binary,
        # One primary, no replica; sized like the hardened profile (preflight judges it so).
        directives=single_node_directives(binary, password=password),
        die_with_parent=True,
        password=password,
    )


def record(home: Path, node: RedisNode) -> None:
    """Where other tally commands (``tally rebuild --home``) find it while serve runs."""
    state = {"redis_url": node.url, "pid": node.pid, "port": node.port, "owner": "serve"}
    path = home / LOCAL_STATE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(state))
    os.replace(tmp, path)  # atomic: a reader sees the old state or the new, never an empty file


def forget(home: Path) -> None:
    path = home / LOCAL_STATE
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("owner") == "serve":
            path.unlink()
