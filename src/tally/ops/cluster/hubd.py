"""The fault-proxy hub as a daemon for ``tally cluster up``: it must outlive the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tally.errors import ProcessError
from tally.ops.cluster.procs import stop_pid

READY_TIMEOUT_S = 15.0
_LAUNCH = "from tally.cli.main import main; main()"


def start_hub_daemon(base_dir: Path) -> tuple[int, int]:
    """Start ``tally proxy serve`` detached, with no links yet; returns (pid, control port)."""
    folder = Path(base_dir) / "proxy"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "links.toml"
    config.write_text("link = []\n")
    ready = folder / "ready.json"
    ready.unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-c",
        _LAUNCH,
        "proxy",
        "serve",
        "--config",
        str(config),
        "--control-port",
        "0",
        "--ready-file",
        str(ready),
    ]
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
