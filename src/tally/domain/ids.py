"""Validation of the ids that become parts of Redis keys, journal lines and SQL rows."""

from __future__ import annotations

import re

from tally.domain.limits import ID_LEN_MAX
from tally.errors import InvalidId

# ASCII only (no unicode look-alikes), no '|' or newline (journal separators), no '{' '}'
# (Redis hash tags), no '@' (reserved for system accounts).
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]*\Z")


def check_id(value: object, what: str = "id") -> str:
    if not isinstance(value, str):
        raise InvalidId(f"{what} must be a string, got {type(value).__name__}")
    if not 1 <= len(value) <= ID_LEN_MAX:
        raise InvalidId(f"{what} must be 1-{ID_LEN_MAX} characters, got {len(value)}")
    if not value.isascii() or not _ID_RE.match(value):
        raise InvalidId(f"{what} {value!r} has characters other than letters, digits, _ - . :")
    return value


def is_valid_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and 1 <= len(value) <= ID_LEN_MAX
        and value.isascii()
        and _ID_RE.match(value) is not None
    )
