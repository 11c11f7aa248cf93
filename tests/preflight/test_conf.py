"""redis.conf is read the way redis-server reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tally.errors import ConfigError
from tally.ops.preflight import parse_conf, split_args
from tally.ops.preflight.conf import parse_memory
from tally.ops.preflight.settings import DEFAULT_SAVE, from_conf


@pytest.mark.parametrize(
    ("line", "args"),
    [
        ("save 900 1", ["save", "900", "1"]),
        ('requirepass "a b"', ["requirepass", "a b"]),
        (r'requirepass "tab\there\x41"', ["requirepass", "tab\there" + "A"]),
        (r"requirepass 'it\'s'", ["requirepass", "it's"]),
        ('save ""', ["save", ""]),
        ('dir /a"b c"', ["dir", "/ab c"]),
        ("  bind   127.0.0.1   -::1  ", ["bind", "127.0.0.1", "-::1"]),
    ],
)
def test_arguments_are_split_like_redis_server_does(line: str, args: list[str]) -> None:
    assert split_args(line) == args


@pytest.mark.parametrize("line", ['requirepass "open', 'requirepass "a"b', "x 'a"])
def test_malformed_quotes_are_refused(line: str) -> None:
    with pytest.raises(ValueError):
        split_args(line)


def test_a_malformed_line_names_the_file_and_line() -> None:
    with pytest.raises(ConfigError, match=r"r.conf:2"):
        parse_conf('port 1\nrequirepass "open\n', Path("r.conf"))


def test_include_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ConfigError, match="include is not supported"):
        parse_conf("include /etc/redis/common.conf\n")


@pytest.mark.parametrize(
    ("text", "size"),
    [("16kb", 16384), ("64k", 64000), ("1mb", 1048576), ("1gb", 1024**3), ("100", 100)],
)
def test_memory_units_follow_redis(text: str, size: int) -> None:
    assert parse_memory(text) == size


def _settings(text: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    return from_conf(parse_conf(text, tmp_path / "r.conf"), tmp_path, (7, 0))


def test_save_lines_accumulate_and_save_empty_clears_them(tmp_path: Path) -> None:
    assert _settings("port 1\n", tmp_path).save_points == DEFAULT_SAVE
    both = _settings("save 900 1\nsave 300 10 60 10000\n", tmp_path)
    assert both.save_points == ((900, 1), (300, 10), (60, 10000))
    assert _settings('save 900 1\nsave ""\n', tmp_path).save_points == ()


def test_names_are_case_insensitive_old_aliases_count_and_the_last_value_wins(
    tmp_path: Path,
) -> None:
    settings = _settings(
        "# a comment\nSLAVEOF 10.0.0.1 6379\nrepl-backlog-size 1mb\nREPL-BACKLOG-SIZE 16kb\n"
        "client-output-buffer-limit normal 0 0 0 slave 1mb 512kb 10\n",
        tmp_path,
    )
    assert settings.replicaof == ("10.0.0.1", 6379)
    assert settings.backlog_bytes == 16384
    assert settings.replica_obl == (1024**2, 512 * 1024, 10)
