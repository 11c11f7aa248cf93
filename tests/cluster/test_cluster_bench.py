"""``tally bench debits --cluster 1,3`` end to end, tiny, on both binaries: one row per M with
its primaries, debits/s and CPU per process, the clusters stopped after (no timed assertions:
speed is what the bench reports, not what a test checks)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tally.cli.bench_cmd import bench
from tally.ops.binary import RedisBinary
from tally.ops.node import orphan_pids
from tests.binaries import BINARIES, binary_id

TALLY_CLI = "from tally.cli.main import main; main()"
DEBITS = 300


@pytest.mark.parametrize("binary", BINARIES, ids=binary_id)
def test_bench_debits_cluster_reports_a_row_per_primary_count(
    binary: RedisBinary, tmp_path: Path
) -> None:
    env = {**os.environ, "TALLY_REDIS_SERVER": str(binary.path), "TMPDIR": str(tmp_path)}
    argv = ["bench", "debits", "--cluster", "1,3", "--accounts", "40"]
    argv += ["--batch-debits", str(DEBITS), "--json"]
    done = subprocess.run(
        [sys.executable, "-c", TALLY_CLI, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(done.stdout)
    assert data["redis_version"] == binary.version_text
    rows = data["results"]
    assert sorted(rows) == [
        "cluster_m1",
        "cluster_m1_account_shard",
        "cluster_m3",
        "cluster_m3_account_shard",
    ]
    for m, ids in itertools.product((1, 3), ("random", "account_shard")):
        name = f"cluster_m{m}" + ("" if ids == "random" else "_account_shard")
        row = rows[name]
        assert (row["primaries"], row["ids"], row["debits"], row["ok"]) == (m, ids, DEBITS, DEBITS)
        assert row["redis_version"] == binary.version_text
        assert isinstance(row["debits_per_s"], int) and row["debits_per_s"] > 0
        cores = row["cpu_cores"]
        assert len(cores["redis_primaries"]) == m
        assert all(c >= 0 for c in [cores["load_process"], *cores["redis_primaries"]])
        assert row["cpu_us_per_debit"]["load_process"] >= 0  # 10 ms ticks: 0 on a tiny run
        assert row["bound"]
        base = rows[name.replace(f"m{m}", "m1")]["debits_per_s"]
        assert row["x_m1"] == round(row["debits_per_s"] / base, 2)
    assert orphan_pids(str(tmp_path)) == [], "the bench left a redis-server running"
    assert not list(tmp_path.glob("tally-bench-cluster-*")), "the bench left its directory"


@pytest.mark.parametrize("bad", ["0,3", "1,1", "three", ""])
def test_a_bad_cluster_list_is_refused_with_what_to_pass(bad: str) -> None:
    result = CliRunner().invoke(bench, ["debits", "--cluster", bad, "--json"])
    assert result.exit_code != 0
    assert "--cluster" in result.output and "1,3" in result.output
