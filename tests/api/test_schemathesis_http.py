"""Fuzz the whole API from its OpenAPI spec (schemathesis: coverage, fuzzing and stateful phases)
against a real ``tally serve``, with an admin key: no request may get a 5xx."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve.harness import Served

EXAMPLES_PER_OPERATION = 25
RUN_TIMEOUT_S = 240


def test_no_generated_request_gets_a_server_error(shared_served: Served, tmp_path: Path) -> None:
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.skip("schemathesis is not installed (uv sync --dev)")
    argv = [
        binary, "run", f"{shared_served.url}/openapi.json",
        "--header", f"Authorization: Bearer {shared_served.admin_key}",
        "--checks", "not_a_server_error",
        "--max-examples", str(EXAMPLES_PER_OPERATION),
        "--seed", "1",
        "--request-timeout", "30",
        "--report-dir", str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    assert "generated" in run.stdout
