"""Validation of the ids that become parts of Redis keys, journal lines and SQL rows."""

from __future__ import annotations

import re

from tally.domain.limits import ID_LEN_MAX
from tally.errors import InvalidId

# ASCII only (no unicode look-alikes: the classes are spelled out, so nothing else matches), no
# '|' or newline (journal separators), no '{' '}' (Redis hash tags), no '@' (system accounts),
# 1..ID_LEN_MAX long. One fullmatch checks all of it: the batch path calls this per transfer.
_ID_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.:\-]{{0,{ID_LEN_MAX - 1}}}")
id_fullmatch = _ID_RE.fullmatch


def check_id(value: object, what: str = "id") -> str:
    if not isinstance(value, str):
        raise InvalidId(f"{what} must be a string, got {type(value).__name__}")
    if not 1 <= len(value) <= ID_LEN_MAX:
        raise InvalidId(f"{what} must be 1-{ID_LEN_MAX} characters, got {len(value)}")
    if not id_fullmatch(value):
        raise InvalidId(f"{what} {value!r} has characters other than letters, digits, _ - . :")
    return value


def is_valid_id(value: object) -> bool:
    return type(value) is str and id_fullmatch(value) is not None
