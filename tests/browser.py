"""Headless Chromium (Debian's package) for tests that check a page as a person would see it:
rendered, no script errors, and nothing fetched from the network. Its own proxy setting points
at a closed loopback port, so no request can leave the machine; the net log shows what the page
tried to fetch. Under CI a missing chromium is an error (.ci/run installs it), elsewhere a skip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

RENDER_TIMEOUT_S = 90
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--proxy-server=http://127.0.0.1:9", "--enable-logging=stderr", "--v=0",
)  # fmt: skip
BROWSER_OWN = "not an origin"  # the initiator Chromium gives its own background requests


@dataclass(frozen=True)
class Rendered:
    dom: str
    console_errors: list[str]
    fetched: list[str]  # http(s) URLs the page itself asked for


def chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI must check pages in a real browser: apt-get install chromium")
    pytest.skip("no chromium (apt-get install chromium)")


def _page_requests(net_log: Path) -> list[str]:
    events = json.loads(net_log.read_text()).get("events", [])
    own, seen = set(), set()
    for event in events:
        params = event.get("params") or {}
        url = params.get("url", "")
        if url.startswith(("http://", "https://")):
            seen.add(url)
            if params.get("initiator") == BROWSER_OWN:
                own.add(url)
    return sorted(seen - own)


def render(page: Path, screenshot: Path | None = None) -> Rendered:
    binary = chromium()
    with tempfile.TemporaryDirectory(prefix="tally-chromium-") as tmp:
        net_log = Path(tmp) / "net.json"
        argv = [binary, *FLAGS, f"--user-data-dir={tmp}/profile", f"--log-net-log={net_log}"]
        extra = [f"--screenshot={screenshot}", "--window-size=1400,1000"] if screenshot else []
        done = subprocess.run(
            [*argv, *extra, "--dump-dom", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=RENDER_TIMEOUT_S, check=True,
        )  # fmt: skip
        errors = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
        return Rendered(done.stdout, errors, _page_requests(net_log))
