"""Scenarios on a Redis Cluster (issue 15, item 6): one shard's failure is one shard's problem.

The topology is ``tally.lab.cluster_rig``'s (three shards, each primary with a replica in each
other data center); the subject is two real ``tally serve`` processes started with a
``redis+cluster://`` URL, in dc1 and dc2, driven over HTTP like every other scenario. The fault
lands on shard ``s2`` (primary ``b2`` in dc2, replicas ``b3`` and ``b1``).

The control. The legacy billing (the 2013 logic) talks to one Redis primary, and the 2013
deployment had no cluster (Redis Cluster shipped with Redis 3.0, in 2015): a "2013 control"
on a cluster would be a deployment nobody ran, so these scenarios have none (runner: usage
error). What the 2013 defaults would cost on a cluster is what preflight judges on every
cluster node (TP012 node timeout, TP014 ``cluster-require-full-coverage yes``: one shard's
loss stops every shard, TP001/TP002 the 2013 persistence defects).

Figures the scenarios state, beyond the checker's (:func:`cluster_figures`, from the run's
files: ``cluster.json``, written by the rig when the accounts were opened, maps each account
and each of tally's logical shards to its cluster shard). A write TOUCHES a shard when its
account's balance or its transfer id's record lives there: on a cluster those are two slots
(README "One slot per script call"), so a transfer whose id falls in the lost shard is refused
too, whatever its account (about a third of the other shards' transfers here):

- ``faulted_shard_accounts`` / ``other_shards_accounts``: accounts on the faulted shard / others;
- ``other_shards_writes_ok_during_fault``: writes touching only other shards answered ok (any
  result) inside the fault window (``window_ms``: from the first fault to the last
  heal/start/operator step after it or the end of the faulted shard's last span without a
  primary holding an epoch key, whichever is later);
- ``other_shards_store_lost_answers``: ``store_lost`` answers for single writes touching only
  other shards (any time): must be 0, one shard's loss refuses only what touches it;
- ``batch_items_refused_for_another_shard``: items of batch debits (``/v1/debits/batch``,
  the workload's ids ``b<n>-<i>``) touching only other shards answered ``store_lost`` (serve
  answered a whole batch with the first item's error before each item got its own answer);
- ``refused_but_applied``: writes answered with a refusal that says nothing was written
  (``fail``, e.g. 503 ``store_lost``) whose id moved money all the same (a code-0 record in
  the final store, or a ledger row with result 0): a caller told "nothing was written" does
  not retry and is wrong; must be 0 (a refused retry of an attempt whose outcome was unknown
  is not counted: that request is still unknown, see ``refused_but_applied``);
- ``faulted_shard_store_lost_answers``: ``store_lost`` answers for writes touching the faulted
  shard;
- ``faulted_shard_seconds_not_writable`` / ``other_shards_seconds_not_writable``: the checker's
  ``seconds_not_writable`` over each side's writes only;
- ``shard_failovers``: the faulted shard's replicas the monitor saw as master;
- ``writes_acknowledged_on_lost_shard``: invariant 6 per shard: writes to the faulted shard's
  accounts acknowledged as applied whose whole call lies inside a span where no node of that
  shard was a primary holding an epoch key (the monitor's samples).
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

from tally.lab import checker
from tally.lab.cluster_rig import SLOT_MAP_FILE
from tally.lab.history import Operation, read_history
from tally.lab.rig import NAMESPACE, SHARDS
from tally.lab.scenarios import Scenario, _fault, _op
from tally.store.keys import KeyLayout

#: the workload's batch debit items (``tally.lab.workload``: ``b<8 digits>-<item>``)
BATCH_ID = re.compile(r"^b\d{8}-\d+$")
FAULTED_SHARD = "s2"
FAULTED_PRIMARY = "b2"

CONTROL_NOTE = (
    "no 2013 control on a cluster: the legacy billing talks to one primary and the 2013 "
    "deployment had no cluster (Redis Cluster shipped in 2015); the 2013 defaults' cost on a "
    "cluster is what preflight judges on every node (TP014: full coverage stops every shard)"
)

SHARD_PRIMARY_CRASH = Scenario(
    "shard-primary-crash",
    "SIGKILL on shard s2's primary (b2, dc2). Only what touches s2 pauses: the other shards "
    "keep serving through both serves; after cluster-node-timeout (3000 ms) the primaries "
    "mark b2 failed and one of its replicas wins the votes of BOTH other primaries (a "
    "majority of three) and takes its slots; the serves follow the new slot map without a "
    "restart. b2 is started again 24 s later and rejoins as a replica (nodes.conf names the "
    "newer primary). The two replicas have the same offset, so the same rank: their "
    "elections can start within milliseconds and split the two votes (2 of 4 runs), and the "
    "next round comes 12 s after the first: the rig states cluster-replica-validity-factor 3 "
    "so that round may still promote (with the profile's 1 the replicas were too old for it: "
    "no failover at all), and b2 stays down past it. Acknowledged debits lost: 0 (every "
    "write waits for a replica).",
    (_fault(6, "kill", node=FAULTED_PRIMARY), _op(30, "start", node=FAULTED_PRIMARY)),
    duration_s=38,
    cluster=True,
    control_note=CONTROL_NOTE,
    subject_shows=(
        ("shard_failovers", ">=", 1),
        ("other_shards_writes_ok_during_fault", ">=", 1),
        ("other_shards_store_lost_answers", "==", 0),
        ("debits_acknowledged_lost", "==", 0),
        ("accounts_drifted", "==", 0),
        ("serve_restarts", "==", 0),
    ),
)

#: a shard restarted empty (both shard-restarted-empty scenarios): store_lost for what touches
#: it and only that, and once healed nothing lost
_ONLY_THE_LOST_SHARD_REFUSES: tuple[tuple[str, str, int], ...] = (
    ("faulted_shard_store_lost_answers", ">=", 1),
    ("other_shards_store_lost_answers", "==", 0),
)
_NOTHING_LOST: tuple[tuple[str, str, int], ...] = (
    ("writes_acknowledged_on_lost_shard", "==", 0),
    ("refused_but_applied", "==", 0),
    ("payments_lost", "==", 0),
    ("debits_acknowledged_lost", "==", 0),
    ("accounts_drifted", "==", 0),
)

SHARD_RESTARTED_EMPTY = Scenario(
    "shard-restarted-empty",
    "The 2013 defect on one shard: s2's primary (b2) is restarted by an operator with "
    "appendonly yes pointing at an AOF that does not exist. It is back before "
    "cluster-node-timeout (3000 ms), so nobody fails it over: it is s2's primary again, EMPTY "
    "(its replicas keep s2: hardened nodes serve syncs only once admitted, and b2 is kept "
    "out while its replicas hold s2's epoch). s2's epoch "
    "keys are gone: both serves refuse what touches s2 (its accounts' balances, the ids whose "
    "record lives there) with store_lost, nothing written, while s1 and s3 keep serving. The "
    "operator restores b2's config: its own AOF is intact on disk, so s2 is back with its "
    "data, its epoch and its journal not yet drained, and its replicas resync from it. Then "
    "the operator asks for the one-shard rebuild (POST /v1/admin/rebuild {force: false, "
    "shard: K} per logical shard of s2), which refuses a healthy shard. No money lost. Healed "
    "by the rebuild alone instead of the restore: shard-restarted-empty-rebuild.",
    (
        _fault(6, "restart", node=FAULTED_PRIMARY, mutation="incident", down_s=0.5),
        _op(14, "fix_config", node=FAULTED_PRIMARY),
        _op(18, "billing", action="rebuild_shard:" + FAULTED_SHARD),
    ),
    duration_s=28,
    cluster=True,
    control_note=CONTROL_NOTE,
    subject_shows=(
        *_ONLY_THE_LOST_SHARD_REFUSES,
        ("other_shards_writes_ok_during_fault", ">=", 1),
        *_NOTHING_LOST,
    ),
)

SHARD_RESTARTED_EMPTY_REBUILD = Scenario(
    "shard-restarted-empty-rebuild",
    "shard-restarted-empty without the restore: b2 stays up EMPTY and the operator asks for "
    "the one-shard rebuild (POST /v1/admin/rebuild {force: false, shard: K} per logical shard "
    "of s2). Hardened cluster nodes serve syncs only once admitted (the sync quarantine): b2 "
    "came back holding no epoch while its replicas held s2's, so it was kept out and its "
    "replicas kept s2, undrained journal included. The rebuild promotes the replica that "
    "holds s2's epoch (CLUSTER FAILOVER TAKEOVER) instead of loading the ledger: every "
    "logical shard of s2 is back at once, b2 follows it as an admitted replica, and nothing "
    "is lost. (Before the quarantine: the replicas copied the empty set within a second, the "
    "rebuild came from the ledger, and the undrained tail was lost: 16 and 11 acknowledged "
    "debits in two runs.)",
    (
        _fault(6, "restart", node=FAULTED_PRIMARY, mutation="incident", down_s=0.5),
        _op(14, "billing", action="rebuild_shard:" + FAULTED_SHARD),
    ),
    duration_s=28,
    cluster=True,
    control_note=CONTROL_NOTE,
    subject_shows=(*_ONLY_THE_LOST_SHARD_REFUSES, *_NOTHING_LOST),
)

SHARD_STORM = Scenario(
    "shard-storm",
    "Incident 28's blip on one shard: every replica of s2 loses b2 at once for 2.5 s "
    "(shorter than cluster-node-timeout: no failover) while b2 takes 300 kB/s of extra "
    "writes, then all reconnect at once. Hardened (repl-backlog-size sized from "
    "write_rate x partition_s_max x safety_factor): both resume with a partial resync, no "
    "full sync; the other shards never notice.",
    (
        _fault(6, "write_load", bytes_per_s=300_000, seconds=10, node=FAULTED_PRIMARY),
        _fault(6, "partition_shard_replicas", shard=FAULTED_SHARD, mode="refuse"),
        _fault(8.5, "heal"),
    ),
    duration_s=22,
    rig={"rdb_key_save_delay_us": 150},
    cluster=True,
    control_note=CONTROL_NOTE,
    subject_shows=(
        ("full_syncs", "==", 0),
        ("partial_syncs", ">=", 2),
        ("other_shards_store_lost_answers", "==", 0),
        ("debits_acknowledged_lost", "==", 0),
        ("accounts_drifted", "==", 0),
    ),
)

CLUSTER_SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        SHARD_PRIMARY_CRASH,
        SHARD_RESTARTED_EMPTY,
        SHARD_RESTARTED_EMPTY_REBUILD,
        SHARD_STORM,
    )
}


# -- figures ----------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _faulted_shard(layout: dict[str, Any], events: list[dict[str, Any]]) -> tuple[str, int]:
    """The shard the first fault names (its ``shard`` or the shard of its ``node``), and when."""
    for event in events:
        if not event.get("fault"):
            continue
        args = event.get("args") or {}
        if args.get("shard"):
            return str(args["shard"]), int(event["t_ms"])
        for shard, spec in (layout.get("shards") or {}).items():
            if args.get("node") in spec["nodes"]:
                return shard, int(event["t_ms"])
    return "", 0


def _lost_spans(monitor: list[dict[str, Any]], nodes: list[str]) -> list[tuple[int, int]]:
    """Spans between consecutive samples that both saw no node of ``nodes`` as a primary
    holding an epoch key."""
    states = []
    for sample in monitor:
        if sample.get("kind") != "nodes":
            continue
        seen = sample.get("nodes") or {}
        serving = any(
            (seen.get(n) or {}).get("role") == "master" and (seen.get(n) or {}).get("epoch", 0) > 0
            for n in nodes
        )
        states.append((int(sample["t_ms"]), serving))
    return [(t0, t1) for (t0, s0), (t1, s1) in itertools.pairwise(states) if not s0 and not s1]


def _window_end(events: list[dict[str, Any]], spans: list[tuple[int, int]], since: int,
                history: list[Operation]) -> int:  # fmt: skip
    """The end of the fault window: the last heal/start/rebuild after the fault, or the end of
    the faulted shard's last lost span, whichever is later (the end of the run when none)."""
    ends = [int(e["t_ms"]) for e in events if int(e.get("t_ms", 0)) >= since
            and e.get("action") in ("heal", "start", "billing")]  # fmt: skip
    ends += [hi for lo, hi in spans if hi >= since]
    if ends:
        return max(ends)
    return max((op.completed_ms or op.invoked_ms for op in history), default=since)


def cluster_figures(out: Path) -> dict[str, Any]:
    layout = _read_json(out / SLOT_MAP_FILE)
    accounts: dict[str, str] = layout.get("accounts") or {}
    events = checker._jsonl(out / "events.jsonl")
    monitor = checker._jsonl(out / "monitor.jsonl")
    history_path = out / "history.jsonl"
    history = read_history(history_path) if history_path.is_file() else []
    shard, since = _faulted_shard(layout, events)
    nodes = list((layout.get("shards") or {}).get(shard, {}).get("nodes") or [])
    spans = _lost_spans(monitor, nodes) if nodes else []
    until = _window_end(events, spans, since, history) if shard else 0

    logical: dict[str, str] = layout.get("logical_shards") or {}
    ids = KeyLayout(NAMESPACE, len(logical) or SHARDS)

    def on_faulted(op: Operation) -> bool:
        """The write touches the faulted shard: its account's balance, or its id's record."""
        id_shard = logical.get(str(ids.shard_of(str(op.value.get("id", "")))))
        return shard in (accounts.get(str(op.value.get("account"))), id_shard)

    writes = [op for op in history if op.f in checker.WRITE_FS and op.value.get("account")]
    faulted = [op for op in writes if on_faulted(op)]
    others = [op for op in writes if not on_faulted(op)]
    runs = checker._merged(spans)
    moved = _moved(out)
    return {
        "faulted_shard": shard,
        "window_ms": [since, until],
        "faulted_shard_accounts": sum(1 for s in accounts.values() if s == shard),
        "other_shards_accounts": sum(1 for s in accounts.values() if s != shard),
        "other_shards_writes_ok_during_fault": sum(
            1
            for op in others
            if op.type == "ok"
            and op.completed_ms is not None
            and since <= op.invoked_ms
            and op.completed_ms <= until
        ),
        "other_shards_store_lost_answers": sum(
            1 for op in others if _lost(op) and not BATCH_ID.match(str(op.value.get("id")))
        ),
        "batch_items_refused_for_another_shard": sum(
            1 for op in others if _lost(op) and BATCH_ID.match(str(op.value.get("id")))
        ),
        "refused_but_applied": refused_but_applied(writes, moved),
        "faulted_shard_store_lost_answers": sum(1 for op in faulted if _lost(op)),
        "faulted_shard_seconds_not_writable": checker.not_writable_seconds(faulted),
        "other_shards_seconds_not_writable": checker.not_writable_seconds(others),
        "shard_failovers": _failovers(monitor, nodes),
        "writes_acknowledged_on_lost_shard": sum(
            1
            for op in faulted
            if op.moved_money
            and op.completed_ms is not None
            and checker._within(op.invoked_ms, op.completed_ms, runs)
        ),
    }


def refused_but_applied(writes: list[Operation], moved: set[str]) -> int:
    """Writes refused (``fail``: "nothing was written") whose id moved money all the same, not
    counting a refusal of a RETRY whose earlier attempt had an unknown outcome: a 503 answers
    its own attempt, and decides nothing about the earlier one (the caller retries the id until
    an answer decides it). CI, 2026-12-04: a debit unknown when s2's primary went down was
    retried into the empty window (store_lost: this attempt wrote nothing), and its first
    attempt came back with the restored AOF."""
    unknown_since: dict[str, int] = {}
    for op in writes:
        if op.type == "info":
            tid = str(op.value.get("id"))
            unknown_since[tid] = min(unknown_since.get(tid, op.invoked_ms), op.invoked_ms)
    return sum(
        1
        for op in writes
        if op.type == "fail"
        and (tid := str(op.value.get("id"))) in moved
        and not unknown_since.get(tid, op.invoked_ms + 1) < op.invoked_ms
    )


def _moved(out: Path) -> set[str]:
    """Ids with a code-0 record in the final store (every shard) or a result-0 ledger row."""
    store = _read_json(out / "store.json")
    moved = {t for t, r in (store.get("tx") or {}).items() if r.split("|")[4:5] == ["0"]}
    ledger = checker._ledger(out, out / "setup.json")
    return moved | {t for t, row in ledger.transfers.items() if int(row["result"]) == 0}


def _lost(op: Operation) -> bool:
    return op.outcome.get("code") == "store_lost"


def _failovers(monitor: list[dict[str, Any]], nodes: list[str]) -> int:
    """The shard's first-start replicas (every node but the first) ever seen as master."""
    promoted: set[str] = set()
    for sample in monitor:
        if sample.get("kind") == "nodes":
            seen = sample.get("nodes") or {}
            promoted |= {n for n in nodes[1:] if (seen.get(n) or {}).get("role") == "master"}
    return len(promoted)
