"""``tally serve``: start everything in order, serve, and stop everything in reverse order.

Start: the embedded redis-server (unless a Redis URL or Sentinel is given), the ledger (migrated),
the store check (a new deployment is initialised only when BOTH the ledger and Redis are empty;
an empty or foreign store under an existing ledger is refused, naming ``tally rebuild``),
preflight on the live node, the engine, the gateway simulator (dev, unless a gateway URL is
given), an admin API key on first start, the workers (drainer, pending-credit applier, and the
supervisor of the embedded redis-server), and only then the HTTP listener.

Stop (SIGINT/SIGTERM): readiness says ``shutting_down``; uvicorn stops accepting and lets
in-flight requests finish; the workers stop; pending credits are applied and the journal drained
into the ledger; the simulator and redis-server stop and are reaped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import redis
import uvicorn

from tally.api import create_app
from tally.api.routes.recharges import RechargeExtension
from tally.billing import recharge as rc
from tally.billing.recharge.health import cluster_shard_states
from tally.bootstrap import (
    Deployment,
    _safe,
    cluster_store,
    initialise_store,
    open_deployment,
    recharging,
    redis_client,
)
from tally.config import Settings
from tally.domain.holds import HOLD_SWEEP_MAX
from tally.errors import (
    ConfigError,
    InfrastructureError,
    StoreLoading,
    StoreLost,
    StoreNotEnoughReplicas,
    StoreReadOnly,
    StoreUnavailable,
    TallyError,
)
from tally.gateway.client import HttpGateway, SimulatorAdmin
from tally.gateway.process import SimulatorProcess
from tally.gateway.records import Record
from tally.ledger.sql_api_keys import ApiKeyStore, Scope
from tally.ledger.sql_ledger import SqlLedger
from tally.ops.node import RedisNode
from tally.ops.preflight import PreflightParams, Severity, check_cluster_live, check_live
from tally.ops.signals import SignalStop
from tally.service import embedded
from tally.service.api_wiring import (
    ApiParts,
    build_api,
    require_server,
    serve_granian,
    serve_uvicorn,
)
from tally.service.delivery import DeliveryWorker, delivery_owner
from tally.service.health import HealthProbe, ReadinessBounds
from tally.service.http_protocol import http_impl
from tally.service.http_workers import (
    EXPORT_PACE_S,
    WorkerProcesses,
    WorkerSpec,
    claim_port,
    export_parent_metrics,
    listening_sockets,
    prepare_metrics_dir,
)
from tally.service.operations import Operations, reapply_credits
from tally.service.workers import (
    ADMISSION_SWEEP_S,
    HOLD_SWEEP_IDLE_S,
    DrainService,
    Worker,
    admission_sweeper,
    credit_applier,
    hold_sweeper,
)
from tally.store.discovery import CLUSTER_SCHEME, SwitchMaster, SwitchMasterListener
from tally.store.epoch import read_epochs
from tally.store.keys import KeyLayout
from tally.sync.cluster_route import is_cluster
from tally.sync.rebuild import init_store, rebuild
from tally.sync.shard_rebuild import rebuild_cluster_shard

log = logging.getLogger("tally.service")

GRACEFUL_S = 10
WORKER_STOP_S = 30.0
SUPERVISOR_RESTARTS_MAX = 20
#: sentinel://: how long a start waits for a primary while a failover is under way
STARTUP_PRIMARY_WAIT_S = 30.0
STARTUP_PRIMARY_PACE_S = 0.5
STARTUP_PRIMARY_SAY_EVERY = 10  # one "waiting for the primary" line per this many attempts
COMPLETER_BATCH = 100
#: A recharge the completer touched (or a debit opened) this recently is left for the next round:
#: a waiting recharge is re-checked about twice a second, not in a tight loop.
COMPLETER_SETTLE_MS = 300
STOP_ORDER = {"recharges": 0, "supervisor": 2}


@dataclass
class ServeOptions:
    home: Path
    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: str | None = None  # redis://... or sentinel://...; None: embedded
    ledger_url: str | None = None
    gateway_url: str | None = None  # None: the simulator in dev mode (unless no_gateway)
    no_gateway: bool = False
    rebuild_if_lost: bool = False
    preflight: bool = True
    readiness: ReadinessBounds = field(default_factory=ReadinessBounds)
    #: The HTTP stack (see README, Benchmarks: chosen by measurement).
    http: str = "httptools"  # or "h11"
    loop: str = "uvloop"  # or "asyncio"
    #: HTTP worker processes; 1 serves in this process (see service/http_workers.py).
    workers: int = 1
    #: "uvicorn" (default: chosen by measurement, README) or "granian" (the `bench` extra).
    server: str = "uvicorn"


def _is_empty(client: redis.Redis) -> bool:
    try:
        return int(client.dbsize()) == 0
    except redis.RedisError as exc:
        raise StoreLost(f"cannot read the store: {exc}") from exc


def prepare_store(settings: Settings, *, rebuild_if_lost: bool, say: Callable[[str], None]) -> None:
    """The epoch check before anything writes: init a brand-new deployment, accept a store that
    holds the ledger's current epoch, refuse anything else (or rebuild it when asked)."""
    url = settings.require_redis_url()  # sentinel://: the primary Sentinel names now
    if url.startswith(CLUSTER_SCHEME):
        _prepare_cluster_store(settings, rebuild_if_lost=rebuild_if_lost, say=say)
        return
    with (
        SqlLedger.open(settings.ledger_url) as ledger,
        contextlib.closing(redis_client(url, settings)) as client,
    ):
        epoch = ledger.current_epoch()
        if epoch is None:
            if not _is_empty(client) or ledger.count_accounts() > 0:
                raise ConfigError(
                    "the ledger has no epoch but the store (or ledger) holds data: refusing to "
                    "initialise over a foreign store",
                    hint="point --redis-url/--ledger-url at the right deployment",
                )
            report = init_store(client, KeyLayout(settings.namespace, settings.shards), ledger)
            say(f"initialised a new deployment (epoch {report.epoch_id})")
            return
        layout = KeyLayout(epoch.namespace, epoch.shards)
        values = set(read_epochs(client, layout))
        if values == {layout.epoch_value(epoch.epoch_id)}:
            return
        state = "empty" if values == {None} else "foreign or partial"
        if not rebuild_if_lost:
            raise StoreLost(
                f"the store is {state}: its epoch is not the ledger's current epoch "
                f"{epoch.epoch_id}; nothing was written",
                hint="run `tally rebuild` (or `tally serve --rebuild`) to restore it from the ledger",
            )
        report = rebuild(client, layout, ledger)
        say(f"store was {state}: rebuilt from the ledger (epoch {report.epoch_id})")


def _prepare_cluster_store(
    settings: Settings, *, rebuild_if_lost: bool, say: Callable[[str], None]
) -> None:
    """The epoch check on a Redis Cluster, per shard: a new deployment (empty ledger) is
    initialised only on an empty cluster (``initialise_store`` refuses anything else). With a
    current epoch, every shard's epoch key is read on its own primary and compared with THAT
    shard's epoch in the ledger (a shard rebuilt alone has its own): a FOREIGN epoch anywhere
    refuses the start (wrong deployment); a shard that is empty or cannot be asked does not stop
    the others (its writes refuse with ``store_lost`` by the epoch guard, readiness and the
    recharge gate name it), but if NO shard holds its current epoch the start is refused, as on
    one primary. ``--rebuild`` rebuilds each EMPTY shard alone from the ledger under its own
    new epoch (``tally rebuild --shard K``); an unreachable shard is left to its failover."""
    url = settings.require_redis_url()
    with SqlLedger.open(settings.ledger_url) as ledger:
        view = ledger.epoch_view()
        if view is None:
            report = initialise_store(
                settings, KeyLayout(settings.namespace, settings.shards), ledger
            )
            say(f"initialised a new deployment on the cluster (epoch {report.epoch_id})")
            return
        epoch = view.epoch
        layout = KeyLayout(epoch.namespace, epoch.shards)
        store = cluster_store(url, settings, layout, epoch.epoch_id)
        try:
            states = cluster_shard_states(store.cluster, layout)
            good = [
                s.shard
                for s in states
                if not s.error and s.epoch == layout.epoch_value(view.of(s.shard))
            ]
            foreign = [
                s.shard
                for s in states
                if not s.error and s.epoch is not None and s.shard not in good
            ]
            missing = [s.shard for s in states if s.shard not in good and s.shard not in foreign]
            if foreign:
                raise StoreLost(
                    f"shard(s) {foreign} of the cluster hold a foreign epoch (not the ledger's "
                    f"epoch for that shard, deployment epoch {epoch.epoch_id}): wrong "
                    "deployment or a rebuild in progress; nothing was written",
                    hint="point --redis-url/--ledger-url at the right deployment",
                )
            empty = [s.shard for s in states if s.shard in missing and not s.error]
            if rebuild_if_lost and empty:
                for shard in empty:
                    report = rebuild_cluster_shard(
                        store.cluster,
                        layout,
                        ledger,
                        shard,
                        idempotency_window_ms=settings.idempotency_window_ms,
                    )
                    say(f"cluster shard {shard} was empty: rebuilt (epoch {report.epoch_id})")
                good, missing = sorted([*good, *empty]), [s for s in missing if s not in empty]
        finally:
            store.close()
    if not good:
        raise StoreLost(
            f"no shard of the cluster holds the ledger's current epoch {epoch.epoch_id} "
            "(empty or unreachable); nothing was written",
            hint="check the cluster (`tally cluster status`); `tally rebuild` restores it "
            "from the ledger (`--shard K` one shard)",
        )
    if missing:
        say(
            f"cluster shard(s) {missing} are empty or unreachable: their accounts refuse "
            f"(store_lost / store_unavailable) while shards {good} serve"
        )


class Service:
    def __init__(self, options: ServeOptions, say: Callable[[str], None] = print) -> None:
        self.options, self.say = options, say
        self.node: RedisNode | None = None
        self.simulator: SimulatorProcess | None = None
        self.dep: Deployment | None = None
        self.workers: list[Worker] = []
        self.probe: HealthProbe | None = None
        self.server: uvicorn.Server | None = None
        self.admin_key: str | None = None
        self.gateway: HttpGateway | None = None
        self.recharging: rc.Recharging | None = None
        self.failovers: SwitchMasterListener | None = None
        self.url = f"http://{options.host}:{options.port}"

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Everything but the listener; on failure, whatever started is stopped again."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        opts = self.options
        if opts.server != "granian" and opts.port != 0:  # granian binds in each process
            claim_port(opts.host, opts.port)  # in use: said now, before anything is created
        opts.home.mkdir(parents=True, exist_ok=True)
        redis_url = opts.redis_url
        if redis_url is None:
            self.node = embedded.embedded_node(opts.home)
            self.node.start()
            embedded.record(opts.home, self.node)
            redis_url = self.node.url
            binary = self.node.server_binary
            self.say(f"redis-server {binary.version_text} (embedded) on 127.0.0.1:{self.node.port}")
        settings = Settings.resolve(
            redis_url=redis_url, ledger_url=opts.ledger_url, home=str(opts.home)
        )
        self.say(f"ledger {_safe(settings.ledger_url)}")
        self._preflight(settings)  # before anything is written to the store
        self.dep = self._open_when_primary(settings)
        self.failovers = self.dep.watch_failovers(self._on_failover)
        self._gateway()
        self._first_key()
        self.probe = HealthProbe(self.dep, opts.readiness)
        drain = DrainService(self.dep)
        self.operations = Operations(self.dep, drain)
        self.drain_service = drain
        self.workers = [
            drain.worker(),
            Worker("credits", credit_applier(self.dep), pace_s=0.5, idle_s=1.0),
            Worker(
                "holds",
                hold_sweeper(self.dep),
                pace_s=HOLD_SWEEP_IDLE_S,
                idle_s=HOLD_SWEEP_IDLE_S,
                busy_at=HOLD_SWEEP_MAX,
            ),
        ]
        if is_cluster(self.dep.store.client):  # the sync quarantine (ops.cluster.admission)
            self.workers.append(Worker("admission", admission_sweeper(self.dep),
                                       pace_s=ADMISSION_SWEEP_S, idle_s=ADMISSION_SWEEP_S))  # fmt: skip
        self._recharging()
        self._delivery()
        if self.node is not None:
            self.workers.append(Worker("supervisor", self._supervise, idle_s=0.5))
        for worker in self.workers:
            worker.start()

    def _open_when_primary(self, settings: Settings) -> Deployment:
        """The epoch check and the deployment. With ``sentinel://``, a primary that is not
        there yet (a failover under way: no Sentinel names one, or the one named is not a
        primary yet, or it has too few replicas to take the start's first writes) is waited
        for, at most ``STARTUP_PRIMARY_WAIT_S``: a serve started during
        a failover used to exit at once and stay down until someone started it again (the
        lab's chaos seed 2). Anything else (a lost or foreign store, a config error) and a
        plain URL fail at once, as before."""
        opts = self.options
        url = settings.require_redis_url()
        wait_s = STARTUP_PRIMARY_WAIT_S if url.startswith("sentinel://") else 0.0
        deadline = time.monotonic() + wait_s
        attempts = int(wait_s / max(STARTUP_PRIMARY_PACE_S, 0.01)) + 1  # and the deadline
        for attempt in range(attempts):
            try:
                prepare_store(settings, rebuild_if_lost=opts.rebuild_if_lost, say=self.say)
                return self._first_writes(open_deployment(settings))
            except (StoreUnavailable, StoreReadOnly, StoreLoading, StoreNotEnoughReplicas) as exc:
                if time.monotonic() >= deadline:
                    raise
                if attempt % STARTUP_PRIMARY_SAY_EVERY == 0:
                    self.say(f"waiting for the primary (at most {wait_s:g} s): {exc}")
                time.sleep(STARTUP_PRIMARY_PACE_S)
        raise StoreUnavailable(f"no primary within {wait_s:g} s of starting")

    def _first_writes(self, dep: Deployment) -> Deployment:
        """The scripts, and the credits a previous run left pending, on the primary just
        found (closed again when that fails, so a retry starts clean)."""
        try:
            dep.store.load_scripts()
            if dep.ledger.count_unsettled_credit_intents():
                self.say(f"re-applied {reapply_credits(dep)} pending credit(s)")
        except BaseException:
            dep.close()
            raise
        return dep

    def _preflight(self, settings: Settings) -> None:
        url = settings.require_redis_url()
        if not self.options.preflight or url.startswith("sentinel://"):
            return
        if url.startswith(CLUSTER_SCHEME):
            # every node of the cluster, each with its role (TP012, TP014, the 2013 defects)
            store = cluster_store(url, settings, KeyLayout(settings.namespace, settings.shards), "")
            try:
                findings = check_cluster_live(store.cluster)
            finally:
                store.close()
        else:
            with contextlib.closing(redis_client(url, settings)) as client:
                # The embedded node is one primary with no replica; a --redis-url primary is
                # judged by the replicas it has (a topology's nodes: `tally preflight --topology`).
                findings = check_live(client, role="primary", params=PreflightParams.single_node())
        for f in findings:
            if f.severity is not Severity.INFO:
                self.say(f"preflight {f.rule_id} {f.severity.value}: {f.title}")
        errors = [f for f in findings if f.severity is Severity.ERROR]
        if errors:
            raise ConfigError(
                f"preflight found {len(errors)} error(s) on the Redis node(s): "
                + "; ".join(f"{f.rule_id} {f.title}" for f in errors),
                hint="fix the Redis configuration (see `tally preflight --live`), or pass --skip-preflight",
            )

    def _on_failover(self, event: SwitchMaster) -> None:
        """Sentinel replaced the primary: say so (the engine follows by itself, on the next
        READONLY, broken connection or NOREPLICAS; tally_sentinel_failovers_total counts)."""
        old, new = (f"{host}:{port}" for host, port in (event.old, event.new))
        log.warning("sentinel failover of %s: %s -> %s", event.master_name, old, new)
        self.say(f"sentinel: +switch-master {event.master_name} {old} -> {new}")

    def _gateway(self) -> None:
        if self.options.gateway_url or self.options.no_gateway:
            return
        self.simulator = SimulatorProcess(self.options.home / "gateway")
        self.simulator.start()
        self.say(f"gateway simulator (dev mode) at {self.simulator.url}")

    def _recharging(self) -> None:
        """The recharge saga and its completer. The drainer records the recharges that debits
        open (in the same SQL transaction as the debits); the completer drives every unfinished
        one through the gate (freeze, store health, gateway circuit) in bounded batches."""
        assert self.dep is not None
        url = self.gateway_url
        if url is None:
            self.say("no gateway: recharges are recorded but wait (no completer)")
            return
        self.gateway = HttpGateway(url)
        self.recharging = recharging(self.dep, self.gateway, older_than_ms=COMPLETER_SETTLE_MS)
        completer = self.recharging.completer
        self.workers.append(
            Worker(
                "recharges", lambda: completer.run_once(COMPLETER_BATCH), pace_s=0.05, idle_s=0.2
            )
        )

    def _delivery(self) -> None:
        """Webhook delivery, once per deployment (here, never in the HTTP worker processes):
        its state is in the ledger, and a lease per endpoint keeps one request in flight per
        endpoint even with several ``tally serve`` on one ledger."""
        assert self.dep is not None
        self.delivery = DeliveryWorker(
            self.dep.ledger,
            owner=delivery_owner(self.options.home),
            hosts=self.dep.settings.webhook_hosts,
        )
        self.workers.append(
            Worker("webhooks", self.delivery.run_once, pace_s=0.1, idle_s=0.5, busy_at=50)
        )

    delivery: DeliveryWorker | None = None

    def gateway_records(self) -> list[Record]:
        """The gateway's own records (the simulator exports them), for remediation."""
        url = self.gateway_url
        if url is None:
            raise ConfigError("no gateway: nothing to remediate against")
        with SimulatorAdmin(url) as admin:
            return list(admin.iter_records())

    @property
    def gateway_url(self) -> str | None:
        if self.options.gateway_url:
            return self.options.gateway_url
        return self.simulator.url if self.simulator is not None else None

    def _first_key(self) -> None:
        assert self.dep is not None
        keys = ApiKeyStore(self.dep.ledger)
        if keys.count_active(Scope.admin) == 0:
            self.admin_key = keys.create(Scope.admin, "created by the first `tally serve`").key
            self.say(f"admin API key (shown once, keep it): {self.admin_key}")

    def _supervise(self) -> int:
        """Restart the embedded redis-server if it died. What it loads is checked by every
        write (the epoch guard) and by readiness: an empty restart is store_lost, never used."""
        node = self.node
        if node is None or node.is_running() or self.probe is None or self.probe.stopping.is_set():
            return 0
        if self._restarts >= SUPERVISOR_RESTARTS_MAX:
            return 0
        self._restarts += 1
        log.warning("embedded redis-server exited; restarting it (%d)", self._restarts)
        node.process = None
        node.start(write_config=True)
        assert self.options.home is not None
        embedded.record(self.options.home, node)
        return 1

    _restarts = 0

    def api(self) -> ApiParts:
        """The API's context, wired by the one function the worker processes use too."""
        assert self.dep is not None and self.probe is not None
        return build_api(
            self.dep, self.probe, self.operations, self.recharge_extension(), self.failovers
        )

    def recharge_extension(self) -> RechargeExtension:
        assert self.dep is not None
        wiring = self.recharging
        if wiring is None:
            return RechargeExtension(rc.RechargeService(self.dep.engine))
        return RechargeExtension(
            wiring.service,
            circuit=wiring.gate.circuit,
            gate_metrics=wiring.saga.metrics,
            gateway=self.gateway,
            records=self.gateway_records,
            gate_reason=wiring.gate.why_not,
        )

    # -- serve ---------------------------------------------------------------------------------
    def serve(self, on_listening: Callable[[], None] | None = None) -> None:
        """Blocks until SIGINT/SIGTERM, then returns with in-flight requests finished."""
        require_server(self.options.server)
        opts = self.options
        granian = opts.server == "granian"  # it binds itself, in each process
        socks = [] if granian else listening_sockets(opts.host, opts.port, opts.workers)
        try:
            if opts.workers > 1:
                self._serve_processes(socks, on_listening)
            else:
                self._serve_here(socks[0] if socks else None, on_listening)
        finally:
            for sock in socks:
                sock.close()
            if self.probe is not None:
                self.probe.stopping.set()

    def _serve_here(
        self, sock: socket.socket | None, on_listening: Callable[[], None] | None
    ) -> None:
        parts = self.api()
        if sock is None:  # granian
            _quiet_signals()  # what it restores once stopped: soft, while stop() drains
            watcher = threading.Thread(target=self._announce_answering, args=(on_listening,))
            watcher.daemon = True
            watcher.start()
            app = create_app(parts.context)
            opts = self.options
            serve_granian(app, opts.host, opts.port, parts.debits, loop=opts.loop)
            return
        config = uvicorn.Config(
            create_app(parts.context),
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_S,
            lifespan="off",
            http=http_impl(self.options.http),
            loop=self.options.loop,
        )
        self.server = uvicorn.Server(config)
        # uvicorn re-raises the signal it caught once it has stopped: let that land softly, and
        # keep it soft while stop() drains (a second Ctrl-C must not cut the drain short).
        _quiet_signals()
        watcher = threading.Thread(target=self._announce, args=(on_listening,), daemon=True)
        watcher.start()
        serve_uvicorn(self.server, sock, parts.debits)  # closes the async pool when stopped

    def _serve_processes(
        self, socks: list[socket.socket], on_listening: Callable[[], None] | None
    ) -> None:
        """N HTTP worker processes, one socket each (none: granian binds its own); background
        work stays here (once)."""
        assert self.dep is not None
        spec = WorkerSpec(
            settings=self.dep.settings,
            readiness=self.options.readiness,
            gateway_url=self.gateway_url,
            http=self.options.http,
            loop=self.options.loop,
            graceful_s=GRACEFUL_S,
            metrics_dir=str(prepare_metrics_dir(self.options.home)),
            parent_pid=os.getpid(),
            server=self.options.server,
            host=self.options.host,
            port=self.options.port,
        )
        stop = SignalStop.install()  # the handler takes no lock (ops.signals)
        if self.recharging is not None:
            wiring, metrics_dir = self.recharging, Path(spec.metrics_dir)
            exporter = Worker(
                "metrics-export",
                lambda: export_parent_metrics(
                    metrics_dir, wiring.saga.metrics, wiring.gate.circuit
                ),
                idle_s=EXPORT_PACE_S,
            )
            self.workers.append(exporter)
            exporter.start()
        processes = WorkerProcesses(spec, socks, self.options.workers)
        processes.start()
        try:
            announced = False
            while not stop.event.wait(0.2):  # until a signal; each turn bounded
                if not announced and _answers(self.url):
                    announced = True
                    self.say(
                        f"tally is serving at {self.url} with {self.options.workers} worker "
                        "processes (Ctrl-C stops it)"
                    )
                    if on_listening is not None:
                        on_listening()
                processes.watch_once()
        finally:
            if self.probe is not None:
                self.probe.stopping.set()
            _quiet_signals()  # a second Ctrl-C must not cut the workers' or the drain's stop short
            stop.event.set()  # its relay thread ends (its handlers were just replaced)
            codes = processes.stop(GRACEFUL_S + 5)
            # 0 each: a worker closed its async pool, listener and deployment before it exited.
            self.say(f"HTTP workers stopped (exit codes {codes})")

    def _announce_answering(self, on_listening: Callable[[], None] | None) -> None:
        for _ in range(600):  # bounded: 60 s
            if self.probe is not None and self.probe.stopping.is_set():
                return
            if _answers(self.url):
                self.say(f"tally is serving at {self.url} with granian (Ctrl-C stops it)")
                if on_listening is not None:
                    on_listening()
                return
            threading.Event().wait(0.1)

    def _announce(self, on_listening: Callable[[], None] | None) -> None:
        server = self.server
        for _ in range(600):  # bounded: 60 s
            if server is None or server.should_exit:
                return
            if server.started:
                self.say(f"tally is serving at {self.url} (Ctrl-C stops it)")
                if on_listening is not None:
                    on_listening()
                return
            threading.Event().wait(0.1)

    # -- stop ----------------------------------------------------------------------------------
    def stop(self) -> dict[str, Any]:
        """Reverse order; every step runs even when an earlier one failed."""
        summary: dict[str, Any] = {}
        if self.probe is not None:
            self.probe.stopping.set()
        # The supervisor stops last: a redis-server it restarted dies with the thread that
        # started it (PR_SET_PDEATHSIG is per thread), and the final drain still needs it.
        # The completer first: no charge starts once shutdown has begun.
        ordered = sorted(self.workers, key=lambda w: STOP_ORDER.get(w.name, 1))
        for worker in ordered[:-1] if self.node is not None else ordered:
            self._stop_worker(worker)
        if self.failovers is not None:
            self.failovers.stop()
        if self.dep is not None:
            summary.update(self._final_drain())
            self._stop_store(summary)
            with contextlib.suppress(Exception):
                self.dep.close()
        if self.node is not None and ordered:
            self._stop_worker(ordered[-1])
        if self.gateway is not None:
            with contextlib.suppress(Exception):
                self.gateway.close()
        if self.delivery is not None:
            with contextlib.suppress(Exception):
                self.delivery.close()
        if self.simulator is not None:
            self.simulator.stop()
        if self.node is not None:
            self.node.stop(save=summary.get("epoch_valid", False))
            embedded.forget(self.options.home)
        return summary

    @staticmethod
    def _stop_worker(worker: Worker) -> None:
        if not worker.stop(WORKER_STOP_S):
            log.error("worker %s did not stop within %ss", worker.name, WORKER_STOP_S)

    def _final_drain(self) -> dict[str, Any]:
        if self.drain_service_or_none() is None:
            return {}
        try:
            entries = self.drain_service.drain_all()
        except (InfrastructureError, TallyError) as exc:
            self.say(
                f"final drain incomplete ({exc}); the journal is kept in Redis and drains on next start"
            )
            return {"drained": 0, "drain_error": str(exc)}
        return {"drained": entries}

    def drain_service_or_none(self) -> DrainService | None:
        return getattr(self, "drain_service", None)

    def _stop_store(self, summary: dict[str, Any]) -> None:
        """Save a snapshot on shutdown only when the dataset holds the current epoch: a SHUTDOWN
        SAVE of an empty dataset over a good dump.rdb was the 2013 follow-up defect."""
        assert self.dep is not None
        if self.dep.is_cluster:  # no embedded node to save; a multi-key read is cross-slot
            summary["epoch_valid"] = False
            return
        try:
            epoch = self.dep.ledger.current_epoch()
            values = set(read_epochs(self.dep.client, self.dep.layout))
            summary["epoch_valid"] = epoch is not None and values == {
                self.dep.layout.epoch_value(epoch.epoch_id)
            }
        except TallyError:
            summary["epoch_valid"] = False


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def _quiet_signals() -> dict[int, Any]:
    def noted(sig: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", sig)

    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, noted)
    return previous
