"""Load generators for ``tally bench http``: wrk (Debian's package) when it is on PATH, else a
multi-process generator of raw keep-alive HTTP/1.1 (no client library in the way). Both post a
unique debit per request and report the same figures; neither ever raises for a dropped
connection or an error status: those are counted.

The generator must be faster than the server it measures: the bare endpoint measured with the
same generator in the same run is a lower bound of what the generator can do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

WRK_THREADS_MAX = 2
PROCESSES_MAX = 2
READ_TIMEOUT_S = 10.0
HEAD_BYTES_MAX = 65536


@dataclass
class Load:
    generator: str
    connections: int
    requests: int
    seconds: float
    per_s: int
    p50_ms: float
    p99_ms: float
    non_2xx: int  # error statuses (4xx/5xx)
    dropped: int  # connect/read/write errors and timeouts

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_WRK_LUA = """
local counter = 0
local made = 0
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %(key)s"}
function setup(thread)
  made = made + 1
  thread:set("prefix", "%(run)s-" .. made)
end
function request()
  counter = counter + 1
  local body = '{"transfer_id":"' .. prefix .. '-' .. counter .. '","account_id":"acct-'
    .. (counter %% %(accounts)d) .. '","amount_minor":1}'
  return wrk.format("POST", "%(path)s", headers, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%%d,"us":%%d,"connect":%%d,"read":%%d,'
    .. '"write":%%d,"status":%%d,"timeout":%%d,"p50_us":%%d,"p99_us":%%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_wrk(url: str, key: str, path: str, connections: int, seconds: float, accounts: int) -> Load:
    wrk = wrk_path()
    if wrk is None:
        raise RuntimeError("wrk is not on PATH")
    threads = max(1, min(WRK_THREADS_MAX, connections))
    script = _WRK_LUA % {
        "key": key,
        "run": uuid.uuid4().hex[:8],
        "accounts": accounts,
        "path": path,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
        argv += ["--timeout", f"{int(READ_TIMEOUT_S)}s", "-s", f.name, url]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    finally:
        Path(f.name).unlink(missing_ok=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no figures: {out.stdout[-500:]} {out.stderr[-500:]}")
    d = json.loads(line.removeprefix("WRKJSON "))
    secs = d["us"] / 1e6
    return Load(
        generator=f"wrk -t{threads}",
        connections=connections,
        requests=d["requests"],
        seconds=round(secs, 3),
        per_s=round(d["requests"] / secs) if secs else 0,
        p50_ms=round(d["p50_us"] / 1000, 3),
        p99_ms=round(d["p99_us"] / 1000, 3),
        non_2xx=d["status"],
        dropped=d["connect"] + d["read"] + d["write"] + d["timeout"],
    )


# -- the fallback: processes of raw keep-alive connections ---------------------------------------
async def _connection(
    host: str, port: int, head: bytes, body_of: Any, stop_at: float, out: dict[str, Any]
) -> None:
    reader, writer = None, None
    n = 0
    while time.monotonic() < stop_at:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            body = body_of(n)
            n += 1
            t0 = time.perf_counter()
            writer.write(head % len(body) + body)
            status_line = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            length = 0
            for line in status_line.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT_S)
            out["lat"].append(time.perf_counter() - t0)
            if not status_line.startswith(b"HTTP/1.1 2"):
                out["non_2xx"] += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            out["dropped"] += 1
            if writer is not None:
                writer.close()
            reader, writer = None, None
    if writer is not None:
        writer.close()


def _process(args: tuple[str, int, str, str, int, float, int, str, Any]) -> dict[str, Any]:
    host, port, path, key, conns, seconds, accounts, prefix, _ = args
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    ).encode()
    out: dict[str, Any] = {"lat": [], "non_2xx": 0, "dropped": 0}

    def body_factory(c: int) -> Any:
        def body_of(n: int) -> bytes:
            return (
                f'{{"transfer_id":"{prefix}-{c}-{n}","account_id":"acct-{n % accounts}",'
                '"amount_minor":1}'
            ).encode()

        return body_of

    async def main() -> None:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(
            *(_connection(host, port, head, body_factory(c), stop_at, out) for c in range(conns))
        )

    asyncio.run(main())
    return out


def run_native(
    url: str, key: str, path: str, connections: int, seconds: float, accounts: int
) -> Load:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    procs = max(1, min(PROCESSES_MAX, connections))
    share = [connections // procs + (1 if i < connections % procs else 0) for i in range(procs)]
    run = uuid.uuid4().hex[:8]
    jobs = [
        (host, int(port), path, key, n, seconds, accounts, f"{run}-{i}", None)
        for i, n in enumerate(share)
    ]
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        outs = pool.map(_process, jobs)
    elapsed = time.perf_counter() - started
    lat = sorted(x for o in outs for x in o["lat"])
    secs = min(elapsed, seconds) if lat else elapsed

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 3) if lat else 0.0

    return Load(
        generator=f"{procs} processes (asyncio, raw HTTP/1.1)",
        connections=connections,
        requests=len(lat),
        seconds=round(secs, 3),
        per_s=round(len(lat) / secs) if secs else 0,
        p50_ms=pct(0.5),
        p99_ms=pct(0.99),
        non_2xx=sum(o["non_2xx"] for o in outs),
        dropped=sum(o["dropped"] for o in outs),
    )


def generate(
    url: str,
    key: str,
    path: str,
    connections: int,
    seconds: float,
    accounts: int,
    *,
    prefer_wrk: bool = True,
) -> Load:
    if prefer_wrk and wrk_path() is not None:
        with contextlib.suppress(RuntimeError):
            return run_wrk(url, key, path, connections, seconds, accounts)
    return run_native(url, key, path, connections, seconds, accounts)
