"""``tally serve --workers N``: N processes serve one port; everything else runs once.

The parent (``Service``) starts the deployment as for one process (embedded redis-server,
ledger, store check, preflight, drainer, pending-credit applier, recharge completer, the
redis-server supervisor), binds the listening sockets, and starts N HTTP worker processes,
each on its own socket of one ``SO_REUSEPORT`` group (``listening_sockets``: the kernel spreads
the connections). A worker opens its own connections to the same deployment
(``open_deployment``) and serves the API; it runs no background work. Shutdown: the parent
sends SIGTERM to every worker; each stops accepting and finishes its in-flight requests
(uvicorn's graceful shutdown, bounded); then the parent stops its background work and drains
the journal (``Service.stop``).

Why the socket is made here, with ``IPPROTO_TCP`` named: asyncio sets TCP_NODELAY on accepted
connections only when the listening socket's ``proto`` is ``IPPROTO_TCP``; uvicorn's
``--workers`` binds with ``socket.socket(family)`` (proto 0), so every response written in two
segments waited for the client's delayed ACK: the ~44 ms stall per response measured in
CEILINGS.md (README, Benchmarks, reproduces it and shows it gone).

Metrics: the API counters and histograms use prometheus-client's multiprocess mode (files in
``$TALLY_HOME/metrics``, wiped at start), so any worker's ``/metrics`` counts every worker's
requests; gauges read at scrape time (readiness, lag) are the same from any worker.

API keys: each worker caches a verified key for ``ApiContext.key_cache_s`` (5 s); a revoked key
stops working in every worker within that bound.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from tally.errors import ConfigError

log = logging.getLogger("tally.service")

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_PR_SET_PDEATHSIG = 1
WORKERS_MAX = 64
WORKER_STOP_S = 15.0
RESTARTS_MAX = 10


EXPORT_FILE = "parent.json"
EXPORT_PACE_S = 0.5


def export_parent_metrics(metrics_dir: Path, gate_metrics: Any, circuit: Any) -> int:
    """What only the parent knows (the completer's waits, the gateway circuit it trips), for the
    workers' /metrics: written atomically every EXPORT_PACE_S (so at most that stale)."""
    state = {
        "waits": dict(gate_metrics.waits) if gate_metrics is not None else {},
        "circuit": None
        if circuit is None
        else {
            "failures": circuit.failures,
            "opened_at_s": circuit.opened_at_s,
            "blocked": circuit.blocked(),
        },
    }
    tmp = metrics_dir / (EXPORT_FILE + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, metrics_dir / EXPORT_FILE)
    return 0  # a pace of its own, never "busy"


class _ParentView:
    """The parent's exported gate metrics and circuit, read at scrape time in a worker."""

    def __init__(self, metrics_dir: Path) -> None:
        self.path = metrics_dir / EXPORT_FILE

    def _state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def waits(self) -> dict[str, int]:
        return dict(self._state().get("waits") or {})

    def _circuit(self) -> dict[str, Any]:
        return dict(self._state().get("circuit") or {})

    def blocked(self) -> str | None:
        return self._circuit().get("blocked")

    @property
    def failures(self) -> int:
        return int(self._circuit().get("failures") or 0)

    @property
    def opened_at_s(self) -> float | None:
        return self._circuit().get("opened_at_s")


def die_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when its parent dies (even by SIGKILL): an orphaned worker would
    keep the port and serve without the drainer and the rest."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # it died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


def listening_socket(
    host: str, port: int, backlog: int = 2048, *, reuse_port: bool = False, listen: bool = True
) -> socket.socket:
    """TCP, named as such (see the module docstring: TCP_NODELAY on accepted connections)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; another tally serve or "
            "program may hold that port: stop it or choose another with --port (TALLY_PORT)"
        ) from exc
    if listen:
        sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """The listening sockets of ``count`` HTTP workers, one each. One process: one plain
    socket. Several: one socket per worker, all on host:port with ``SO_REUSEPORT``, so the
    kernel spreads new connections over the workers by a hash of each connection. With one
    socket shared by every worker, whichever worker woke first accepted a burst: 64
    connections opened at once went 51 to one worker and 13 to the other (measured, README
    "Benchmarks"), the first saturated while the second idled. They are all bound here, in the
    parent, so a port in use fails before any worker starts, and stay open here, so connections
    queued for a worker that is being restarted wait for it.

    Linux lets any process of the same user join a ``SO_REUSEPORT`` group: a second
    ``tally serve --workers N`` on the same port joined the first one's, and the kernel split
    the requests between two deployments and their ledgers (seen: both printed "serving").
    So the port is claimed first by a socket WITHOUT ``SO_REUSEPORT``, which any listener there
    refuses (``ConfigError``), and released just before the group binds it."""
    if count == 1:
        return [listening_socket(host, port)]
    bound = claim_port(host, port)  # the port the kernel chose when asked for 0
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(listening_socket(host, bound, reuse_port=True))
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def claim_port(host: str, port: int) -> int:
    """Bind (never listen, so no connection is taken and dropped) a socket without
    ``SO_REUSEPORT`` on host:port, then close it: the port it got, or ``ConfigError`` when
    something listens there. ``tally serve`` also asks at the start of its start-up, so a
    port in use is said before a deployment is created or a key printed."""
    with contextlib.closing(listening_socket(host, port, listen=False)) as claim:
        return int(claim.getsockname()[1])


def prepare_metrics_dir(home: Path) -> Path:
    """A fresh directory for multiprocess metrics (stale files would count old processes)."""
    path = home / "metrics"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@dataclass
class WorkerSpec:
    settings: Any  # tally.config.Settings (picklable)
    readiness: Any  # ReadinessBounds
    gateway_url: str | None
    http: str
    loop: str
    graceful_s: float
    metrics_dir: str
    parent_pid: int
    #: "uvicorn" (on the parent's socket) or "granian" (binds host:port itself, SO_REUSEPORT).
    server: str = "uvicorn"
    host: str = "127.0.0.1"
    port: int = 0


def worker_main(spec: WorkerSpec, sock: socket.socket | None, index: int) -> None:
    """One HTTP worker process: its own connections, the shared socket, no background work."""
    die_with_parent(spec.parent_pid)
    import uvicorn

    from tally.api import create_app
    from tally.bootstrap import open_deployment
    from tally.service.api_wiring import build_api, serve_granian, serve_uvicorn
    from tally.service.health import HealthProbe
    from tally.service.http_protocol import http_impl
    from tally.service.operations import Operations
    from tally.service.workers import DrainService

    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s worker-{index} %(message)s")
    dep = open_deployment(spec.settings)
    gateway = None
    # Its own +switch-master listener (Sentinel only): /metrics from any worker counts failovers.
    failovers = dep.watch_failovers(lambda _event: None)
    try:
        probe = HealthProbe(dep, spec.readiness)
        operations = Operations(dep, DrainService(dep))
        extension = _recharge_extension(dep, probe, spec.gateway_url, Path(spec.metrics_dir))
        gateway = extension.gateway
        parts = build_api(dep, probe, operations, extension, failovers)
        if spec.server == "granian":
            serve_granian(
                create_app(parts.context), spec.host, spec.port, parts.debits, loop=spec.loop
            )
            probe.stopping.set()
            return
        assert sock is not None
        config = uvicorn.Config(
            create_app(parts.context),
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=int(spec.graceful_s),
            lifespan="off",
            http=http_impl(spec.http),
            loop=spec.loop,
        )
        server = uvicorn.Server(config)
        # uvicorn re-raises the SIGTERM it caught once it has stopped: with the default handler
        # that would end this process there, before the async pool, the listener and the
        # deployment are closed. This one stops the server (also when a signal lands before
        # uvicorn has installed its own) and lets the closing below run.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda _s, _f: setattr(server, "should_exit", True))
        serve_uvicorn(server, sock, parts.debits)  # closes the async pool when stopped
        probe.stopping.set()
    finally:
        if failovers is not None:
            failovers.stop()
        if gateway is not None:
            with contextlib.suppress(Exception):
                gateway.close()
        with contextlib.suppress(Exception):
            dep.close()


def _recharge_extension(dep: Any, probe: Any, gateway_url: str | None, metrics_dir: Path) -> Any:
    """The recharge routes in a worker: the same wiring as the parent's, without the completer
    (that runs once, in the parent); its waits and circuit come from the parent's export."""
    from tally.api.routes.recharges import RechargeExtension
    from tally.billing import recharge as rc
    from tally.bootstrap import recharging
    from tally.gateway.client import HttpGateway, SimulatorAdmin
    from tally.gateway.records import Record

    if gateway_url is None:
        return RechargeExtension(rc.RechargeService(dep.engine))
    gateway = HttpGateway(gateway_url)
    wiring = recharging(dep, gateway)  # the one composition root (its probe follows failovers)

    def records() -> list[Record]:
        """The gateway's own records (the simulator exports them), for remediation."""
        with SimulatorAdmin(gateway_url) as admin:
            return list(admin.iter_records())

    view: Any = _ParentView(metrics_dir)  # reads like GateMetrics and Circuit do
    return RechargeExtension(
        wiring.service,
        circuit=view,
        gate_metrics=view,
        gateway=gateway,
        records=records,
        gate_reason=wiring.gate.why_not,
    )


class WorkerProcesses:
    """The parent's side: start, watch (restart a worker that died, bounded), stop."""

    def __init__(self, spec: WorkerSpec, socks: list[socket.socket], count: int) -> None:
        """``socks``: one listening socket per worker (``listening_sockets``), or none when
        each worker binds its own (granian)."""
        if not 1 <= count <= WORKERS_MAX:
            raise ValueError(f"workers must be 1..{WORKERS_MAX}")
        if socks and len(socks) != count:
            raise ValueError(f"{count} workers need {count} sockets, got {len(socks)}")
        self.spec, self.socks, self.count = spec, socks, count
        self._ctx = multiprocessing.get_context("spawn")
        self.processes: list[BaseProcess] = []
        self.restarts = 0

    def _spawn(self, index: int) -> BaseProcess:
        sock = self.socks[index] if self.socks else None
        process = self._ctx.Process(
            target=worker_main, args=(self.spec, sock, index), name=f"tally-http-{index}"
        )
        process.start()
        return process

    def start(self) -> None:
        # Inherited by the workers: prometheus-client picks its mode when it is first imported,
        # which in a spawned worker happens while unpickling its arguments.
        os.environ[METRICS_DIR_ENV] = self.spec.metrics_dir
        self.processes = [self._spawn(i) for i in range(self.count)]

    def watch_once(self) -> int:
        """Restart workers that exited on their own; the number restarted."""
        restarted = 0
        for i, process in enumerate(self.processes):
            if process.is_alive() or self.restarts >= RESTARTS_MAX:
                continue
            log.warning("HTTP worker %d exited (code %s); restarting it", i, process.exitcode)
            self.restarts += 1
            self.processes[i] = self._spawn(i)
            restarted += 1
        return restarted

    def stop(self, timeout_s: float = WORKER_STOP_S) -> list[int | None]:
        """SIGTERM to every worker (each finishes its in-flight requests), then wait, bounded;
        a worker still running after that is killed. Returns the exit codes."""
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("HTTP worker %s did not stop within %ss: killed", process.pid, timeout_s)
                process.kill()
                process.join(5)
        return [p.exitcode for p in self.processes]
