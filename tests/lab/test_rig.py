"""The lab rig and its replication faults on real processes (small: no ballast to speak of).

A partition of the replicas and its heal must end in partial resyncs, never a full sync the
scenario did not ask for, and leave replication allowed again; a hardened rig starts with its
replicas on the primary's real address (as Sentinel would rewire them) and caught up."""

from __future__ import annotations

import contextlib
import threading
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


def _acl_default(rig: Rig) -> str:
    with contextlib.closing(rig.client("r1")) as c:
        return " ".join(str(x) for x in c.acl_list() if "default" in str(x))


@pytest.mark.parametrize("profile", ["2013", "hardened"])
def test_a_partition_of_the_replicas_heals_by_partial_resync_and_allows_replication_again(
    tmp_path: Path, profile: str
) -> None:
    spec = RigSpec(profile=profile, dataset_bytes=200_000)
    with Rig(tmp_path / "run", spec) as rig:
        operator = Operator(rig, billing=None, time_scale=1.0, stop=threading.Event())  # type: ignore[arg-type]
        full_before, partial_before = _sync_counters(rig)
        blocked = operator.do_partition_replicas(mode="refuse")
        assert "refused" in blocked
        assert "-sync" in _acl_default(rig) and "-psync" in _acl_default(rig)
        healed = operator.do_heal()
        assert "2/2 replicas were back" in healed
        assert rig.wait_in_sync(30.0)
        full_after, partial_after = _sync_counters(rig)
        acl = _acl_default(rig)
    assert orphan_pids(str(tmp_path)) == []
    assert full_after == full_before  # no full sync: the heal let PSYNC in before SYNC
    assert partial_after - partial_before >= 2
    assert "-sync" not in acl and "-psync" not in acl


def test_a_hardened_rig_starts_with_replicas_on_the_primary_address_and_caught_up(
    tmp_path: Path,
) -> None:
    with Rig(tmp_path / "run", RigSpec(profile="hardened", dataset_bytes=500_000)) as rig:
        host, port = rig.nodes["r1"].address
        with contextlib.closing(rig.client("r1")) as c:
            primary: dict[str, Any] = c.info("replication")
        replicas = {}
        for name in ("r2", "r3"):
            with contextlib.closing(rig.client(name)) as c:
                replicas[name] = c.info("replication")
    assert orphan_pids(str(tmp_path)) == []
    for info in replicas.values():
        assert (info["master_host"], int(info["master_port"])) == (host, port)
        assert int(info["slave_repl_offset"]) > 0
    assert int(primary["connected_slaves"]) == 2
