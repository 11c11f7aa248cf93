"""``tally serve`` as a real child process for end-to-end tests: a free loopback port, its own
$TALLY_HOME, ready when /healthz answers (with a deadline), always stopped and reaped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from tally.config import child_env
from tally.ops.node import free_port

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
POLL_S = 0.05


@dataclass
class Served:
    home: Path
    port: int = 0
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    admin_key: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home.parent / f"{self.home.name}-serve.log"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, *, wait: bool = True) -> None:
        self.port = self.port or free_port()
        env = child_env()
        argv = [sys.executable, "-m", "tally.cli.serve_cmd", "--home", str(self.home)]
        argv += ["--port", str(self.port), *self.extra_args]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=log, env=env, stdin=subprocess.DEVNULL
            )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"tally serve exited with {self.process.returncode}:\n{self.output()}"
                )
            try:
                if (
                    httpx.get(f"{self.url}/healthz", timeout=1.0, trust_env=False).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(POLL_S)
        else:
            self.kill()
            raise AssertionError(f"tally serve not up within {START_TIMEOUT_S}s:\n{self.output()}")
        self.admin_key = None
        for line in self.output().splitlines():
            if "admin API key" in line:
                self.admin_key = line.rsplit(" ", 1)[-1].strip()

    def wait_exit(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        assert self.process is not None
        code = self.process.wait(timeout=timeout_s)
        self.process = None
        return code

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process is None:
            return 0
        self.process.send_signal(sig)
        try:
            return self.wait_exit()
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    # -- the embedded redis-server it runs -------------------------------------------------------
    def local_state(self) -> dict[str, Any]:
        data = json.loads((self.home / "local.json").read_text())
        assert isinstance(data, dict)
        return data

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.local_state()["redis_url"], socket_timeout=5)

    def gateway_url(self) -> str:
        """The embedded gateway simulator's URL, as ``tally serve`` announced it."""
        for line in self.output().splitlines():
            if "gateway simulator (dev mode) at " in line:
                return line.rsplit(" ", 1)[-1].strip()
        raise AssertionError(f"tally serve announced no gateway simulator:\n{self.output()}")

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.admin_key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0, trust_env=False)


def gateway_pids(marker: str) -> list[int]:
    """Simulator processes whose command line names a data dir under ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "tally.gateway.server" in cmdline and marker in cmdline:
            found.append(int(entry.name))
    return found
