"""Bounded reads of the store's keys: account keys by SCAN, journal lines by XRANGE pages."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis

from tally.domain.limits import JOURNAL_ENTRIES_MAX
from tally.errors import StoreError
from tally.ledger.journal import parse_entry
from tally.ledger.models import DrainedLine, StreamId
from tally.store.errors import text, translated
from tally.store.keys import KeyLayout

SCAN_COUNT = 1000
XRANGE_COUNT = 1000


def scan_bound(client: redis.Redis) -> int:
    """SCAN always terminates, but a loop here still has a ceiling: generous for the keyspace."""
    with translated("dbsize"):
        size = int(client.dbsize())
    return 1000 + 4 * (size // SCAN_COUNT)


def scan_keys(client: redis.Redis, pattern: str) -> Iterator[list[str]]:
    """Batches of key names matching ``pattern`` (SCAN, never KEYS)."""
    cursor: int = 0
    for _ in range(scan_bound(client)):
        with translated("scan"):
            cursor, keys = client.scan(cursor=cursor, match=pattern, count=SCAN_COUNT)
        if keys:
            yield [text(k) or "" for k in keys]
        if int(cursor) == 0:
            return
    raise StoreError(f"SCAN {pattern} did not finish within its bound")


def account_key_pattern(layout: KeyLayout) -> str:
    # '{' and '}' are literal in Redis glob patterns; '*' stands for the shard number.
    return f"{layout.namespace}:{{{layout.namespace}.*}}:a:*"


def parse_account_key(layout: KeyLayout, key: str) -> tuple[int, str] | None:
    """``ns:{ns.S}:a:ID`` -> (S, ID); None for anything else."""
    head = f"{layout.namespace}:{{{layout.namespace}."
    if not key.startswith(head):
        return None
    shard_text, sep, account_id = key[len(head) :].partition("}:a:")
    if not sep or not shard_text.isdigit() or not account_id:
        return None
    return int(shard_text), account_id


def journal_lines_upto(
    client: redis.Redis, layout: KeyLayout, shard: int, upto: StreamId
) -> Iterator[DrainedLine]:
    """Every parseable line of the shard's journal with stream id <= ``upto``."""
    for stream_id, decoded in journal_entries_upto(client, layout, shard, upto):
        lines, _rejected = parse_entry(shard, stream_id, decoded)
        yield from lines


def journal_entries_upto(
    client: redis.Redis, layout: KeyLayout, shard: int, upto: StreamId
) -> Iterator[tuple[StreamId, dict[str, str]]]:
    """Every entry of the shard's journal with stream id <= ``upto``, its fields decoded."""
    key, start = layout.journal(shard), "-"
    for _ in range(JOURNAL_ENTRIES_MAX // XRANGE_COUNT + 2):
        with translated(f"shard {shard} journal range"):
            entries: list[Any] = (
                client.xrange(key, min=start, max=str(upto), count=XRANGE_COUNT) or []
            )
        for raw_id, fields in entries:
            decoded = {text(k) or "": text(v) or "" for k, v in (fields or {}).items()}
            yield StreamId.parse(raw_id), decoded
        if len(entries) < XRANGE_COUNT:
            return
        start = f"({text(entries[-1][0])}"
    raise StoreError(f"shard {shard} journal is longer than its bound {JOURNAL_ENTRIES_MAX}")
