"""The ledger of record of a lab run: a SQLite file in the run directory, or, given a PostgreSQL
URL (``tally lab run --ledger-url postgresql://...``), a fresh database created for the run on
that server (``lab_<run id>``: runs never share one) and dropped once the run is checked."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tally.errors import ConfigError, LedgerError

POSTGRES_SCHEMES = ("postgres://", "postgresql://", "postgresql+psycopg://")


def is_postgres(url: str | None) -> bool:
    return bool(url) and str(url).startswith(POSTGRES_SCHEMES)


def _psycopg(url: str) -> str:
    return "postgresql+psycopg://" + url.split("://", 1)[1]


@dataclass
class LabLedger:
    """``url`` is what the run's processes use; ``database`` the PostgreSQL database made."""

    kind: str
    url: str
    database: str | None = None
    server: str | None = None  # the PostgreSQL URL given (the database made lives there)

    @classmethod
    def sqlite(cls, out: Path) -> LabLedger:
        return cls("sqlite", f"sqlite:///{Path(out) / 'ledger.sqlite3'}")

    @classmethod
    def postgres(cls, server: str) -> LabLedger:
        import sqlalchemy as sa

        if not is_postgres(server):
            raise ConfigError(f"--ledger-url must be a postgresql:// URL, got {server!r}")
        name = f"lab_{secrets.token_hex(6)}"
        admin = sa.create_engine(_psycopg(server), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerError(
                f"cannot create the run's database on {_safe(server)}: {exc}"
            ) from exc
        finally:
            admin.dispose()
        url = sa.engine.make_url(_psycopg(server)).set(database=name)
        plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return cls("postgresql", plain, name, server)

    @property
    def address(self) -> tuple[str, int]:
        """PostgreSQL's host and port (what a proxy link forwards to)."""
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 5432

    def through(self, host: str, port: int) -> str:
        """This ledger's URL with the server at ``host:port`` (a proxy link's listener)."""
        import sqlalchemy as sa

        url = sa.engine.make_url(self.url).set(host=host, port=port)
        return url.render_as_string(hide_password=False)

    def drop(self) -> None:
        if self.database is None or self.server is None:
            return
        import sqlalchemy as sa

        admin = sa.create_engine(_psycopg(self.server), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerError(f"cannot drop the run's database {self.database}: {exc}") from exc
        finally:
            admin.dispose()

    def describe(self, through_proxy: bool) -> dict[str, Any]:
        if self.kind == "sqlite":
            return {"kind": "sqlite", "path": "ledger.sqlite3"}
        return {"kind": "postgresql", "server": _safe(self.server or ""),
                "database": self.database, "through_proxy": through_proxy,
                "dropped_after_check": True}  # fmt: skip


def _safe(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
