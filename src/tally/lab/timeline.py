"""The scenario engine: faults and operator actions at offsets, scaled, recorded, bounded.

A timeline is a list of :class:`Step` (``at_s`` from the start of the workload, an action name,
its arguments). ``--time-scale`` multiplies every offset (and the waits inside actions). Steps
run in order on one thread; each is recorded in ``events.jsonl`` with its wall-clock time, how
long it took, whether it worked and what it did. Every action is bounded by the timeouts of the
process handles it uses; the whole timeline by the run's deadline.

Actions (``Operator``):

    partition_replicas(mode)     cut every link between the primary's DC and the others
    isolate(dc, mode)            cut every link of one DC
    heal()                       clear every partition
    kill(node) / start(node)     SIGKILL / start again with its current config
    pause(node) / resume(node)   SIGSTOP / SIGCONT (start and resume take ``after_failover_s``:
                                 with Sentinels, first wait at most that long for a promotion)
    restart(node, mutation, down_s)   SHUTDOWN (default SAVE), wait, start with a config mutation:
                                 ``incident``: persistence that loads nothing + replicaof itself
    fix_config(node)             the operator's repair: the node's original config back; its data
                                 from a replica's snapshot when it has none (2013) or as a
                                 replica of the primary Sentinel elected (hardened)
    link_bandwidth(dc, rate)     WAN cap on the links of one DC (0 = the topology's cap)
    resync_from_scratch(node)    kill a replica, delete its data, start: it must full-sync
    write_load(bytes_per_s, seconds)  extra writes on the primary (a busy primary)
    gateway_faults(**knobs)      change the gateway simulator's faults
    billing(action)              rebuild / remediate / freeze / unfreeze, as the billing allows
    serve(action, dc)            the subject's `tally serve` in a data center: kill (-9), start
                                 (the same command line), pause (SIGSTOP), resume (SIGCONT)
    serve_kill_mid_charge(dc)    kill -9 that serve as soon as the gateway simulator has
                                 recorded a charge it has not answered yet (a delayed response):
                                 the crash between the charge and its credit
    cut_serve(dc, target, mode)  partition the serve of a data center from ``ledger``, ``gateway``
                                 (its own links) or ``primary`` (its DC's route to the primary);
                                 ``heal`` clears it
    close_account(account)       an operator closes an account (recharges in flight must not
                                 credit it, nor charge its card again)
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import redis

from tally.lab.billing import BillingSystem
from tally.lab.history import now_ms
from tally.lab.rig import BALLAST_DB, Rig
from tally.ops.ballast import incompressible
from tally.ops.cluster.procs import command
from tally.ops.node import ConfigValue

STEPS_MAX = 100
#: How long a run waits at its end for detached steps still running (an admin call is bounded
#: by the billing's operator timeout per serve, two serves).
DETACHED_WAIT_S = 150.0
RESTORE_SAVE_TIMEOUT_S = 60.0
FAILOVER_POLL_S = 0.2


@dataclass(frozen=True)
class Step:
    at_s: float
    action: str
    args: dict[str, Any] = field(default_factory=dict)
    fault: bool = True  # False: an operator action (mitigation), not a fault
    #: Runs on a thread of its own: later steps keep their times instead of waiting for it (an
    #: operator's long call through the admin API, such as remediate: 79 s in the 20-seed
    #: chaos run, which put every later step and heal behind its plan). Not a heal: liveness
    #: is judged from the last heal, not from its end (``chaos.healed_ms``). Only for steps
    #: that start no process (PR_SET_PDEATHSIG: see ``Timeline.run``).
    detached: bool = False


class EventLog:
    def __init__(self, path: Path) -> None:
        self._out: TextIO = open(path, "w", encoding="utf-8")  # noqa: SIM115
        self._lock = threading.Lock()
        self.events: list[dict[str, Any]] = []

    def write(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)
            if not self._out.closed:
                self._out.write(json.dumps(event) + "\n")
                self._out.flush()

    def close(self) -> None:
        with self._lock:
            self._out.close()


class Operator:
    """Carries out timeline actions on a rig and a billing system."""

    def __init__(self, rig: Rig, billing: BillingSystem, time_scale: float, stop: threading.Event):
        self.rig, self.billing, self.scale, self.stop = rig, billing, time_scale, stop
        self._load_threads: list[threading.Thread] = []

    def run(self, action: str, args: dict[str, Any]) -> str:
        method: Callable[..., str] | None = getattr(self, f"do_{action}", None)
        if method is None:
            raise ValueError(f"unknown timeline action {action!r}")
        return method(**args)

    # -- network ---------------------------------------------------------------------------------
    def do_partition_replicas(self, mode: str = "refuse") -> str:
        primary_dc = self.rig.topology.primary.dc
        for dc in self.rig.remote_dcs():
            self.rig.cluster.partition(primary_dc, dc, mode=mode)
        return f"{primary_dc} cut from {', '.join(self.rig.remote_dcs())} ({mode})"

    def do_isolate(self, dc: str, mode: str = "refuse") -> str:
        self.rig.cluster.isolate(dc, mode=mode)
        return f"{dc} isolated ({mode})"

    def do_heal(self) -> str:
        self.rig.cluster.heal_all()
        return "every link healed"

    def do_link_bandwidth(self, dc: str, rate_bytes_s: int) -> str:
        rate = rate_bytes_s or self.rig.spec.wan_bytes_per_s
        hub = self.rig.cluster.hub
        assert hub is not None
        for route in self.rig.cluster.routes.values():
            if dc in route.pair.split("-"):
                hub.set_fault(route.name, "both", "bandwidth", rate_bytes_s=rate)
        return f"links of {dc} capped at {rate} B/s"

    # -- processes ---------------------------------------------------------------------------------
    def do_kill(self, node: str) -> str:
        self.rig.nodes[node].kill()
        return f"{node} SIGKILLed"

    def do_start(self, node: str, after_failover_s: float = 0.0) -> str:
        handle = self.rig.nodes[node]
        if handle.is_running():
            return f"{node} already running"
        waited = self._await_failover(node, after_failover_s)
        handle.start()
        return f"{node} started{waited}"

    def do_pause(self, node: str) -> str:
        self.rig.nodes[node].pause()
        return f"{node} SIGSTOPped"

    def do_resume(self, node: str, after_failover_s: float = 0.0) -> str:
        waited = self._await_failover(node, after_failover_s)
        self.rig.nodes[node].resume()
        return f"{node} SIGCONTed{waited}"

    def _await_failover(self, node: str, at_most_s: float) -> str:
        """The operator brings a failed primary back once Sentinel has promoted another node,
        waiting at most ``at_most_s`` (scaled) past the step's time. A scenario that claims a
        failover needs one: in one CI run (primary-crash) nobody was promoted within the 12 s
        the primary was down, likely a failed first election under load, which Sentinel retries
        2 x failover-timeout later (20 s in the lab), after the fixed-time restart. Without
        Sentinels (2013) nobody promotes anything: no wait."""
        if at_most_s <= 0 or not self.rig.cluster.with_sentinels:
            return ""
        t0 = time.monotonic()
        deadline = t0 + at_most_s * self.scale
        while not self.stop.is_set():
            other = self._other_primary(node)
            if other is not None:
                return f" after Sentinel promoted {other} (waited {time.monotonic() - t0:.1f}s)"
            if time.monotonic() >= deadline:
                break
            self.stop.wait(FAILOVER_POLL_S)
        return f" with no failover after {time.monotonic() - t0:.1f}s of waiting"

    def incident_mutation(self, node: str) -> dict[str, ConfigValue]:
        """The 2013 operator's restart: persistence that loads nothing, and ``replicaof``."""
        handle = self.rig.nodes[node]
        mutation: dict[str, ConfigValue] = {"appendonly": "yes"}
        if handle.node.directives.get("appendonly") == "yes":  # hardened: AOF already on
            if self.rig.cluster.binary.at_least(7, 0):
                mutation["appenddirname"] = "appendonlydir-incident28"
            else:
                mutation["appendfilename"] = "appendonly-incident28.aof"
        host, port = handle.address
        mutation["replicaof"] = f"{host} {port}"
        return mutation

    def do_restart(self, node: str, mutation: str = "none", down_s: float = 0.0,
                   save: bool = True) -> str:  # fmt: skip
        handle = self.rig.nodes[node]
        directives = self.incident_mutation(node) if mutation == "incident" else {}
        handle.resume()
        handle.stop(save=save)
        self.stop.wait(down_s * self.scale)
        handle.node.directives.update(directives)
        handle.start()
        changed = ", ".join(f"{k} {v}" for k, v in directives.items()) or "no change"
        return f"{node} restarted ({changed}); came back as {handle.live_role()}"

    def do_fix_config(self, node: str) -> str:
        handle = self.rig.nodes[node]
        original = dict(self.rig.original_directives[node])
        other = self._other_primary(node)
        if other is not None:  # Sentinel elected another primary: rejoin it as a replica
            host, port = self.rig.cluster.reach(handle.dc, other)
            original["replicaof"] = f"{host} {port}"
            self._restart_with(handle, original, save=False)
            return f"{node}: config fixed, rejoined {other} as a replica"
        restored = ""
        if original.get("appendonly") == "yes":  # hardened: the original AOF is intact on disk
            self._restart_with(handle, original, save=False)
        else:  # 2013: dump.rdb may hold anything by now; the replicas hold the data
            restored = self._restore_from_replica(node)
        return f"{node}: config fixed{restored}; role {handle.live_role()}"

    def _restart_with(self, handle: Any, directives: dict[str, ConfigValue], *, save: bool) -> None:
        handle.resume()
        handle.stop(save=save)
        handle.node.directives = dict(directives)
        handle.start()

    def _other_primary(self, node: str) -> str | None:
        for name, handle in self.rig.nodes.items():
            if name != node and handle.is_running() and handle.live_role() == "master":
                return name
        return None

    def _restore_from_replica(self, node: str) -> str:
        """The 2013 repair: the freshest replica's snapshot becomes the primary's dump.rdb."""
        handle = self.rig.nodes[node]
        source = self._freshest_replica(node)
        if source is None:
            self._restart_with(handle, dict(self.rig.original_directives[node]), save=False)
            return " (no replica to restore from: restarted with what it had)"
        src = self.rig.nodes[source]
        with contextlib.closing(src.client(socket_timeout=RESTORE_SAVE_TIMEOUT_S)) as c:
            command(c, "SAVE")
        handle.resume()
        handle.stop(save=False)
        shutil.copyfile(src.node.dir / "dump.rdb", handle.node.dir / "dump.rdb")
        handle.node.directives = dict(self.rig.original_directives[node])
        handle.start()
        return f", data restored from {source}'s snapshot"

    def _freshest_replica(self, node: str) -> str | None:
        best: tuple[int, str] | None = None
        for name, handle in self.rig.nodes.items():
            if name == node or not handle.is_running():
                continue
            try:
                with contextlib.closing(handle.client(socket_timeout=2.0)) as c:
                    info = c.info("replication")
                    keys = int(c.dbsize())
            except (redis.RedisError, OSError):
                continue
            offset = int(info.get("slave_repl_offset", info.get("master_repl_offset", 0)))
            if keys > 0 and (best is None or offset > best[0]):
                best = (offset, name)
        return best[1] if best else None

    def do_resync_from_scratch(self, node: str) -> str:
        handle = self.rig.nodes[node]
        handle.kill()
        for leftover in ("dump.rdb", "appendonlydir", "appendonly.aof"):
            path = handle.node.dir / leftover
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        handle.start()
        return f"{node} restarted with no data: it must full-sync"

    def do_write_load(self, bytes_per_s: int, seconds: float, value_bytes: int = 2000) -> str:
        """Extra writes on the primary (ballast keys, outside tally's namespace)."""
        thread = threading.Thread(
            target=self._load, args=(bytes_per_s, seconds * self.scale, value_bytes),
            name="lab-write-load", daemon=True,
        )  # fmt: skip
        thread.start()
        self._load_threads.append(thread)
        return f"writing {bytes_per_s} B/s for {seconds * self.scale:.1f}s"

    def _load(self, bytes_per_s: int, seconds: float, value_bytes: int) -> None:
        per_s = max(1, bytes_per_s // value_bytes)
        value = incompressible(value_bytes, seed=value_bytes)  # as on the wire, in the RDB too
        primary = self.rig.topology.primary.name
        with contextlib.closing(self.rig.client(primary, socket_timeout=1.0, db=BALLAST_DB)) as c:
            paced_writes(c, per_s, seconds, self.stop, value, lambda i: f"lab:load:{i % 20_000}")

    def join_load(self) -> None:
        for thread in self._load_threads:
            thread.join(10)

    # -- gateway and billing -------------------------------------------------------------------------
    def do_gateway_faults(self, **knobs: Any) -> str:
        faults = self.rig.simulator.set_faults(**knobs)
        return f"gateway faults: {json.dumps({k: getattr(faults, k) for k in knobs})}"

    def do_billing(self, action: str) -> str:
        return self.billing.operator(action)

    def _serve_billing(self) -> Any:
        serve_action = getattr(self.billing, "serve_action", None)
        if serve_action is None:
            return None
        return self.billing

    def do_serve(self, action: str, dc: str) -> str:
        billing = self._serve_billing()
        if billing is None:
            return f"serve {action} {dc}: {self.billing.name} runs in the lab process (no serve)"
        return str(billing.serve_action(action, dc))

    def do_serve_kill_mid_charge(self, dc: str, wait_s: float = 20.0) -> str:
        """Waits (bounded, scaled) for a charge the simulator recorded after this step began
        with its response held back (``timeout_mode="delay"``), then kills the serve."""
        billing = self._serve_billing()
        if billing is None:
            return f"serve kill {dc}: {self.billing.name} runs in the lab process (no serve)"
        since_ms = now_ms()
        deadline = time.monotonic() + wait_s * self.scale
        while time.monotonic() < deadline and not self.stop.is_set():
            charge = self._held_charge(since_ms)
            if charge is not None:
                done = billing.serve_action("kill", dc)
                return f"{done} while charge {charge} awaited its answer"
            self.stop.wait(0.2)
        return (
            f"no held charge within {wait_s * self.scale:.0f}s: {billing.serve_action('kill', dc)}"
        )

    def _held_charge(self, since_ms: int) -> str | None:
        with contextlib.closing(self.rig.simulator.admin()) as admin:
            for record in admin.iter_records():
                if (record.kind == "charge" and record.created_ms >= since_ms
                        and record.status == "succeeded" and record.response_fault):  # fmt: skip
                    return str(record.idempotency_key)
        return None

    def do_cut_serve(self, dc: str, target: str, mode: str = "drop") -> str:
        if self._serve_billing() is None:
            return f"cut serve {dc}: {self.billing.name} runs in the lab process (no serve)"
        return f"serve-{dc} cut from {target} ({mode}): {self.rig.cut_serve(dc, target, mode)}"

    def do_close_account(self, account: str) -> str:
        close = getattr(self.billing, "close_account", None)
        if close is None:
            return f"close {account}: {self.billing.name} has no such procedure"
        return str(close(account))


class Timeline:
    def __init__(self, steps: list[Step], operator: Operator, events: EventLog, time_scale: float):
        if len(steps) > STEPS_MAX:
            raise ValueError(f"a timeline has at most {STEPS_MAX} steps")
        self.steps = sorted(steps, key=lambda s: s.at_s)
        self.operator, self.events, self.scale = operator, events, time_scale
        self.on_step: Callable[[dict[str, Any]], None] | None = None

    def run(self, start: float, *, tick: Callable[[], None], tick_s: float) -> None:
        """Run every step at its time ON THE CALLING THREAD, calling ``tick`` (progress) while
        waiting. The caller must be the run's main thread: redis-server children are started
        with PR_SET_PDEATHSIG, which fires when the THREAD that started them exits."""
        detached: list[threading.Thread] = []
        try:
            for step in self.steps:
                due = start + step.at_s * self.scale
                while time.monotonic() < due:
                    if self.operator.stop.wait(min(tick_s, max(0.0, due - time.monotonic()))):
                        return
                    if time.monotonic() < due:
                        tick()
                if step.detached:
                    thread = threading.Thread(
                        target=lambda s=step: self.events.write(self.execute(s, start)),
                        name=f"step-{step.action}", daemon=True,
                    )  # fmt: skip
                    thread.start()
                    detached.append(thread)
                else:
                    self.events.write(self.execute(step, start))
        finally:
            deadline = time.monotonic() + DETACHED_WAIT_S
            for thread in detached:  # the run settles after them (bounded)
                thread.join(max(0.0, deadline - time.monotonic()))

    def execute(self, step: Step, start: float) -> dict[str, Any]:
        began = time.monotonic()
        event: dict[str, Any] = {
            "t_ms": now_ms(), "at_s": round(began - start, 3), "action": step.action,
            "args": step.args, "fault": step.fault,
        }  # fmt: skip
        if step.detached:
            event["detached"] = True
        try:
            event["detail"] = self.operator.run(step.action, step.args)
            event["ok"] = True
        except Exception as exc:
            event["ok"] = False
            event["detail"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        event["took_ms"] = int((time.monotonic() - began) * 1000)
        if self.on_step is not None:
            self.on_step(event)
        return event


def paced_writes(
    client: redis.Redis,
    per_s: int,
    seconds: float,
    stop: threading.Event,
    value: bytes,
    key_of: Callable[[int], str],
) -> None:
    """``per_s`` SETs of ``value`` a second for ``seconds`` (or until ``stop``), key ``key_of(n)``
    for the n-th write. On a schedule: a busy machine that falls behind catches up (at most one
    second's worth per round), so the stated rate is what the node gets."""
    start = time.monotonic()
    end = start + seconds
    i = 0
    while time.monotonic() < end and not stop.is_set():
        due = int(per_s * (time.monotonic() - start)) - i
        with (
            contextlib.suppress(redis.RedisError, OSError),
            client.pipeline(transaction=False) as pipe,
        ):
            for _ in range(min(max(0, due), per_s)):
                i += 1
                pipe.set(key_of(i), value)
            pipe.execute()
        stop.wait(0.1)
