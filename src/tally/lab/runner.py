"""One lab run, end to end: start the rig, open the accounts, run the workload and the scenario's
timeline together, settle, stop every process, check, report.

Exit codes (the DESIGN.md lab contract): 0 every invariant held, 1 one was violated, 2 a usage or
setup error (bad arguments, a process that would not start). The run directory holds
report.json, report.html, history.jsonl, gateway.jsonl, ledger.sqlite3 and the raw material the
checker read (monitor.jsonl, ping.jsonl, events.jsonl, store.json, setup.json). Primary
latency is sampled by a separate process (tally.lab.pinger) so the lab's own threads do not
show in it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import redis

from tally import __version__
from tally.errors import TallyError, UsageError
from tally.gateway.faults import Faults
from tally.lab import chaos, checker, report
from tally.lab.billing import BillingSystem, make_billing
from tally.lab.cluster_ops import ClusterMonitor, ClusterOperator
from tally.lab.cluster_rig import CLUSTER_LAB_PARAMS, ClusterRig
from tally.lab.cluster_scenarios import CLUSTER_SCENARIOS, cluster_figures
from tally.lab.figures import lab_figures
from tally.lab.history import HistoryWriter, now_ms, read_history
from tally.lab.ledger_db import LabLedger, is_postgres
from tally.lab.monitor import Monitor
from tally.lab.pinger import PingerProcess
from tally.lab.rig import LAB_PARAMS, NAMESPACE, SHARDS, Rig, RigSpec
from tally.lab.scenarios import SCENARIOS, Scenario
from tally.lab.timeline import EventLog, Operator, Timeline
from tally.lab.workload import Workload, WorkloadSpec, make_accounts
from tally.store.keys import KeyLayout

PROFILES = ("2013", "hardened")
BILLINGS = ("legacy", "tally")
TIME_SCALE_MIN, TIME_SCALE_MAX = 0.1, 10.0
DATASET_MB_MAX = 2000  # the rig's own ceiling (tally.lab.rig.DATASET_BYTES_MAX)
PROGRESS_EVERY_S = 3.0
FINAL_SYNC_S = 30.0
#: after the heal, an old primary is demoted at Sentinel's next look at it (INFO every 10 s)
ONE_PRIMARY_S = 30.0
PINGER_SLACK_S = 600.0  # the sampler process outlives the workload by at most this (settling)
RUN_FILES = ("report.json", "report.html", "lab.log", "history.jsonl", "gateway.jsonl", "ledger.sqlite3",
             "monitor.jsonl", "ping.jsonl", "events.jsonl", "store.json", "setup.json",
             "cluster.json")  # fmt: skip
VELOCITY_MAX_CHARGES = 30  # the issuers' rule: more succeeded charges than this per window decline
VELOCITY_WINDOW_S = 600

Progress = Callable[[str], None]


@dataclass
class RunOptions:
    scenario: str
    profile: str = "hardened"
    billing: str = "tally"
    seed: int = 1
    out: Path = Path("lab-run")
    time_scale: float = 1.0
    accounts: int | None = None
    rate: float | None = None
    duration: float | None = None
    progress: Progress = field(default=lambda _: None, repr=False)
    dataset_mb: int | None = None  # ballast on the primary (default: the scenario's, 16 MB)
    faults_max: int = 2  # chaos: faults active at once
    ledger_url: str | None = None  # PostgreSQL server for the ledger (None: a SQLite file)

    def validate(self) -> Scenario:
        if self.scenario == chaos.CHAOS:
            return self.chaos_plan()[0]
        known = {**SCENARIOS, **CLUSTER_SCENARIOS}
        if self.scenario not in known:
            raise UsageError(f"unknown scenario {self.scenario!r}",
                             hint=f"one of: {', '.join(known)}")  # fmt: skip
        if known[self.scenario].cluster and self.billing != "tally":
            raise UsageError(f"{self.scenario} runs on a Redis Cluster with --billing tally",
                             hint=known[self.scenario].control_note)  # fmt: skip
        if self.profile not in PROFILES:
            raise UsageError(f"unknown profile {self.profile!r}", hint="2013 or hardened")
        if self.billing not in BILLINGS:
            raise UsageError(f"unknown billing {self.billing!r}", hint="legacy or tally")
        if not TIME_SCALE_MIN <= self.time_scale <= TIME_SCALE_MAX:
            raise UsageError(f"--time-scale must be {TIME_SCALE_MIN}..{TIME_SCALE_MAX}")
        if self.ledger_url is not None and not is_postgres(self.ledger_url):
            raise UsageError("--ledger-url must be a postgresql:// URL",
                             hint="without it the ledger is a SQLite file in the run directory")  # fmt: skip
        if self.dataset_mb is not None and not 0 <= self.dataset_mb <= DATASET_MB_MAX:
            raise UsageError(f"--dataset-mb must be 0..{DATASET_MB_MAX}",
                             hint="the ballast is held in memory by every node")  # fmt: skip
        return known[self.scenario]

    def chaos_plan(self) -> tuple[Scenario, chaos.Plan]:
        duration = self.duration or chaos.DURATION_S_DEFAULT
        try:
            return chaos.scenario(self.seed, duration, self.faults_max)
        except ValueError as exc:
            raise UsageError(f"chaos: {exc}") from exc

    def reproduce(self) -> str:
        command = (f"tally lab chaos --faults-max {self.faults_max}" if self.scenario == chaos.CHAOS
                   else f"tally lab run {self.scenario}")  # fmt: skip
        parts = [f"{command} --profile {self.profile} --billing {self.billing}",
                 f"--seed {self.seed} --out {self.out} --time-scale {self.time_scale}"]  # fmt: skip
        if self.ledger_url is not None:
            parts.append(f"--ledger-url {self.ledger_url}")
        for flag, value in (("--accounts", self.accounts), ("--rate", self.rate),
                            ("--duration", self.duration), ("--dataset-mb", self.dataset_mb)):  # fmt: skip
            if value is not None:
                parts.append(f"{flag} {value}")
        return " ".join(parts)


@dataclass
class RunResult:
    exit_code: int
    report: dict[str, Any]
    out: Path


def workload_spec(opts: RunOptions) -> WorkloadSpec:
    spec = WorkloadSpec()
    if opts.accounts is not None:
        spec = replace(spec, accounts=opts.accounts)
    if opts.rate is not None:
        spec = replace(spec, rate_per_s=opts.rate)
    return spec


def run(opts: RunOptions) -> RunResult:
    """Never raises for a failed run: usage/setup errors are exit 2 with the reason in the
    report; a violated invariant is exit 1."""
    try:
        scenario = opts.validate()
        spec = workload_spec(opts)
    except (UsageError, ValueError) as exc:
        return _failed(opts, f"usage: {exc}")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for leftover in ("gateway", "cluster", "home", "serve"):
        shutil.rmtree(out / leftover, ignore_errors=True)
    handler = logging.FileHandler(out / "lab.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(name)s: %(message)s"))
    root = logging.getLogger("tally")
    root.addHandler(handler)
    root.propagate = False  # the engine's and legacy's warnings go to lab.log, not the terminal
    try:
        return _run(opts, scenario, spec, out)
    except (TallyError, redis.RedisError, OSError) as exc:
        opts.progress(f"setup error: {exc}")
        return _failed(opts, f"setup: {type(exc).__name__}: {exc}")
    finally:
        root.removeHandler(handler)
        root.propagate = True
        handler.close()


def _failed(opts: RunOptions, why: str) -> RunResult:
    body = {"scenario": opts.scenario, "profile": opts.profile, "billing": opts.billing,
            "seed": opts.seed, "exit_code": 2, "error": why}  # fmt: skip
    out = Path(opts.out)
    with contextlib.suppress(OSError):
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(body, indent=2))
    return RunResult(2, body, out)


def _gateway_faults(seed: int, accounts: list[Any]) -> Faults:
    return Faults(
        seed=seed,
        card_decline_rates={a.card: 1.0 for a in accounts if a.declines},
        velocity_max_charges=VELOCITY_MAX_CHARGES,
        velocity_window_s=VELOCITY_WINDOW_S,
    )


def _run(opts: RunOptions, scenario: Scenario, spec: WorkloadSpec, out: Path) -> RunResult:
    accounts = make_accounts(spec, opts.seed)
    rig_spec = rig_spec_for(opts, scenario)
    duration_s = (opts.duration or scenario.duration_s) * opts.time_scale
    say = opts.progress
    say(f"starting {opts.profile} topology (3 DCs, {rig_spec.dataset_bytes // 1_000_000} MB "
        f"ballast, WAN {rig_spec.wan_bytes_per_s // 1000} kB/s) and the gateway simulator")  # fmt: skip
    started = time.monotonic()
    ledger = LabLedger.postgres(opts.ledger_url) if opts.ledger_url else LabLedger.sqlite(out)
    try:
        return _run_on(opts, scenario, spec, out, accounts, rig_spec, duration_s, started, ledger)
    finally:
        with contextlib.suppress(TallyError):  # a database left behind is not a failed run
            ledger.drop()


def _run_on(opts: RunOptions, scenario: Scenario, spec: WorkloadSpec, out: Path,
            accounts: list[Any], rig_spec: RigSpec, duration_s: float, started: float,
            ledger: LabLedger) -> RunResult:  # fmt: skip
    say = opts.progress
    faults = _gateway_faults(opts.seed, accounts)
    phases: dict[str, float] = {}  # where a run's time goes (report.json ``phases_s``)
    mark = [started]

    def phase(name: str) -> None:
        now = time.monotonic()
        phases[name] = round(now - mark[0], 1)
        mark[0] = now

    rig_class = ClusterRig if scenario.cluster else Rig
    with rig_class(out, rig_spec, gateway_faults=faults, ledger=ledger) as rig:
        phase("rig_up")
        say(f"up in {time.monotonic() - started:.1f}s; opening {len(accounts)} accounts "
            f"({opts.billing} billing)")  # fmt: skip
        billing = make_billing(opts.billing, rig)
        try:
            billing.open_accounts(accounts)
            phase("accounts_open")
            say(f"accounts open in {phases['accounts_open']:.1f}s")
            _write_setup(out, opts, scenario, spec, accounts, rig)
            if isinstance(rig, ClusterRig):
                rig.write_layout(out, [a.id for a in accounts])
                rig.load_ballast_after_init()
            body = _drive(opts, scenario, spec, accounts, rig, billing, duration_s, out, phase)
        finally:
            billing.close()
        rig.simulator.export_jsonl(out / "gateway.jsonl")
        phase("wrap_up")
    phase("teardown")
    verdict = checker.check_dir(out)
    body.update(verdict.to_dict())
    body["figures"].update(_lab_figures(out, body))
    if scenario.cluster:
        body["figures"].update(cluster_figures(out))
    body["ok"] = verdict.ok
    clean = body.get("settle", {}).get("serve_clean_exit", True)
    if not clean:  # a serve that did not stop cleanly on SIGINT is a failed run too
        body["ok"] = False
        body["serve_exit"] = body["settle"].get("serve_exit_codes")
    if scenario.name == chaos.CHAOS:
        body["ok"] = _judge_chaos(opts, body, out) and body["ok"]
    body["exit_code"] = 0 if body["ok"] else 1
    phase("check")
    body["phases_s"] = phases
    body["seconds_total"] = round(time.monotonic() - started, 1)
    (out / "report.json").write_text(json.dumps(body, indent=2, default=str))
    report.write_html(out, body)
    return RunResult(body["exit_code"], body, out)


def _lab_figures(out: Path, body: dict[str, Any]) -> dict[str, Any]:
    history_path = out / "history.jsonl"
    return lab_figures(
        monitor=checker._jsonl(out / "monitor.jsonl"),
        gateway=checker._jsonl(out / "gateway.jsonl"),
        events=checker._jsonl(out / "events.jsonl"),
        history=read_history(history_path) if history_path.is_file() else [],
        serve_starts=dict(body.get("settle", {}).get("serve_starts") or {}),
    )


def _judge_chaos(opts: RunOptions, body: dict[str, Any], out: Path) -> bool:
    """The schedule, and the liveness rule over the history once every fault was healed."""
    _, plan = opts.chaos_plan()
    started_ms = int(body["workload_started_ms"])
    planned_ms = started_ms + int(plan.healed_at_s * opts.time_scale * 1000)
    healed_ms = chaos.healed_ms(body.get("timeline") or [], planned_ms)
    since_ms = healed_ms + int(chaos.RECOVERY_S * 1000)
    history = checker._jsonl(out / "history.jsonl")
    live = chaos.liveness(history, since_ms, chaos.LIVENESS_BOUND_S)
    body["schedule"] = plan.schedule()
    body["faults_max"] = plan.faults_max
    body["liveness"] = {**live.to_dict(), "since_s": round((since_ms - started_ms) / 1000, 1),
                        "healed_late_s": round((healed_ms - planned_ms) / 1000, 1)}  # fmt: skip
    return live.held


def rig_spec_for(opts: RunOptions, scenario: Scenario) -> RigSpec:
    """The scenario's rig, with ``--dataset-mb`` applied. A larger dataset is a larger stated
    figure for the hardened profile too (the operator sizes the output buffers for the data they
    have, ``dataset_bytes_max``); the 2013 profile keeps its fixed defaults."""
    overrides: dict[str, Any] = dict(scenario.rig)
    if opts.dataset_mb is not None:
        dataset = opts.dataset_mb * 1_000_000
        overrides["dataset_bytes"] = dataset
        params = dict(overrides.get("params", {}))
        floor = int(params.get("dataset_bytes_max", LAB_PARAMS["dataset_bytes_max"]))
        params["dataset_bytes_max"] = max(floor, 2 * dataset)
        overrides["params"] = params
    return RigSpec(profile=opts.profile, **overrides)


def _write_setup(out: Path, opts: RunOptions, scenario: Scenario, spec: WorkloadSpec,
                 accounts: list[Any], rig: Rig) -> None:  # fmt: skip
    # Invariant 9's bound: an isolated primary keeps acknowledging until its replicas' last ACK
    # is older than min-replicas-max-lag (whole seconds, "lag <= max" still counts as good,
    # ACKs come once a second): at most max-lag + 2 seconds of the workload's debits.
    lag_s = int(rig.cluster.params.min_replicas_max_lag_s) + 2
    bound = int(spec.rate_per_s * lag_s) * scenario.isolations if scenario.isolates_primary else 0
    setup = {
        "scenario": scenario.name, "profile": opts.profile, "billing": opts.billing,
        "seed": opts.seed, "currency": "USD", "debits_lost_bound": bound,
        "ledger_url": rig.ledger_url(),
        "accounts": [asdict(a) for a in accounts],
        "workload": asdict(spec),
    }  # fmt: skip
    (out / "setup.json").write_text(json.dumps(setup, indent=1))


def _drive(opts: RunOptions, scenario: Scenario, spec: WorkloadSpec, accounts: list[Any],
           rig: Rig, billing: BillingSystem, duration_s: float, out: Path,
           phase: Callable[[str], None] = lambda _: None) -> dict[str, Any]:  # fmt: skip
    layout = KeyLayout(NAMESPACE, SHARDS)
    epoch_keys = [layout.epoch(s) for s in range(layout.shards)]
    stop = threading.Event()
    events = EventLog(out / "events.jsonl")
    cluster = isinstance(rig, ClusterRig)
    operator = (ClusterOperator if cluster else Operator)(rig, billing, opts.time_scale, stop)
    timeline = Timeline(list(scenario.steps), operator, events, opts.time_scale)
    timeline.on_step = lambda e: opts.progress(
        f"  t+{e['at_s']:5.1f}s {'FAULT' if e['fault'] else 'OPER '} {e['action']}: {e['detail']}"
    )
    first = rig.topology.primaries[0].name
    pinger = PingerProcess(out / "ping.jsonl", {n: h.address for n, h in rig.nodes.items()},
                           first, password=rig.password,
                           seconds_max=duration_s + PINGER_SLACK_S)  # fmt: skip
    monitor = (ClusterMonitor if cluster else Monitor)(
        out / "monitor.jsonl", list(rig.nodes),
        lambda n, t: rig.client(n, socket_timeout=t, socket_connect_timeout=t),
        epoch_keys, pinger=pinger, primary_hint=first)  # fmt: skip
    history = HistoryWriter(out / "history.jsonl")
    workload = Workload(billing, history, spec, accounts, opts.seed)
    settle: dict[str, Any] = {}
    monitor.start()
    try:
        billing.start_background()
        opts.progress(f"running {scenario.name} for {duration_s:.0f}s at {spec.rate_per_s:g} op/s")
        t0 = time.monotonic()
        started_ms = now_ms()
        workload.start(duration_s)
        timeline.run(t0, tick=lambda: _progress_line(opts, workload, t0), tick_s=PROGRESS_EVERY_S)
        _wait_with_progress(opts, workload, t0, duration_s)
        workload.halt()
        stop.set()
        operator.join_load()
        phase("workload")
        settle = _finish(opts, rig, billing, events, phase)
        if isinstance(rig, ClusterRig):
            rig.snapshot_store(out)  # every shard's primary
        else:
            _snapshot_store(rig, out, len(epoch_keys))
        phase("snapshot")
    finally:
        stop.set()
        workload.halt()
        history.close()
        monitor.stop()
        events.close()
    body = _body(opts, scenario, spec, rig, billing, workload, events, settle)
    body["workload_started_ms"] = started_ms
    return body


def _wait_with_progress(opts: RunOptions, workload: Workload, t0: float, duration_s: float) -> None:
    deadline = t0 + duration_s + 30.0  # workers stop at the duration; a stuck call is bounded
    while time.monotonic() < deadline:
        workload.join(PROGRESS_EVERY_S)
        if not workload.running():
            return
        _progress_line(opts, workload, t0)


def _progress_line(opts: RunOptions, workload: Workload, t0: float) -> None:
    supervise = getattr(workload.billing, "supervise", None)  # the serve processes' supervisor
    for name in supervise() if supervise is not None else []:
        opts.progress(f"  t+{time.monotonic() - t0:5.1f}s {name} had exited: launched again")
    s = workload.stats
    opts.progress(f"  t+{time.monotonic() - t0:5.1f}s ops {s.done} "
                  f"({', '.join(f'{k} {v}' for k, v in sorted(s.by_type.items()))})")  # fmt: skip


def _finish(opts: RunOptions, rig: Rig, billing: BillingSystem, events: EventLog,
            phase: Callable[[str], None] = lambda _: None) -> dict[str, Any]:  # fmt: skip
    """After the workload: heal every fault, let replication and billing settle."""
    opts.progress("settling: healing links, waiting for replicas, draining, finishing recharges")
    with contextlib.suppress(TallyError, OSError):
        rig.cluster.heal_all()
    for handle in rig.nodes.values():
        with contextlib.suppress(TallyError, OSError):
            handle.resume()
    with contextlib.suppress(TallyError, OSError):
        rig.simulator.set_faults(timeout_after_commit=0.0)
    # One primary before the last drain and the snapshot: "every replica's link is up" also
    # holds while an old primary back from a partition is still a primary of its own, and a
    # snapshot of it read balances Sentinel was about to discard (chaos seed 2 in CI).
    primaries = rig.wait_one_primary(ONE_PRIMARY_S)
    in_sync = rig.wait_in_sync(FINAL_SYNC_S)
    phase("heal_and_sync")
    settle = billing.settle()
    phase("serve_settle")
    settle["replicas_in_sync"] = in_sync
    settle["primaries_after_heal"] = primaries
    settle["primaries_at_snapshot"] = rig.wait_one_primary(ONE_PRIMARY_S)
    events.write({"t_ms": int(time.time() * 1000), "action": "settled", "fault": False,
                  "ok": True, "detail": json.dumps(settle, default=str)})  # fmt: skip
    return settle


def _snapshot_store(rig: Rig, out: Path, epoch_keys: int) -> None:
    """store.json: the final state of the node holding tally's data: among the primaries, the one
    most Sentinels name, then the one with the most epoch keys (several primaries are a split
    brain, recorded too: ``primaries``)."""
    candidates = []
    for name, handle in rig.nodes.items():
        with (
            contextlib.suppress(redis.RedisError, OSError),
            contextlib.closing(handle.client(socket_timeout=5.0)) as c,
        ):
            if c.info("replication").get("role") == "master":
                layout = KeyLayout(NAMESPACE, SHARDS)
                present = int(c.exists(*[layout.epoch(s) for s in range(epoch_keys)]))
                candidates.append((present, name))
    if not candidates:
        (out / "store.json").write_text(json.dumps({"error": "no primary at the end"}))
        return
    named = rig.sentinel_primaries()
    _, name = max(candidates, key=lambda c: (named.count(c[1]), c))
    with contextlib.closing(rig.client(name, socket_timeout=10.0)) as c:
        snap = checker.snapshot_store(c, NAMESPACE)
    snap["node"] = name
    snap["primaries"] = [n for _, n in candidates]
    (out / "store.json").write_text(json.dumps(snap))


def _body(opts: RunOptions, scenario: Scenario, spec: WorkloadSpec, rig: Rig,
          billing: BillingSystem, workload: Workload, events: EventLog,
          settle: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    binary = rig.cluster.binary
    return {
        "scenario": scenario.name,
        "summary": scenario.summary,
        "profile": opts.profile,
        "billing": opts.billing,
        "seed": opts.seed,
        "time_scale": opts.time_scale,
        "reproduce": opts.reproduce(),
        "versions": {
            "tally": __version__,
            "redis": binary.version_text,
            "python": platform.python_version(),
        },
        "ledger": {
            **rig.ledger.describe(through_proxy=opts.billing == "tally"),
            "shared_by": [s.name for s in getattr(billing, "serves", [])] or ["lab"],
        },
        "workload": {**asdict(spec), **asdict(workload.stats)},
        "topology": {
            "nodes": list(rig.nodes),
            "sentinels": list(rig.cluster.sentinels),
            "dataset_bytes": rig.spec.dataset_bytes,
            "wan_bytes_per_s": rig.spec.wan_bytes_per_s,
            "params": CLUSTER_LAB_PARAMS if isinstance(rig, ClusterRig) else LAB_PARAMS,
            "kind": rig.topology.kind,
        },
        "timeline": events.events,
        "settle": settle,
        "background_errors": getattr(billing, "background_errors", lambda: {})(),
    }
