"""API keys, stored hashed in the ledger database (migration 0003).

A key reads ``tk_<key_id>_<secret>``: ``key_id`` (public, 12 hex) finds the row, the SHA-256 of
the whole key is compared in constant time. The secret has 256 bits of entropy, so a plain
SHA-256 is enough (no password-hashing function is needed for random keys). The key itself is
shown once, at creation, and never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa

from tally.errors import UsageError
from tally.ledger.schema import metadata
from tally.ledger.sql_ledger import SqlLedger
from tally.ledger.sqlutil import now_ms

PREFIX = "tk_"
KEY_ID_HEX = 12
LABEL_LEN_MAX = 80
KEY_LEN_MAX = 128  # anything longer is not one of ours: refuse without hashing megabytes

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.String(80), primary_key=True),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("label", sa.String(80), nullable=False),
    sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    sa.Column("revoked_at_ms", sa.BigInteger, nullable=True),
    sa.CheckConstraint("scope IN ('admin', 'service')", name="ck_api_keys_scope"),
)


class Scope(StrEnum):
    admin = "admin"  # everything, including /v1/admin
    service = "service"  # accounts, transfers, history


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    scope: Scope
    label: str
    created_at_ms: int
    revoked_at_ms: int | None


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: str  # shown once
    info: ApiKey


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def split_key(key: str) -> str | None:
    """The key id of a well-formed key, else None."""
    if not key.isascii() or len(key) > KEY_LEN_MAX or not key.startswith(PREFIX):
        return None
    key_id, sep, secret = key[len(PREFIX) :].partition("_")
    if not sep or len(key_id) != KEY_ID_HEX or not secret:
        return None
    if any(c not in "0123456789abcdef" for c in key_id):
        return None
    return key_id


def _row(row: sa.Row[tuple[object, ...]]) -> ApiKey:
    m = row._mapping
    return ApiKey(
        str(m["key_id"]),
        Scope(m["scope"]),
        str(m["label"]),
        int(m["created_at_ms"]),
        None if m["revoked_at_ms"] is None else int(m["revoked_at_ms"]),
    )


class ApiKeyStore:
    def __init__(self, ledger: SqlLedger) -> None:
        self.ledger = ledger

    def create(self, scope: Scope | str, label: str = "") -> CreatedKey:
        try:
            scope = Scope(scope)
        except ValueError as exc:
            raise UsageError(f"scope must be admin or service, got {str(scope)[:20]!r}") from exc
        if len(label) > LABEL_LEN_MAX:
            raise UsageError(f"label must be at most {LABEL_LEN_MAX} characters")
        key_id = secrets.token_hex(KEY_ID_HEX // 2)
        key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        info = ApiKey(key_id, scope, label, now_ms(), None)
        with self.ledger.transaction(write=True) as conn:
            conn.execute(
                api_keys.insert().values(
                    key_id=key_id,
                    secret_sha256=_digest(key),
                    scope=scope.value,
                    label=label,
                    created_at_ms=info.created_at_ms,
                )
            )
        return CreatedKey(key, info)

    def verify(self, key: str) -> ApiKey | None:
        """The key's record when the key is valid and not revoked, else None."""
        key_id = split_key(key)
        if key_id is None:
            _digest("x" * 48)  # about the same work as a real check
            return None
        with self.ledger.transaction() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id)).first()
        expected = row._mapping["secret_sha256"] if row is not None else "0" * 64
        if not hmac.compare_digest(_digest(key), str(expected)) or row is None:
            return None
        info = _row(row)
        return info if info.revoked_at_ms is None else None

    def revoke(self, key_id: str) -> bool:
        with self.ledger.transaction(write=True) as conn:
            done = conn.execute(
                api_keys.update()
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at_ms.is_(None))
                .values(revoked_at_ms=now_ms())
            )
        return bool(done.rowcount)

    def list(self) -> list[ApiKey]:
        with self.ledger.transaction() as conn:
            rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.created_at_ms)).all()
        return [_row(r) for r in rows]

    def count_active(self, scope: Scope | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(api_keys)
        query = query.where(api_keys.c.revoked_at_ms.is_(None))
        if scope is not None:
            query = query.where(api_keys.c.scope == scope.value)
        with self.ledger.transaction() as conn:
            return int(conn.execute(query).scalar_one())
