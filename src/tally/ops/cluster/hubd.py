"""The fault-proxy hub as a daemon for ``tally cluster up``: it must outlive the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tally.errors import ProcessError
from tally.ops.cluster.procs import stop_pid
from tally.ops.faultproxy import ProxyHub, serve

READY_TIMEOUT_S = 15.0
_LAUNCH = "from tally.ops.cluster.hubd import main; main()"


def start_hub_daemon(base_dir: Path) -> tuple[int, int]:
    """Start a proxy hub daemon (``faultproxy.serve``) detached, with no links yet; returns
    (pid, control port)."""
    folder = Path(base_dir) / "proxy"
    folder.mkdir(parents=True, exist_ok=True)
    ready = folder / "ready.json"
    ready.unlink(missing_ok=True)
    argv = [sys.executable, "-c", _LAUNCH, str(ready)]
    with (folder / "proxy.log").open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=folder,
            start_new_session=True,
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ProcessError(
                f"fault proxy daemon exited with {process.returncode}; log {folder / 'proxy.log'}"
            )
        if ready.exists():
            info = json.loads(ready.read_text())
            process.returncode = 0  # detached on purpose: never reaped here, no warning
            return int(info["pid"]), int(info["control_port"])
        time.sleep(0.05)
    process.kill()
    process.wait(5)
    raise ProcessError(f"fault proxy daemon not ready within {READY_TIMEOUT_S}s")


def stop_hub_daemon(pid: int) -> None:
    stop_pid(pid, timeout_s=10.0)


def main() -> None:
    """The daemon: an empty hub (the cluster adds links through the control port)."""
    serve(ProxyHub(), 0, Path(sys.argv[1]))
