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

# The ids tally derives for its own transfers: a recharge's credit (``rc-`` + 29 hex of its
# debit's id, domain/rules.py) and a hold capture's debit (``hc-`` + 29 hex of the hold id,
# domain/holds.py). A caller's transfer under one of them would take that id first: the
# recharge's credit or the capture would then meet a conflicting replay instead of applying.
# Exactly this form is reserved, so ids like ``rc-plain-1`` stay the caller's.
_RESERVED_RE = re.compile(r"(?:rc|hc)-[0-9a-f]{29}")
RESERVED_ID_LEN = 32


def is_reserved_transfer_id(value: str) -> bool:
    """A transfer id of the form tally derives for its own recharge credits and captures."""
    return len(value) == RESERVED_ID_LEN and _RESERVED_RE.fullmatch(value) is not None


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
