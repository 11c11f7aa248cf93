"""One redis-server process with its own generated config and data dir.

Readiness means PING answered (not LOADING), within a deadline. Stop is SHUTDOWN, then SIGTERM,
then SIGKILL, each with a deadline. By default the child dies with its parent (PR_SET_PDEATHSIG),
so a crashed test run leaves no orphan; ``tally cluster up`` turns that off on purpose.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tally.errors import ProcessError
from tally.ops.binary import RedisBinary, find_redis_server

ConfigValue = str | int | Sequence[str]

START_TIMEOUT_S = 20.0
PORT_LOW = 20000
PORT_PICKS_MAX = 50
_random = random.SystemRandom()
#: Ports this process handed out recently: never the same one twice while it may be unbound.
_handed_out: collections.deque[int] = collections.deque(maxlen=4096)
STOP_TIMEOUT_S = 15.0
#: A refused SHUTDOWN is retried this long (every SHUTDOWN_RETRY_S) before signals.
SHUTDOWN_REFUSED_S = 120.0
SHUTDOWN_RETRY_S = 0.2
_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, chosen BELOW the kernel's ephemeral range: ports from that
    range are also handed out as source ports of outgoing connections, so one picked there can be
    taken before the server binds it (seen under a busy test suite). Random over ~12,000 ports,
    so two picks racing each other are unlikely; still a race in principle, and not retried
    with another port: other processes (proxy routes, replicas) may already name this one."""
    low, high = _listen_range()
    for _ in range(PORT_PICKS_MAX):
        port = _random.randrange(low, high)
        if port in _handed_out:  # picked before but maybe not bound yet (a cluster picks all
            continue  # its ports first, then starts the nodes)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.append(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # crowded: let the kernel pick
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_port_pair(host: str, offset: int) -> int:
    """A free port ``p`` whose ``p + offset`` is free too, both below the ephemeral range (see
    :func:`free_port`): a Redis 6.2 cluster node listens for its bus at data port + 10000 and
    cannot be told otherwise."""
    low, high = _listen_range()
    high = min(high, 65536) - offset
    if high <= low:
        raise ProcessError(f"no port range below the ephemeral ports leaves room for +{offset}")
    for _ in range(PORT_PICKS_MAX):
        port = _random.randrange(low, high)
        if port in _handed_out or port + offset in _handed_out:
            continue
        if _bindable(host, port) and _bindable(host, port + offset):
            _handed_out.extend((port, port + offset))
            return port
    raise ProcessError(f"no free port pair (p, p + {offset}) on {host} in {PORT_PICKS_MAX} picks")


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _listen_range() -> tuple[int, int]:
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    return PORT_LOW, max(PORT_LOW + 1000, ephemeral_low)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def render_config(directives: Mapping[str, ConfigValue]) -> str:
    lines = []
    for key, value in directives.items():
        values = [value] if isinstance(value, str | int) else list(value)
        for one in values:
            text = str(one)
            lines.append(f'{key} "{text}"' if text == "" else f"{key} {text}")
    return "\n".join(lines) + "\n"


@dataclass
class RedisNode:
    name: str
    dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    directives: dict[str, ConfigValue] = field(default_factory=dict)
    binary: RedisBinary | None = None
    sentinel: bool = False
    die_with_parent: bool = True
    password: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Absolute: redis-server chdirs into `dir` and then resolves `logfile` from there.
        self.dir = Path(self.dir).absolute()
        self.binary = self.binary or find_redis_server()
        if self.port == 0:
            self.port = free_port(self.host)

    @property
    def server_binary(self) -> RedisBinary:
        """The binary this node runs (resolved at construction)."""
        if self.binary is None:
            raise ProcessError(f"node {self.name} has no redis-server binary")
        return self.binary

    # -- paths -------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.dir / ("sentinel.conf" if self.sentinel else "redis.conf")

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def base_directives(self) -> dict[str, ConfigValue]:
        base: dict[str, ConfigValue] = {
            "port": self.port,
            "bind": self.host,
            "dir": str(self.dir),
            "logfile": str(self.log_path),
            "daemonize": "no",
            "protected-mode": "yes",
        }
        if not self.sentinel:
            base.update({"save": "", "appendonly": "no", "dbfilename": "dump.rdb"})
            if self.password:
                base["requirepass"] = self.password
        return base

    def write_config(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        merged = {**self.base_directives(), **self.directives}
        self.config_path.write_text(render_config(merged))
        return self.config_path

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *, timeout_s: float = START_TIMEOUT_S, write_config: bool = True) -> None:
        if self.is_running():
            raise ProcessError(f"node {self.name} is already running (pid {self.pid})")
        if write_config:
            self.write_config()
        assert self.binary is not None
        argv = [str(self.binary.path), str(self.config_path)]
        if self.sentinel:
            argv.append("--sentinel")
        try:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
                # Own process group always: a terminal's Ctrl-C must reach tally, which then
                # drains and stops its children in order; PDEATHSIG still ties them to tally.
                start_new_session=True,
            )
        except OSError as exc:
            raise ProcessError(f"cannot start {argv[0]}: {exc}") from exc
        self.wait_ready(timeout_s=timeout_s)

    def client(self, **overrides: object) -> redis.Redis:
        options: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "password": self.password if not self.sentinel else None,
            "socket_timeout": 5.0,
            "socket_connect_timeout": 2.0,
            "retry": Retry(NoBackoff(), 0),
        }
        options.update(overrides)
        return redis.Redis(**options)  # type: ignore[arg-type]

    def wait_ready(self, *, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        last_error = "not tried"
        with contextlib.closing(self.client(socket_timeout=1.0)) as probe:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise ProcessError(
                        f"{self.name} exited with {self.process.returncode} during start; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                try:
                    if probe.ping():
                        return
                except redis.BusyLoadingError:
                    last_error = "LOADING"
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    last_error = str(exc)
                time.sleep(0.02)
        self.kill()
        raise ProcessError(
            f"{self.name} not ready within {timeout_s}s ({last_error}); log:\n{self.log_tail()}"
        )

    def stop(self, *, timeout_s: float = STOP_TIMEOUT_S, save: bool = False) -> None:
        """Stop and reap. ``save=False`` never lets a SHUTDOWN overwrite dump.rdb (the 2013
        follow-up defect: a default SHUTDOWN saves the empty dataset over the good snapshot)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._shutdown(save, timeout_s)
            self._wait_or_escalate(timeout_s)
        self.process = None

    def _shutdown(self, save: bool, timeout_s: float) -> None:
        with (
            contextlib.suppress(redis.RedisError, OSError),
            contextlib.closing(self.client(socket_timeout=timeout_s)) as c,
        ):
            send_shutdown(c, save=save, alive=self._alive)

    def _alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _wait_or_escalate(self, timeout_s: float) -> None:
        assert self.process is not None
        for sig in (None, signal.SIGCONT, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_s if sig is None else 5.0)
                return
            except subprocess.TimeoutExpired:
                continue
        raise ProcessError(f"{self.name} (pid {self.pid}) did not die after SIGKILL")

    def kill(self) -> None:
        """SIGKILL and reap: a crash, nothing saved."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self.process = None

    def pause(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def restart(self, *, directives: Mapping[str, ConfigValue] | None = None) -> None:
        self.stop()
        if directives is not None:
            self.directives.update(directives)
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_node(name: str, base_dir: Path, **kwargs: object) -> Iterator[RedisNode]:
    """Start a node, yield it, always stop it."""
    node = RedisNode(name=name, dir=Path(base_dir) / name, **kwargs)  # type: ignore[arg-type]
    node.start()
    try:
        yield node
    finally:
        node.stop()


def send_shutdown(client: redis.Redis, *, save: bool, alive: Callable[[], bool]) -> None:
    """SHUTDOWN SAVE|NOSAVE, retried while Redis refuses it (an error reply, e.g. "Writing
    initial AOF, can't exit" on a replica just synced with AOF on) for up to SHUTDOWN_REFUSED_S
    or until the process is gone: the signals that would follow kill it with nothing saved (or,
    SIGTERM with save points, save when NOSAVE was meant). Connection errors are the caller's."""
    deadline = time.monotonic() + SHUTDOWN_REFUSED_S
    while True:  # bounded by the deadline
        try:
            client.execute_command("SHUTDOWN", "SAVE" if save else "NOSAVE")  # type: ignore[no-untyped-call]
            return
        except redis.ResponseError:
            if time.monotonic() >= deadline or not alive():
                return
            time.sleep(SHUTDOWN_RETRY_S)


def orphan_pids(marker: str) -> list[int]:
    """redis-server processes whose working directory (redis chdirs into its ``dir``) lies under
    ``marker``: for tests that prove nothing was left behind. The command line is no use here:
    redis-server rewrites its process title."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if comm.startswith("redis-") and cwd.startswith(marker):
            found.append(int(entry.name))
    return found
