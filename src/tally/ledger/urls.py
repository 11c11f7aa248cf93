"""Ledger URLs: SQLite file by default, PostgreSQL (psycopg 3) by URL."""

from __future__ import annotations

from tally.errors import ConfigError


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3; sqlite URLs pass through."""
    if url.startswith(("postgres://", "postgresql://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith(("postgresql+psycopg://", "sqlite://")):
        return url
    raise ConfigError(
        f"unsupported ledger URL {url.split('://', 1)[0]!r}://...",
        hint="use sqlite:///path/to/ledger.sqlite3 or postgresql://user@host:5432/db",
    )
