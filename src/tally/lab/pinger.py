"""The primary-latency sampler, in its own process.

Measured inside the lab process, a PING's round trip includes waiting for the GIL behind the
workload, billing and monitor threads: a 2-6 ms floor of noise that hides what the primary does.
This process does nothing but PING, so its samples are the primary's (plus the OS scheduler's).

    python -m tally.lab.pinger --out ping.jsonl --node r1=127.0.0.1:7001 --node r2=... \
        --target r1 [--period-s 0.02] [--timeout-s 1.0] [--seconds-max 3600]

The password, if any, comes from ``TALLY_LAB_PING_PASSWORD`` (never the command line). The parent
steers it through stdin, one line per command: ``target NAME`` (PING that node from now on).
It stops when stdin reaches end of file (the parent closed it, or died), after
``--seconds-max`` or ``SAMPLES_MAX`` samples, whichever comes first. It prints ``ready`` on
stdout once it runs. It asks for a higher scheduling priority (``NICE``, best effort, this
process only) and records the niceness it got in a first ``{"kind": "pinger"}`` line. Each
sample is one JSON line ``{"t_ms", "kind": "ping", "node", "ms"}``
(``ms`` null with ``error`` when the node refused; a timeout is recorded with its elapsed time
and ``timeout: true``), flushed at least every ``FLUSH_S``.

:class:`PingerProcess` is the parent's handle: ``start()``, ``target(name)``, ``stop()`` (always
bounded: close stdin, wait, then SIGKILL).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

PASSWORD_ENV = "TALLY_LAB_PING_PASSWORD"
PERIOD_S = 0.02
TIMEOUT_S = 1.0
SECONDS_MAX = 3600.0
SAMPLES_MAX = 1_000_000
FLUSH_S = 0.5
DOWN_PAUSE_S = 0.2  # after a refused connection: do not spin on reconnects
READY_WAIT_S = 10.0
STOP_WAIT_S = 5.0
NICE = -10  # the sampler's niceness when allowed (see _raise_priority)


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Commands:
    """Non-blocking line reader on stdin; ``eof`` once the parent is gone."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.fd = stream.fileno()
        self.buffer = b""
        self.eof = False

    def poll(self, timeout_s: float) -> list[str]:
        if self.eof:
            return []
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout_s))
        if not ready:
            return []
        chunk = os.read(self.fd, 4096)
        if not chunk:
            self.eof = True
            return []
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode(errors="replace").strip() for line in lines if line.strip()]


def _raise_priority() -> int:
    """Best effort: a higher scheduling priority for this process only (never for Redis or the
    lab), so a PING waits less for a CPU on a busy machine and measures the primary. Without
    the privilege the process keeps its niceness. Returns the niceness in effect."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, NICE)
    return os.getpriority(os.PRIO_PROCESS, 0)


def run(out: Path, nodes: dict[str, tuple[str, int]], target: str, *, period_s: float,
        timeout_s: float, seconds_max: float, password: str | None) -> int:  # fmt: skip
    import redis  # here: the parent never needs it loaded for this module
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    clients: dict[str, Any] = {}

    def client(name: str) -> Any:
        if name not in clients:
            host, port = nodes[name]
            clients[name] = redis.Redis(host=host, port=port, password=password,
                                        socket_timeout=timeout_s,
                                        socket_connect_timeout=timeout_s,
                                        retry=Retry(NoBackoff(), 0))  # fmt: skip
        return clients[name]

    def drop(name: str) -> None:
        c = clients.pop(name, None)
        if c is not None:
            with contextlib.suppress(Exception):
                c.close()

    nice = _raise_priority()
    commands = _Commands(sys.stdin.buffer)
    samples = 0
    deadline = time.monotonic() + seconds_max
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    with open(out, "a", encoding="utf-8") as dst:
        header = {"t_ms": _now_ms(), "kind": "pinger", "pid": os.getpid(), "nice": nice,
                  "period_s": period_s, "timeout_s": timeout_s}  # fmt: skip
        dst.write(json.dumps(header, separators=(",", ":")) + "\n")
        last_flush = time.monotonic()
        wait_s = 0.0
        while samples < SAMPLES_MAX and time.monotonic() < deadline:
            for line in commands.poll(wait_s):
                verb, _, arg = line.partition(" ")
                if verb == "target" and arg in nodes:
                    target = arg
            if commands.eof:
                break
            entry: dict[str, Any] = {"t_ms": _now_ms(), "kind": "ping", "node": target}
            start = time.monotonic()
            wait_s = period_s
            try:
                client(target).ping()
                entry["ms"] = round((time.monotonic() - start) * 1000, 3)
            except (redis.RedisError, OSError) as exc:
                drop(target)
                entry["error"] = type(exc).__name__
                entry["timeout"] = isinstance(exc, redis.TimeoutError)
                elapsed = round((time.monotonic() - start) * 1000, 3)
                entry["ms"] = elapsed if entry["timeout"] else None
                if not entry["timeout"]:
                    wait_s = DOWN_PAUSE_S
            dst.write(json.dumps(entry, separators=(",", ":")) + "\n")
            samples += 1
            if time.monotonic() - last_flush >= FLUSH_S:
                dst.flush()
                last_flush = time.monotonic()
    for name in list(clients):
        drop(name)
    return 0


class PingerProcess:
    """The parent's handle on a sampler process. Always stopped by :meth:`stop` (bounded)."""

    def __init__(self, out: Path, nodes: dict[str, tuple[str, int]], target: str, *,
                 password: str | None = None, period_s: float = PERIOD_S,
                 seconds_max: float = SECONDS_MAX) -> None:  # fmt: skip
        self.out = Path(out)
        self.nodes = dict(nodes)
        self.current = target
        self.password = password
        self.period_s = period_s
        self.seconds_max = seconds_max
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PingerProcess:
        args = [sys.executable, "-m", "tally.lab.pinger", "--out", str(self.out),
                "--target", self.current, "--period-s", str(self.period_s),
                "--seconds-max", str(self.seconds_max)]  # fmt: skip
        for name, (host, port) in self.nodes.items():
            args += ["--node", f"{name}={host}:{port}"]
        env = dict(os.environ)
        env.pop(PASSWORD_ENV, None)
        if self.password:
            env[PASSWORD_ENV] = self.password
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env)  # fmt: skip
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], READY_WAIT_S)
        if ready:
            self.proc.stdout.readline()
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def target(self, name: str) -> None:
        proc = self.proc  # stop() may run on another thread
        if name == self.current or proc is None or proc.stdin is None or proc.poll() is not None:
            return
        self.current = name
        with contextlib.suppress(OSError, ValueError):  # ValueError: closed by stop() meanwhile
            proc.stdin.write(f"target {name}\n".encode())
            proc.stdin.flush()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_WAIT_S)
        if proc.stdout is not None:
            proc.stdout.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tally.lab.pinger")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--node", action="append", default=[], help="NAME=HOST:PORT")
    parser.add_argument("--target", required=True)
    parser.add_argument("--period-s", type=float, default=PERIOD_S)
    parser.add_argument("--timeout-s", type=float, default=TIMEOUT_S)
    parser.add_argument("--seconds-max", type=float, default=SECONDS_MAX)
    ns = parser.parse_args(argv)
    nodes: dict[str, tuple[str, int]] = {}
    for spec in ns.node:
        name, _, address = spec.partition("=")
        host, _, port = address.rpartition(":")
        nodes[name] = (host, int(port))
    if ns.target not in nodes:
        parser.error(f"--target {ns.target!r} is not one of the --node names")
    return run(ns.out, nodes, ns.target, period_s=ns.period_s, timeout_s=ns.timeout_s,
               seconds_max=min(ns.seconds_max, SECONDS_MAX),
               password=os.environ.get(PASSWORD_ENV) or None)  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
