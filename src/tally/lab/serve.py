"""The subject: real ``tally serve`` processes, started with the command line an operator types.

One per data center (dc1 and dc2), sharing one ledger of record, each pointed at the topology's
Sentinels with a ``sentinel://`` URL (2013: the primary's address) and each reaching Redis and
Sentinel only through the fault-proxy fronts, on its own data center's routes.

How a serve's traffic stays on its data center's links: a front picks the route by the client's
SOURCE address (``127.0.k.1`` for the k-th data center; ``tally.ops.cluster``), and Sentinel
answers with the fronts' addresses, so per-DC ports would not survive a discovery. redis-py
cannot choose a source address, so ``tally serve`` has ``--source-address`` (bind every outgoing
TCP connection of the process to that address first; an operator on a multi-homed host uses it
the same way): each serve runs with its data center's address, and the fronts route it as a
process of that data center, through that data center's links and partitions.

Lifecycle: ``start`` (waits until ``/readyz`` answers), ``interrupt`` (SIGINT: the clean
shutdown, which drains; its exit code is kept), ``kill`` (SIGKILL), ``pause``/``resume``
(SIGSTOP/SIGCONT), ``restart`` (the same command line again). Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tally.errors import ProcessError

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
POLL_S = 0.1
ADMIN_KEY = re.compile(r"admin API key \(shown once, keep it\): (\S+)")
#: what the first start prints once the new deployment's epoch is in the store and the ledger
INITIALISED = re.compile(r"initialised a new deployment")


@dataclass
class ServeProcess:
    """One ``tally serve`` of the lab, in data center ``dc``."""

    name: str
    dc: str
    host: str
    port: int
    home: Path
    redis_url: str
    ledger_url: str
    gateway_url: str
    source_address: str
    skip_preflight: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    exits: list[int] = field(default_factory=list)  # every exit code seen, in order
    starts: int = 0
    paused: bool = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home.parent / f"{self.name}.log"

    def argv(self) -> list[str]:
        """What an operator types (``python -m tally serve ...``), with this DC's address."""
        argv = [sys.executable, "-m", "tally", "serve",
                "--home", str(self.home), "--host", self.host, "--port", str(self.port),
                "--redis-url", self.redis_url, "--ledger-url", self.ledger_url,
                "--gateway-url", self.gateway_url, "--source-address", self.source_address,
                "--loop", "asyncio", "--workers", "1"]  # fmt: skip
        if self.skip_preflight:
            argv.append("--skip-preflight")
        return argv

    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        self.launch()
        self.wait_ready(timeout_s)

    def launch(self) -> None:
        """The process, without waiting for it to answer (``wait_ready``)."""
        if self.is_running():
            return
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(self.argv())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )  # fmt: skip
        self.starts += 1
        self.paused = False

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.exits.append(int(self.process.returncode))
                raise ProcessError(
                    f"{self.name} exited with {self.process.returncode} while starting; "
                    f"see {self.log_path}"
                )
            if self._answers():
                return
            time.sleep(POLL_S)
        self.kill()
        raise ProcessError(f"{self.name} did not answer within {timeout_s}s; see {self.log_path}")

    def _answers(self) -> bool:
        try:
            r = httpx.get(f"{self.url}/healthz", timeout=1.0, trust_env=False)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def wait_printed(self, pattern: re.Pattern[str], timeout_s: float = START_TIMEOUT_S) -> bool:
        """Until the process's output shows ``pattern`` (False: it exited or the time ran out)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if pattern.search(self.log_path.read_text(errors="replace")):
                    return True
            if not self.is_running():
                return False
            time.sleep(POLL_S)
        return False

    def admin_key(self) -> str | None:
        """The key the first start printed (the deployment's first serve prints it once)."""
        with contextlib.suppress(OSError):
            found = ADMIN_KEY.search(self.log_path.read_text(errors="replace"))
            if found:
                return found.group(1)
        return None

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL, reaped (bounded)."""
        if self.process is None:
            return
        self._signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT_S)
        if self.process.returncode is not None:
            self.exits.append(int(self.process.returncode))
        self.process = None
        self.paused = False

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    def interrupt(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Ctrl-C, as an operator stops it: in-flight requests finish, the journal drains, the
        process exits. Its exit code (None: it had to be killed after ``timeout_s``)."""
        self.send_interrupt()
        return self.wait_exit(timeout_s)

    def send_interrupt(self) -> None:
        if self.process is not None:
            self.resume()
            self._signal(signal.SIGINT)

    def wait_exit(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """After ``send_interrupt``: the exit code, or None when it had to be killed."""
        if self.process is None:
            return None
        try:
            code: int | None = int(self.process.wait(timeout_s))
        except subprocess.TimeoutExpired:
            code = None
            self._signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_TIMEOUT_S)
        if code is not None:
            self.exits.append(code)
        self.process = None
        return code

    def restart(self) -> None:
        """The same command line again (after a kill, or a stop)."""
        if self.is_running():
            self.kill()
        self.start()


def lab_processes(marker: str) -> list[int]:
    """Processes (other than this one and its parent) whose command line names ``marker`` or whose working
    directory lies under it: a lab run's serve processes name their run directory in
    ``--home``; for the test that nothing is left after a run."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (os.getpid(), os.getppid()):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().split(") ", 1)[1][:1]
        except (OSError, IndexError):
            continue
        if state == "Z":
            continue
        if marker in cmdline or cwd.startswith(marker):
            found.append(int(entry.name))
    return found
