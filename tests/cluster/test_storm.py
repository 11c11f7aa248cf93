"""F1: all remote replicas lose the primary at once. 2013 full-syncs them all; hardened resyncs
partially. Counts only: no timed performance assertions. The fast test runs both profiles
through `tally bench storm`, the command the README's figures come from."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tally.ops.node import orphan_pids
from tally.ops.storm import run_storm
from tally.ops.topology import Topology


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["2013", "hardened"])
def test_storm_with_a_larger_dataset_and_longer_partition_reports_its_figures(
    topology_factory: Callable[..., Topology], profile: str
) -> None:
    result = run_storm(
        topology_factory(),
        profile=profile,
        partition_s=8.0,
        dataset_bytes=100_000_000,
        write_rate_per_s=2000,
    )
    print(result.to_dict())
    if profile == "2013":
        assert result.full_syncs == 2
    else:
        assert (result.full_syncs, result.partial_syncs) == (0, 2)


TALLY = [sys.executable, "-m", "tally.cli"]
FAST = ["--partition-s", "2", "--dataset-mb", "2"]
EXAMPLE = Path(__file__).parents[2] / "examples" / "topology-3dc.toml"  # the README's


def test_tally_bench_storm_reports_both_profiles_side_by_side() -> None:
    out = subprocess.run(
        [*TALLY, "bench", "storm", "--topology", str(EXAMPLE), *FAST, "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr  # a reset peer mid-drain is not an unretrieved error
    rows = json.loads(out.stdout)
    assert list(rows) == ["2013", "hardened"]
    assert (rows["2013"]["full_syncs"], rows["2013"]["partial_syncs"]) == (2, 0)
    assert (rows["hardened"]["full_syncs"], rows["hardened"]["partial_syncs"]) == (0, 2)
    for row in rows.values():
        assert row["primary_latency_ms_p99_baseline"] > 0
        assert row["primary_latency_ms_p99_during_storm"] > 0
    assert orphan_pids(tempfile.gettempdir() + "/tally-storm-") == []


def test_tally_bench_storm_with_a_bad_topology_says_what_is_wrong(tmp_path: Path) -> None:
    topology = tmp_path / "bad.toml"
    topology.write_text('name = "x"\nprofile = "2014"\nbase_dir = "d"\n')
    out = subprocess.run(
        [*TALLY, "bench", "storm", "--topology", str(topology)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "profile" in out.stderr and "Traceback" not in out.stderr
