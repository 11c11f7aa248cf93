"""The gateway simulator as a child process: started on a loopback port (the kernel picks one
unless told), ready within a deadline, always stopped and reaped.

Readiness: the child writes ``simulator.json`` (its port) once it listens, and ``/v1/health``
answers. Stop: SIGTERM (uvicorn shuts down gracefully), then SIGKILL, each with a deadline. By
default the child dies with its parent (PR_SET_PDEATHSIG), so a crashed test run leaves no orphan.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tally.errors import ProcessError
from tally.gateway.client import HttpGateway, SimulatorAdmin
from tally.gateway.faults import Faults
from tally.gateway.records import export_jsonl
from tally.gateway.server import LOG_FILENAME, READY_FILENAME

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
_POLL_S = 0.02
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class SimulatorProcess:
    data_dir: Path
    #: 0: the kernel picks a free port at the first start; later restarts keep that port.
    port: int = 0
    host: str = "127.0.0.1"
    faults: Faults = field(default_factory=Faults)
    die_with_parent: bool = True
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)

    @property
    def url(self) -> str:
        if self.port == 0:
            raise ProcessError("the simulator has no port yet: start it first")
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILENAME

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "tally.gateway.server", "--host", self.host,
            "--port", str(self.port), "--data-dir", str(self.data_dir),
            "--faults-json", self.faults.to_json(),
        ]  # fmt: skip

    def start(self, *, timeout_s: float = START_TIMEOUT_S) -> None:
        if self.is_running():
            raise ProcessError(f"gateway simulator already running (pid {self.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ready_path = self.data_dir / READY_FILENAME
        ready_path.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            try:
                self.process = subprocess.Popen(
                    self.argv(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    preexec_fn=_die_with_parent if self.die_with_parent else None,
                    # Own process group always: a terminal's Ctrl-C must reach tally, which then
                    # drains and stops its children in order; PDEATHSIG still ties them to tally.
                    start_new_session=True,
                )
            except OSError as exc:
                raise ProcessError(f"cannot start the gateway simulator: {exc}") from exc
        self._wait_ready(ready_path, time.monotonic() + timeout_s)

    def _wait_ready(self, ready_path: Path, deadline: float) -> None:
        last_error = "no ready file yet"
        while time.monotonic() < deadline:
            self._raise_if_exited()
            if ready_path.is_file():
                self.port = int(json.loads(ready_path.read_text())["port"])
                try:
                    httpx.get(f"{self.url}/v1/health", timeout=1.0, trust_env=False)
                    return
                except httpx.HTTPError as exc:
                    last_error = repr(exc)
            time.sleep(_POLL_S)
        self.kill()
        raise ProcessError(f"gateway simulator not ready ({last_error}); log:\n{self.log_tail()}")

    def _raise_if_exited(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            code = self.process.returncode
            self.process = None
            raise ProcessError(
                f"gateway simulator exited with {code} during start; "
                f"log {self.log_path}:\n{self.log_tail()}"
            )

    def stop(self, *, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL; always reaps. Records are durable either way."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGCONT)  # a paused child cannot act on SIGTERM
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
            self.process = None
            return
        raise ProcessError(f"gateway simulator (pid {self.pid}) did not die after SIGKILL")

    def kill(self) -> None:
        """SIGKILL and reap: a crash. Committed records survive it."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered (a hung gateway)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def gateway(self, **options: Any) -> HttpGateway:
        return HttpGateway(self.url, **options)

    def admin(self) -> SimulatorAdmin:
        return SimulatorAdmin(self.url)

    def set_faults(self, **patch: Any) -> Faults:
        """Change faults at runtime; they are also kept for the next (re)start."""
        with self.admin() as admin:
            self.faults = admin.set_faults(**patch)
        return self.faults

    def export_jsonl(self, out_path: Path) -> int:
        return export_jsonl(self.data_dir, out_path)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> SimulatorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_simulator(data_dir: Path, **kwargs: Any) -> Iterator[SimulatorProcess]:
    """Start a simulator, yield it, always stop it."""
    simulator = SimulatorProcess(data_dir=Path(data_dir), **kwargs)
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()
