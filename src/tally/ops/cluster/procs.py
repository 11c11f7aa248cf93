"""Stopping redis-server processes that are not our children (started by an earlier
``tally cluster up``), with deadlines and a SIGKILL fallback."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tally.errors import ProcessError
from tally.ops.node import send_shutdown

POLL_S = 0.05


def command(client: Any, *args: object) -> Any:
    """redis-py's ``execute_command`` is untyped; the escape hatch lives here."""
    return client.execute_command(*args)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def pid_is_under(pid: int, folder: Path) -> bool:
    """The pid still belongs to a process working in ``folder`` (guards against pid reuse)."""
    try:
        return os.readlink(f"/proc/{pid}/cwd").startswith(str(folder))
    except OSError:
        return False


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(POLL_S)
    return not pid_alive(pid)


def stop_pid(
    pid: int,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    password: str | None = None,
    folder: Path | None = None,
    timeout_s: float = 10.0,
    save: bool = False,
) -> None:
    """SHUTDOWN (if ``port``), then SIGCONT+SIGTERM, then SIGKILL, each with a deadline."""
    if not pid_alive(pid) or (folder is not None and not pid_is_under(pid, folder)):
        return
    if port is not None:
        with contextlib.suppress(redis.RedisError, OSError):
            client = redis.Redis(
                host=host,  # where the process binds: 127.0.k.1 for data center k
                port=port,
                password=password,
                socket_timeout=timeout_s,
                socket_connect_timeout=1.0,
                retry=Retry(NoBackoff(), 0),
            )
            with contextlib.closing(client):
                send_shutdown(client, save=save, alive=lambda: pid_alive(pid))
        if wait_gone(pid, timeout_s):
            return
    for sig, wait_s in ((signal.SIGCONT, 0.0), (signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if wait_gone(pid, wait_s):
            return
    raise ProcessError(f"pid {pid} did not die after SIGKILL")
