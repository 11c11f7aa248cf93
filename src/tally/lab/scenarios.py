"""The named scenarios. Offsets are seconds at ``--time-scale 1``; every scenario runs in both
profiles with the same faults and the same operator mistakes (the profile changes the deployment,
never the script). ``duration_s`` is how long the workload runs; faults end before it does.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tally.lab.timeline import Step

#: (figure, comparison, value): e.g. ("full_syncs", ">=", 2)
Expect = tuple[str, str, float]
_COMPARE = {">=": operator.ge, "<=": operator.le, "==": operator.eq}
#: How long past its time the operator of a crash or a stall waits for Sentinel's promotion
#: before bringing the primary back (``Operator._await_failover``): a scenario that claims a
#: failover gets one although a first election under load can fail (the next comes 20 s later)
FAILOVER_WAIT_S = 14.0


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    steps: tuple[Step, ...]
    duration_s: float = 60.0
    rig: dict[str, Any] = field(default_factory=dict)  # RigSpec overrides
    #: the acknowledged debits a correct system may lose here (DESIGN invariant 9): only a
    #: partition that isolates the primary may lose any
    isolates_primary: bool = False
    #: how many such partitions (or primary faults) the scenario holds: the bound counts each
    isolations: int = 1
    #: what the control run (2013 profile, legacy billing) must show: the scenario's own damage.
    #: Its exit code alone proves nothing, since legacy breaks invariant 4 by construction (it
    #: charges cards with no intent in SQL) whatever the scenario does.
    control_shows: tuple[Expect, ...] = ()
    #: the hardened/tally run's exit code: 0, or 1 where the scenario removes a defence on
    #: purpose (and ``subject_shows`` says what that costs)
    subject_exit: int = 0
    subject_shows: tuple[Expect, ...] = ()
    #: the hardened profile's Sentinels must fail over during this scenario
    subject_fails_over: bool = False
    #: why ``control_shows`` is empty, where the 2013 deployment has nothing to show
    control_note: str = ""
    #: runs on a Redis Cluster (``tally.lab.cluster_rig``), not the Sentinel topology
    cluster: bool = False


def unmet(figures: Mapping[str, Any], expects: tuple[Expect, ...]) -> list[str]:
    """The expectations ``figures`` (a report's) do not meet, as readable lines."""
    return [
        f"{name} {op} {value} (got {figures.get(name)})"
        for name, op, value in expects
        if not isinstance(figures.get(name), int | float) or not _COMPARE[op](figures[name], value)
    ]


def _op(at_s: float, name: str, **args: Any) -> Step:
    return Step(at_s, name, args, fault=False)


def _fault(at_s: float, name: str, **args: Any) -> Step:
    return Step(at_s, name, args, fault=True)


INCIDENT_28 = Scenario(
    "incident-28",
    "2013-07-18: a network blip (2.5 s, shorter than Sentinel's down-after) and every replica "
    "loses the primary, all reconnect at once (full-sync storm on a "
    "loaded primary over capped WAN links); the operator restarts the primary with AOF enabled "
    "and no AOF file (it comes back EMPTY) and with replicaof set (READ-ONLY); later the config "
    "is fixed, the store restored or rebuilt, and the damage remediated.",
    (
        _fault(6, "write_load", bytes_per_s=300_000, seconds=14),
        _fault(6, "partition_replicas", mode="refuse"),
        _fault(8.5, "heal"),
        _fault(26, "restart", node="r1", mutation="incident", down_s=3),
        _op(40, "billing", action="freeze"),
        _op(41, "fix_config", node="r1"),
        _op(45, "billing", action="rebuild"),
        _op(46, "billing", action="unfreeze"),
        _op(50, "billing", action="remediate"),
    ),
    duration_s=58,
    rig={"rdb_key_save_delay_us": 150},
    control_shows=(
        ("full_syncs", ">=", 2),
        ("cards_charged_more_than_once", ">=", 1),
        ("payments_lost", ">=", 1),
        ("wrongful_suspensions", ">=", 1),
    ),
    subject_shows=(
        ("partial_syncs", ">=", 2),
        ("cards_charged_more_than_once", "==", 0),
        ("payments_lost", "==", 0),
        ("accounts_drifted", "==", 0),
    ),
)

STORM_ONLY = Scenario(
    "storm-only",
    "F1 alone: every replica loses the primary for 2.5 s, then all reconnect at once.",
    (
        _fault(6, "write_load", bytes_per_s=300_000, seconds=10),
        _fault(6, "partition_replicas", mode="refuse"),
        _fault(8.5, "heal"),
    ),
    duration_s=30,
    rig={"rdb_key_save_delay_us": 150},
    control_shows=(("full_syncs", ">=", 2),),
    subject_shows=(("full_syncs", "==", 0), ("partial_syncs", ">=", 2)),
)

PRIMARY_DC_PARTITION = Scenario(
    "primary-dc-partition",
    "The primary's data center is cut off for 15 s (longer than Sentinel's down-after and "
    "min-replicas-max-lag): hardened, the Sentinels in dc2 and dc3 elect a new primary, the old "
    "one stops taking writes it cannot replicate and rejoins as a replica after the heal; the "
    "debits it acknowledged meanwhile are lost, bounded by min-replicas-max-lag.",
    (_fault(6, "isolate", dc="dc1", mode="drop"), _fault(21, "heal")),
    duration_s=34,
    isolates_primary=True,
    control_note="2013 has no Sentinel: the cut-off primary keeps serving dc1, held replica "
    "links resume after the heal (shorter than repl-timeout) and nothing is lost; this scenario "
    "is about the failover the hardened profile does",
    subject_shows=(("accounts_drifted", "==", 0),),
    subject_fails_over=True,
)

PRIMARY_DC_PARTITION_NO_MIN = Scenario(
    "primary-dc-partition-no-min-replicas",
    "The primary's data center cut off for 40 s with min-replicas-to-write 0 in both "
    "profiles: the isolated primary keeps taking writes nobody else has, and they are lost at "
    "the heal. Before serve waited for a replica's acknowledgement (TALLY_WAIT_REPLICAS, auto "
    "1 with Sentinel) they were answered ok: invariant 9 failed (measured with 25 s: 696 lost, "
    "bound 720), which showed what min-replicas-to-write is for. Now no replica acknowledges "
    "them, their callers hear outcome_unknown and retry by id: 0 acknowledged debits lost even "
    "without min-replicas-to-write (the cut stays 40 s, long enough to have shown the loss).",
    (_fault(6, "isolate", dc="dc1", mode="drop"), _fault(46, "heal")),
    duration_s=58,
    rig={"min_replicas_to_write": 0},
    isolates_primary=True,
    control_note=PRIMARY_DC_PARTITION.control_note,
    subject_shows=(("debits_acknowledged_lost", "==", 0), ("accounts_drifted", "==", 0)),
    subject_fails_over=True,
)

PRIMARY_CRASH = Scenario(
    "primary-crash",
    "SIGKILL on the primary. Hardened: Sentinel promotes a replica; the old primary later "
    "rejoins (started once Sentinel has promoted a replica, at most 14 s late). 2013: no "
    "Sentinel, the operator starts it again after 12 s.",
    (
        _fault(6, "kill", node="r1"),
        _op(18, "start", node="r1", after_failover_s=FAILOVER_WAIT_S),
        _op(24, "fix_config", node="r1"),
    ),
    duration_s=36,
    control_shows=(("debits_acknowledged_lost", ">=", 1),),
    subject_shows=(("debits_acknowledged_lost", "==", 0),),
    subject_fails_over=True,
)

PRIMARY_PAUSE = Scenario(
    "primary-pause",
    "SIGSTOP on the primary for 10 s (a stuck process, a long GC-like stall), then SIGCONT: "
    "hardened, Sentinel fails over meanwhile (SIGCONT waits for its promotion, at most 14 s). "
    "A write a serve sent to the stalled primary "
    "before it learnt of the failover is applied when the primary resumes (its replicas' last "
    "ACK is younger than min-replicas-max-lag), then discarded when Sentinel turns it into a "
    "replica. Before serve waited for a replica's acknowledgement (TALLY_WAIT_REPLICAS) such "
    "a write was answered ok and lost (seen with the real serve processes, seed 3: 1 debit); "
    "now no replica acknowledges it and the caller hears outcome_unknown and retries by id.",
    (
        _fault(6, "pause", node="r1"),
        _fault(16, "resume", node="r1", after_failover_s=FAILOVER_WAIT_S),
        _op(22, "fix_config", node="r1"),
    ),
    duration_s=34,
    control_shows=(("debits_acknowledged_lost", ">=", 1),),
    isolates_primary=True,
    subject_shows=(("accounts_drifted", "==", 0), ("debits_acknowledged_lost", "==", 0)),
    subject_fails_over=True,
)

OUTPUT_BUFFER_LOOP = Scenario(
    "output-buffer-loop",
    "F2: a replica behind a slow link (300 kB/s) must full-sync while the primary writes "
    "steadily; the 2013 output-buffer limit (Redis's default, scaled to the lab dataset: "
    "2mb hard, 512kb soft over 10 s) is overflowed mid-sync and the sync starts over.",
    (
        _fault(4, "link_bandwidth", dc="dc3", rate_bytes_s=300_000),
        _fault(5, "write_load", bytes_per_s=250_000, seconds=30),
        _fault(6, "resync_from_scratch", node="r3"),
        _op(36, "link_bandwidth", dc="dc3", rate_bytes_s=0),
    ),
    duration_s=45,
    # measured (CLIENT LIST omem on the primary, 2013, seed 3): with 4mb/1mb the replica's
    # buffer peaked at 2.3 MB and dipped under 1 MB every few seconds, because the proxy and
    # the loopback sockets' kernel buffers take in 1-4 MB more than a WAN path would before
    # the sender blocks: the limit never fired and the scenario showed no loop. With 2mb/512kb
    # the loop came and went with the kernel's autotuned buffers (CI 2026-12-04: one full sync);
    # the proxy's sockets now have fixed buffers (faultproxy.link), and 2 runs side by side
    # each showed 3 full syncs at CI's size (the limit fires ~7 s into each sync)
    rig={"dataset_bytes": 6_000_000, "buffer_limit_2013": "replica 2mb 512kb 10"},
    # the resynced replica's full sync is cut by the output-buffer limit and starts over
    control_shows=(("full_syncs", ">=", 2),),
    subject_shows=(("full_syncs", "==", 1),),
)

GATEWAY_TIMEOUT_AFTER_COMMIT = Scenario(
    "gateway-timeout-after-commit",
    "For 15 s the gateway commits four charges in five and then drops the response: the "
    "outcome is unknown to the caller, the card is charged.",
    # Four in five, not half: which responses drop is drawn per idempotency key, and the 2013
    # control's keys are fresh uuids. At half, a CI run (2026-12-05) dropped only declines: the
    # window's 3 succeeded charges all answered (1 in 8), so no charge went without a credit
    # and the control showed nothing. At 0.8 that is 1 in 125 with 3 successes.
    (
        _fault(5, "gateway_faults", timeout_after_commit=0.8, timeout_mode="drop"),
        _fault(20, "gateway_faults", timeout_after_commit=0.0),
        _op(28, "billing", action="remediate"),
    ),
    duration_s=32,
    control_shows=(("cards_charged_more_than_once", ">=", 1), ("charges_without_credit", ">=", 1)),
    subject_shows=(("cards_charged_more_than_once", "==", 0), ("charges_without_credit", "==", 0)),
)

FAILOVER_THEN_RECHARGE = Scenario(
    "failover-then-recharge",
    "SIGKILL on the primary; Sentinel promotes a replica. The `tally serve` processes must "
    "follow the failover and keep charging cards for recharges, without a restart (the defect "
    "issue 13 names: a recharge health probe that kept the client it was built with reported "
    "store_not_primary for good). 2013: no Sentinel, the operator starts the primary again.",
    PRIMARY_CRASH.steps,
    duration_s=36,
    control_shows=(("debits_acknowledged_lost", ">=", 1),),
    subject_shows=(
        ("charges_after_failover", ">=", 1),
        ("serve_restarts", "==", 0),
        ("debits_acknowledged_lost", "==", 0),
    ),
    subject_fails_over=True,
)

SERVE_CRASH_MID_RECHARGE = Scenario(
    "serve-crash-mid-recharge",
    "The gateway holds every charge's answer for 3 s after committing it; serve-dc2 is stalled "
    "(SIGSTOP) so serve-dc1's completer makes the charges, and serve-dc1 is killed -9 the moment "
    "the simulator's records show a charge it has not answered: between the charge and its "
    "credit. dc2 resumes and dc1 is started again with the same command line: the saga must "
    "find the charge by its key and credit it once, never charge again. The control has no "
    "service to kill: the held answers outlast its 2 s gateway timeout, it charges blindly.",
    (
        _fault(5, "serve", action="pause", dc="dc2"),
        _fault(
            5,
            "gateway_faults",
            timeout_after_commit=1.0,
            timeout_mode="delay",
            timeout_delay_ms=3000,
        ),
        _fault(5.2, "serve_kill_mid_charge", dc="dc1"),
        _fault(13, "gateway_faults", timeout_after_commit=0.0),
        _op(13, "serve", action="resume", dc="dc2"),
        _op(15, "serve", action="start", dc="dc1"),
    ),
    duration_s=30,
    control_shows=(("charges_without_credit", ">=", 1),),
    subject_shows=(
        ("serve_killed_mid_charge", ">=", 1),
        ("cards_charged_more_than_once", "==", 0),
        ("charges_without_credit", "==", 0),
        ("payments_lost", "==", 0),
    ),
)

RETRY_THROUGH_OTHER_DC = Scenario(
    "retry-through-other-dc",
    "serve-dc1 is stalled (SIGSTOP) for 8 s, past its callers' 3 s timeout: every call in "
    "flight there has an unknown outcome and is retried with the same transfer id through "
    "serve-dc2; when dc1 resumes it answers the stale requests too. Every transfer must be "
    "applied once (no id answered differently, balances equal to the ledger).",
    (_fault(6, "serve", action="pause", dc="dc1"), _fault(14, "serve", action="resume", dc="dc1")),
    duration_s=26,
    control_note="the control runs in the lab process: there is no service process to stall "
    "and no second entry point, so its calls never time out here",
    subject_shows=(
        ("ids_retried_through_other_dc", ">=", 1),
        ("accounts_drifted", "==", 0),
        ("debits_acknowledged_lost", "==", 0),
    ),
)

ACCOUNT_CLOSED_MID_RECHARGE = Scenario(
    "account-closed-mid-recharge",
    "The gateway holds charge answers for 3 s while an operator closes accounts whose "
    "recharge is in flight (found through the recharges API): the charge must not be credited "
    "twice, nor lost, nor the card charged again for a closed account.",
    (
        _fault(
            5,
            "gateway_faults",
            timeout_after_commit=1.0,
            timeout_mode="delay",
            timeout_delay_ms=3000,
        ),
        *(_op(at, "close_account", account="mid-recharge") for at in range(6, 14)),
        _fault(14, "gateway_faults", timeout_after_commit=0.0),
    ),
    duration_s=26,
    control_note="2013 had no account close: legacy keeps charging and crediting; the held "
    "answers are what gateway-timeout-after-commit shows for the control",
    subject_shows=(
        ("accounts_closed", ">=", 1),
        ("cards_charged_more_than_once", "==", 0),
        ("payments_lost", "==", 0),
        ("accounts_drifted", "==", 0),
    ),
)

SERVE_PARTITIONS = Scenario(
    "serve-partitions",
    "Each serve is cut from one thing it needs: serve-dc2 from the gateway and serve-dc1 from "
    "the ledger of record (with a PostgreSQL ledger; a SQLite file has no link to cut) for 8 s, "
    "then serve-dc2 from the primary for 6 s. Callers retry unknown outcomes through the other "
    "data center; recharges wait or go through the other serve; nothing is lost or doubled.",
    (
        _fault(5, "cut_serve", dc="dc2", target="gateway", mode="drop"),
        _fault(5, "cut_serve", dc="dc1", target="ledger", mode="drop"),
        _fault(13, "heal"),
        _fault(15, "cut_serve", dc="dc2", target="primary", mode="refuse"),
        _fault(21, "heal"),
    ),
    duration_s=30,
    control_note="the control runs in the lab process: no serve to cut",
    subject_shows=(
        ("cards_charged_more_than_once", "==", 0),
        ("charges_without_credit", "==", 0),
        ("payments_lost", "==", 0),
        ("debits_acknowledged_lost", "==", 0),
        ("accounts_drifted", "==", 0),
    ),
)

CHAOS_SEED_2 = Scenario(
    "chaos-seed-2",
    "The regression scenario of `tally lab chaos --seed 2` (failed in CI, 2026-12-04): its "
    "faults in its order, at the times CI's load gave them (a slow serve start put every later "
    "step behind its plan). serve-dc2 killed -9 and launched again; r1 killed -9 while dc2 is "
    "cut off, so Sentinel (dc1, dc3) promotes r3; r1 started again with its own config; then "
    "r3's data center is cut off (connections refused) and Sentinel promotes another node, and "
    "the cut heals just before the load stops: r3 is still a primary of its own when the run "
    "settles, until Sentinel's next look at it demotes it. Before the lab waited for one "
    "primary, the run read its final Redis state from r3 (the stale one) and reported 25 "
    "accounts with Redis above the ledger; the liveness rule judged requests from the plan's "
    "heal time while the late heals' failovers were still under way. Acknowledged debits "
    "may be lost here (invariant 9 judges them against its bound; this scenario does not "
    "expect 0): in CI on 2026-12-05 the Sentinel in dc3, which had seen r1 come back as a "
    "primary but not Sentinel's turning it into a replica before dc3 was cut off, told r1 "
    "(promoted meanwhile by dc1 and dc2, epoch 2) to replicate its stale r3 at the heal, 37 ms "
    "before it heard of epoch 2: r1's 8 s of writes, each acknowledged by r2, were discarded "
    "(293 debits, bound 1440; no drift, since the drainer's fence had not settled them).",
    (
        _fault(2, "serve", action="kill", dc="dc2"),
        _op(8, "serve", action="launch", dc="dc2"),
        _fault(6, "kill", node="r1"),
        _fault(6, "isolate", dc="dc2", mode="drop"),
        _op(13, "heal"),
        _op(13, "start", node="r1"),
        _fault(20, "isolate", dc="dc3", mode="refuse"),
        _fault(21, "gateway_faults", outage=True),
        _op(25, "gateway_faults", timeout_after_commit=0.0, outage=False, decline_rate=0.0),
        _op(33, "heal"),
    ),
    duration_s=35,
    isolates_primary=True,
    isolations=2,
    control_shows=(("debits_acknowledged_lost", ">=", 1),),
    subject_shows=(("accounts_drifted", "==", 0),),
    subject_fails_over=True,
)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        INCIDENT_28,
        STORM_ONLY,
        PRIMARY_DC_PARTITION,
        PRIMARY_DC_PARTITION_NO_MIN,
        PRIMARY_CRASH,
        PRIMARY_PAUSE,
        OUTPUT_BUFFER_LOOP,
        GATEWAY_TIMEOUT_AFTER_COMMIT,
        FAILOVER_THEN_RECHARGE,
        SERVE_CRASH_MID_RECHARGE,
        RETRY_THROUGH_OTHER_DC,
        ACCOUNT_CLOSED_MID_RECHARGE,
        SERVE_PARTITIONS,
        CHAOS_SEED_2,
    )
}
