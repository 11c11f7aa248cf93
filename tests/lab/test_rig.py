"""The lab rig and its replication faults on real processes (small: no ballast to speak of).

A partition of the replicas and its heal must end in partial resyncs, never a full sync the
scenario did not ask for, and leave replication allowed again; a hardened rig starts with its
replicas on the primary's real address (as Sentinel would rewire them) and caught up."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tally.lab.rig import Rig, RigSpec
from tally.lab.timeline import Operator
from tally.ops.node import orphan_pids

POLLS_MAX = 300


def _sync_counters(rig: Rig) -> tuple[int, int]:
    with contextlib.closing(rig.client("r1")) as c:
        info = c.info("stats")
    return int(info["sync_full"]), int(info["sync_partial_ok"])


def _links(rig: Rig) -> set[str]:
    out = set()
    for name in ("r2", "r3"):
        with contextlib.closing(rig.client(name)) as c:
            out.add(str(c.info("replication").get("master_link_status")))
    return out


@pytest.mark.parametrize("profile", ["2013", "hardened"])
def test_a_partition_of_the_replicas_cuts_them_on_the_wire_and_heals_by_partial_resync(
    tmp_path: Path, profile: str
) -> None:
    spec = RigSpec(profile=profile, dataset_bytes=200_000)
    with Rig(tmp_path / "run", spec) as rig:
        operator = Operator(rig, billing=None, time_scale=1.0, stop=threading.Event())  # type: ignore[arg-type]
        full_before, partial_before = _sync_counters(rig)
        assert "refuse" in operator.do_partition_replicas(mode="refuse")
        deadline = time.monotonic() + 10
        while _links(rig) != {"down"}:
            assert time.monotonic() < deadline, "replica links still up through a refused link"
            time.sleep(0.1)
        operator.do_heal()
        assert rig.wait_in_sync(30.0)
        full_after, partial_after = _sync_counters(rig)
    assert orphan_pids(str(tmp_path)) == []
    assert full_after == full_before  # a short partition within the backlog: partial resync
    assert partial_after - partial_before >= 2


def test_a_hardened_rig_starts_with_replicas_on_the_primary_front_and_caught_up(
    tmp_path: Path,
) -> None:
    with Rig(tmp_path / "run", RigSpec(profile="hardened", dataset_bytes=500_000)) as rig:
        front = rig.cluster.front("r1")
        with contextlib.closing(rig.client("r1")) as c:
            primary: dict[str, Any] = c.info("replication")
        replicas = {}
        for name in ("r2", "r3"):
            with contextlib.closing(rig.client(name)) as c:
                replicas[name] = c.info("replication")
    assert orphan_pids(str(tmp_path)) == []
    for info in replicas.values():
        assert (info["master_host"], int(info["master_port"])) == front
        assert int(info["slave_repl_offset"]) > 0
    assert int(primary["connected_slaves"]) == 2
