"""Reading redis.conf the way redis-server does (``sdssplitargs`` quoting, case-insensitive names,
last value wins, ``save`` lines accumulate) without starting anything."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tally.errors import ConfigError

CONF_BYTES_MAX = 4 * 1024 * 1024
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "a": "\a"}
_HEX = re.compile(r"\\x([0-9a-fA-F]{2})")
_MEMORY = re.compile(r"^(\d+)(b|k|kb|m|mb|g|gb)?$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3}
_UNITS["gb"] = 1024**3
#: Old names redis-server still accepts, mapped to the current ones.
ALIASES = {
    "slaveof": "replicaof",
    "min-slaves-to-write": "min-replicas-to-write",
    "min-slaves-max-lag": "min-replicas-max-lag",
}


def _quoted(line: str, i: int, quote: str) -> tuple[str, int]:
    """The argument that starts after the opening quote at ``i - 1``; returns (text, next i)."""
    out: list[str] = []
    n = len(line)
    while i < n:  # bounded by the line
        c = line[i]
        if quote == '"' and c == "\\" and _HEX.match(line, i):
            out.append(chr(int(line[i + 2 : i + 4], 16)))
            i += 4
        elif c == "\\" and i + 1 < n and (quote == '"' or line[i + 1] == "'"):
            out.append(_ESCAPES.get(line[i + 1], line[i + 1]) if quote == '"' else "'")
            i += 2
        elif c == quote:
            if i + 1 < n and not line[i + 1].isspace():
                raise ValueError("closing quote must be followed by a space")
            return "".join(out), i + 1
        else:
            out.append(c)
            i += 1
    raise ValueError("unbalanced quotes")


def split_args(line: str) -> list[str]:
    """Split one config line like redis-server's ``sdssplitargs``; ValueError if malformed.
    A quote may open mid-token (``a"b c"`` is one argument ``ab c``), as in Redis."""
    args: list[str] = []
    i, n = 0, len(line)
    while True:  # one argument per turn, bounded by the line
        while i < n and line[i].isspace():
            i += 1
        if i >= n:
            return args
        parts: list[str] = []
        while i < n and not line[i].isspace():  # bounded by the line
            if line[i] in "\"'":
                text, i = _quoted(line, i + 1, line[i])
                parts.append(text)
                break  # a closing quote ends the argument
            parts.append(line[i])
            i += 1
        args.append("".join(parts))


def parse_memory(text: str) -> int:
    """``1gb`` -> 1073741824, ``1g`` -> 10**9, ``64k`` -> 64000 (Redis's ``memtoll``)."""
    match = _MEMORY.match(text.strip())
    if match is None:
        raise ValueError(f"not a memory size: {text!r}")
    return int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]


@dataclass(frozen=True)
class Directive:
    name: str
    args: tuple[str, ...]
    line: int


@dataclass(frozen=True)
class RedisConf:
    path: Path | None
    directives: tuple[Directive, ...]

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.directives if d.name == name]

    def last(self, name: str) -> Directive | None:
        found = self.all(name)
        return found[-1] if found else None

    def value(self, name: str, default: str) -> str:
        directive = self.last(name)
        return " ".join(directive.args) if directive is not None else default

    def memory(self, name: str, default: int) -> int:
        directive = self.last(name)
        if directive is None:
            return default
        try:
            return parse_memory(directive.args[0])
        except (IndexError, ValueError) as exc:
            raise ConfigError(f"{self.path}:{directive.line}: {name}: {exc}") from exc

    def integer(self, name: str, default: int) -> int:
        directive = self.last(name)
        if directive is None:
            return default
        try:
            return int(directive.args[0])
        except (IndexError, ValueError) as exc:
            raise ConfigError(f"{self.path}:{directive.line}: {name} needs an integer") from exc

    def flag(self, name: str, default: bool) -> bool:
        return self.value(name, "yes" if default else "no").lower() == "yes"


def parse_conf(text: str, path: Path | None = None) -> RedisConf:
    directives: list[Directive] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip(" \t\r\n")
        if not line or line.startswith("#"):
            continue
        try:
            argv = split_args(line)
        except ValueError as exc:
            raise ConfigError(f"{path}:{number}: {exc}: {raw!r}") from exc
        name = argv[0].lower()
        if name == "include":
            raise ConfigError(
                f"{path}:{number}: include is not supported by preflight",
                hint="inline the included file, or check the running node with --live",
            )
        directives.append(Directive(ALIASES.get(name, name), tuple(argv[1:]), number))
    return RedisConf(path, tuple(directives))


def read_conf(path: Path) -> RedisConf:
    try:
        if path.stat().st_size > CONF_BYTES_MAX:
            raise ConfigError(f"{path} is over {CONF_BYTES_MAX} bytes; not a redis.conf")
        return parse_conf(path.read_text(errors="replace"), path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
