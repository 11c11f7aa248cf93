"""``tally lab chaos``: a seeded random fault schedule from the lab's whole vocabulary, and the
liveness rule it is judged by besides the invariants.

The vocabulary: partitions (a DC both ways, one way, the replicas), kill -9 / SIGSTOP / the 2013
operator's restart of a node, gateway timeouts-after-commit / outages / declines, a billing
freeze, and the subject's own processes: kill -9 or SIGSTOP a `tally serve` (then the same
command line again, or SIGCONT), or cut one from the gateway or its route to the primary.

The schedule is a list of fault windows: each draws a fault kind and a target, starts at a
random time, lasts a random while, and is healed by its own step. At most ``faults_max`` windows
overlap; faults that share one thing to heal (every network fault ends with the one ``heal``
action, every gateway fault with the gateway's faults cleared) never overlap with their own
kind, so one window's heal never ends another's fault early. Every window ends before
``quiet_s`` before the end of the workload, so the run ends with a healed system and a stretch
of plain traffic that the liveness rule looks at. The same seed, duration and options give the
same schedule (``random.Random(seed)``, no other source of randomness).

Liveness (TigerBeetle's Vortex): once every fault is healed and ``recovery_s`` has passed (the
time a failover takes), every client request completes, and within ``bound_s``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tally.lab.scenarios import Scenario
from tally.lab.timeline import Step

FAULTS_MAX_LIMIT = 4
WINDOW_S = (3.0, 9.0)  # how long one fault lasts, before time scale
GAP_S = (1.0, 4.0)  # quiet time before the next window starts in the same slot
LEAD_S = 4.0  # traffic before the first fault
QUIET_S = 14.0  # healed traffic at the end: recovery_s + what liveness judges
RECOVERY_S = 10.0  # a failover (Sentinel down-after + election) fits in this
LIVENESS_BOUND_S = 5.0
WINDOWS_MAX = 40

#: kind -> the resource its heal clears (kinds that share one never overlap)
RESOURCE = {
    "isolate": "network",
    "partition_replicas": "network",
    "isolate_one_way": "network",
    "kill": "node",
    "pause": "node",
    "incident_restart": "node",
    "gateway_timeout": "gateway",
    "gateway_outage": "gateway",
    "gateway_declines": "gateway",
    "freeze": "freeze",
    # the subject's own processes (`tally serve` in dc1 and dc2): one at a time, so one entry
    # point always answers; a cut serve link is a network fault (``heal`` clears it)
    "serve_kill": "serve",
    "serve_pause": "serve",
    "serve_cut": "network",
}
SERVE_DCS = ("dc1", "dc2")
SERVE_CUTS = ("gateway", "primary")
GATEWAY_FAULTS: dict[str, dict[str, Any]] = {
    "gateway_timeout": {"timeout_after_commit": 0.5, "timeout_mode": "drop"},
    "gateway_outage": {"outage": True},
    "gateway_declines": {"decline_rate": 0.5},
}
#: the 2013 operator's mistakes: only on the primary, where they did the damage
PRIMARY_ONLY = {"incident_restart"}


@dataclass(frozen=True)
class Window:
    kind: str
    target: str
    start_s: float
    end_s: float

    def steps(self) -> list[Step]:
        start, end = self.start_s, self.end_s
        if self.kind in ("isolate", "isolate_one_way"):
            mode = "drop" if self.kind == "isolate" else "refuse"
            return [Step(start, "isolate", {"dc": self.target, "mode": mode}), _heal(end)]
        if self.kind == "partition_replicas":
            return [Step(start, "partition_replicas", {"mode": "refuse"}), _heal(end)]
        if self.kind == "kill":
            return [Step(start, "kill", {"node": self.target}), _fix(end, self.target, "start")]
        if self.kind == "pause":
            return [Step(start, "pause", {"node": self.target}), _fix(end, self.target, "resume")]
        if self.kind == "incident_restart":
            restart = {"node": self.target, "mutation": "incident", "down_s": 1.0}
            return [Step(start, "restart", restart), *_incident_repair(end, self.target)]
        if self.kind == "freeze":
            return [Step(start, "billing", {"action": "freeze"}), _unfreeze(end)]
        if self.kind in ("serve_kill", "serve_pause"):
            # a killed serve is launched again without waiting for it to answer: a serve's
            # start takes seconds on a loaded machine, and every later step would run late
            fault, fix = ("kill", "launch") if self.kind == "serve_kill" else ("pause", "resume")
            return [Step(start, "serve", {"action": fault, "dc": self.target}),
                    Step(end, "serve", {"action": fix, "dc": self.target}, fault=False)]  # fmt: skip
        if self.kind == "serve_cut":
            dc, what = self.target.split(":", 1)
            return [Step(start, "cut_serve", {"dc": dc, "target": what, "mode": "drop"}),
                    _heal(end)]  # fmt: skip
        return [Step(start, "gateway_faults", GATEWAY_FAULTS[self.kind]), _gateway_clear(end)]

    def to_dict(self) -> dict[str, Any]:
        return {"at_s": self.start_s, "fault": self.kind, "target": self.target,
                "healed_at_s": self.end_s}  # fmt: skip


def _heal(at_s: float) -> Step:
    return Step(at_s, "heal", {}, fault=False)


def _fix(at_s: float, node: str, action: str) -> Step:
    return Step(at_s, action, {"node": node}, fault=False)


def _unfreeze(at_s: float) -> Step:
    return Step(at_s, "billing", {"action": "unfreeze"}, fault=False)


def _gateway_clear(at_s: float) -> Step:
    knobs = {"timeout_after_commit": 0.0, "outage": False, "decline_rate": 0.0}
    return Step(at_s, "gateway_faults", knobs, fault=False)


def _incident_repair(at_s: float, node: str) -> list[Step]:
    """incident-28's mitigation, in its order: freeze, the config fixed, the store rebuilt when
    it came back empty, unfreeze, remediate."""
    return [
        Step(at_s, "billing", {"action": "freeze"}, fault=False),
        Step(at_s + 0.5, "fix_config", {"node": node}, fault=False),
        Step(at_s + 2.0, "billing", {"action": "rebuild"}, fault=False),
        Step(at_s + 2.5, "billing", {"action": "unfreeze"}, fault=False),
        Step(at_s + 3.0, "billing", {"action": "remediate"}, fault=False, detached=True),
    ]


REPAIR_TAIL_S = {"incident_restart": 3.0}  # steps a heal takes after its window's end


@dataclass(frozen=True)
class Plan:
    seed: int
    duration_s: float
    faults_max: int
    windows: tuple[Window, ...]

    @property
    def healed_at_s(self) -> float:
        return max((w.end_s + REPAIR_TAIL_S.get(w.kind, 0.0) for w in self.windows), default=0.0)

    def steps(self) -> list[Step]:
        out = [step for w in self.windows for step in w.steps()]
        return sorted(out, key=lambda s: s.at_s)

    def schedule(self) -> list[dict[str, Any]]:
        return [w.to_dict() for w in self.windows]


def _targets(kind: str, nodes: Sequence[str], primary: str, dcs: Sequence[str]) -> list[str]:
    if kind == "serve_cut":
        return [f"{dc}:{what}" for dc in SERVE_DCS for what in SERVE_CUTS]
    if RESOURCE[kind] == "serve":
        return list(SERVE_DCS)
    if RESOURCE[kind] == "network":
        return [dcs[0]] if kind == "partition_replicas" else list(dcs)
    if RESOURCE[kind] == "node":
        return [primary] if kind in PRIMARY_ONLY else list(nodes)
    return ["gateway"] if RESOURCE[kind] == "gateway" else ["billing"]


def plan(seed: int, duration_s: float, faults_max: int, *, nodes: Sequence[str], primary: str,
         dcs: Sequence[str], kinds: Iterable[str] = tuple(RESOURCE)) -> Plan:  # fmt: skip
    """A seeded schedule over ``duration_s`` seconds of workload (before time scale)."""
    if not 1 <= faults_max <= FAULTS_MAX_LIMIT:
        raise ValueError(f"faults_max must be 1..{FAULTS_MAX_LIMIT}")
    last_end = duration_s - QUIET_S
    if last_end - LEAD_S < WINDOW_S[0]:
        raise ValueError(f"duration must be at least {LEAD_S + QUIET_S + WINDOW_S[0]:.0f} s")
    rng = random.Random(seed)
    kinds = sorted(kinds)
    slots = [LEAD_S + rng.uniform(0, GAP_S[1]) for _ in range(faults_max)]
    busy: dict[str, float] = {}  # resource -> when its current window (and repair) ends
    windows: list[Window] = []
    for _ in range(WINDOWS_MAX * 4):  # bounded: each round advances a slot
        if len(windows) >= WINDOWS_MAX:
            break
        slot = min(range(faults_max), key=lambda i: slots[i])
        start = slots[slot]
        kind = rng.choice(kinds)
        length = rng.uniform(*WINDOW_S)
        end = min(start + length, last_end - REPAIR_TAIL_S.get(kind, 0.0))
        resource = RESOURCE[kind]
        if end - start < WINDOW_S[0] or busy.get(resource, 0.0) > start:
            slots[slot] = max(start, busy.get(resource, 0.0)) + rng.uniform(*GAP_S)
            if slots[slot] >= last_end:
                slots[slot] = float("inf")
            if all(s == float("inf") for s in slots):
                break
            continue
        target = rng.choice(_targets(kind, nodes, primary, dcs))
        windows.append(Window(kind, target, round(start, 1), round(end, 1)))
        busy[resource] = end + REPAIR_TAIL_S.get(kind, 0.0) + 1.0
        slots[slot] = end + REPAIR_TAIL_S.get(kind, 0.0) + rng.uniform(*GAP_S)
    return Plan(seed, duration_s, faults_max, tuple(sorted(windows, key=lambda w: w.start_s)))


@dataclass(frozen=True)
class Liveness:
    held: bool
    bound_s: float
    worst_s: float
    judged: int  # requests invoked after every fault healed plus recovery_s
    incomplete: list[int]  # op numbers that were not answered (fail, unknown, nothing)
    slow: list[int]  # op numbers that took longer than the bound

    def to_dict(self) -> dict[str, Any]:
        return {"held": self.held, "bound_s": self.bound_s, "worst_s": round(self.worst_s, 3),
                "judged": self.judged, "incomplete": self.incomplete[:20],
                "slow": self.slow[:20]}  # fmt: skip


def healed_ms(timeline: list[dict[str, Any]], planned_ms: int) -> int:
    """When the last fault was really healed: the end of the last healing step that ran (a
    step runs when the one before it has finished, so on a loaded machine a slow step, such as
    a `serve` start, puts every later one behind its planned time), never before the plan's
    time. Liveness is judged from here, not from the plan (chaos seed 2 in CI: requests
    judged while a late heal's failover was still under way). A detached step (remediate) is
    not a heal and does not count."""
    ends = [int(e["t_ms"]) + int(e.get("took_ms", 0)) for e in timeline
            if e.get("fault") is False and e.get("action") != "settled" and "t_ms" in e
            and not e.get("detached")]  # fmt: skip
    return max([planned_ms, *ends])


#: What a caller retries by id after an unknown outcome (``lab.workload``): one request, however
#: many attempts it took.
RETRIED_BY_ID = frozenset({"debit", "topup"})


def liveness(history: list[dict[str, Any]], since_ms: int, bound_s: float) -> Liveness:
    """Every request invoked at or after ``since_ms`` completed with an answer from the service
    (``ok``: its result code says what billing decided; a ``fail`` or an unknown outcome means
    the system did not serve it), each within ``bound_s``. A request is what a caller asks:
    a write whose outcome was unknown is retried by its id (through the other data center's
    serve), and that retry is the same request, so it completes with its first ``ok`` attempt
    and its time runs from its first attempt (the 20-seed run counted an unknown first attempt
    as unserved although its retry was answered; TigerBeetle's Vortex judges requests so)."""
    key_of: dict[int, tuple[str, str] | int] = {}
    started: dict[tuple[str, str] | int, tuple[int, int]] = {}  # request -> (first op, t_ms)
    answered: dict[tuple[str, str] | int, int] = {}  # request -> its first ok answer's t_ms
    for h in history:
        op = int(h["op"])
        if h.get("type") == "invoke":
            ident = (h.get("value") or {}).get("id")
            key: tuple[str, str] | int = (
                (str(h.get("f")), str(ident)) if h.get("f") in RETRIED_BY_ID and ident else op
            )
            key_of[op] = key
            started.setdefault(key, (op, int(h["t_ms"])))
        elif h.get("type") == "ok" and op in key_of:
            answered.setdefault(key_of[op], int(h["t_ms"]))
    incomplete, slow, worst, judged = [], [], 0.0, 0
    for key, (op, t) in sorted(started.items(), key=lambda kv: kv[1]):
        if t < since_ms:
            continue
        judged += 1
        if key not in answered:
            incomplete.append(op)
            continue
        took = (answered[key] - t) / 1000
        worst = max(worst, took)
        if took > bound_s:
            slow.append(op)
    held = judged > 0 and not incomplete and not slow
    return Liveness(held, bound_s, worst, judged, incomplete, slow)


CHAOS = "chaos"
DURATION_S_DEFAULT = 120.0
LAB_NODES, LAB_PRIMARY, LAB_DCS = ("r1", "r2", "r3"), "r1", ("dc1", "dc2", "dc3")


def scenario(seed: int, duration_s: float, faults_max: int) -> tuple[Scenario, Plan]:
    """The chaos run as a Scenario of the lab's three-DC rig, and its plan."""
    p = plan(seed, duration_s, faults_max, nodes=LAB_NODES, primary=LAB_PRIMARY, dcs=LAB_DCS)
    isolations = sum(1 for w in p.windows if _loses_primary(w))
    kinds = ", ".join(sorted({w.kind for w in p.windows})) or "none"
    summary = (f"seed {seed}: {len(p.windows)} random faults over {duration_s:g} s, at most "
               f"{faults_max} at once ({kinds}); every fault healed by {p.healed_at_s:g} s, "
               f"then liveness: each request invoked from {p.healed_at_s + RECOVERY_S:g} s on "
               f"completes ok within {LIVENESS_BOUND_S:g} s.")  # fmt: skip
    return Scenario(CHAOS, summary, tuple(p.steps()), duration_s=duration_s,
                    isolates_primary=isolations > 0, isolations=max(1, isolations)), p  # fmt: skip


def _loses_primary(w: Window) -> bool:
    """Windows after which a failover may drop the primary's last acknowledged writes
    (invariant 9's bound counts each)."""
    if w.kind in ("isolate", "isolate_one_way"):
        return w.target == LAB_DCS[0]
    return w.kind == "partition_replicas" or (
        RESOURCE[w.kind] == "node" and w.target == LAB_PRIMARY
    )
