"""API-key authentication: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

401 for a missing or invalid key, 403 for a valid key without the scope; both are decided before
the route looks at its path or body, so neither says whether an account exists. Verified keys
are cached for ``ApiContext.key_cache_s`` (by the key's SHA-256, never the key itself)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from tally.api.context import ApiContext
from tally.api.problems import Problem
from tally.ledger.sql_api_keys import ApiKey, Scope

CACHE_ENTRIES_MAX = 1000

_bearer = HTTPBearer(auto_error=False, description="an API key from `tally apikey create`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the same API key")


class KeyCache:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, ApiKey]] = {}

    def get(self, digest: str) -> ApiKey | None:
        with self._lock:
            hit = self._entries.get(digest)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, digest: str, key: ApiKey) -> None:
        with self._lock:
            if len(self._entries) >= CACHE_ENTRIES_MAX:
                self._entries.clear()
            self._entries[digest] = (time.monotonic() + self.ttl_s, key)


def _context(request: Request) -> ApiContext:
    ctx = request.app.state.tally
    assert isinstance(ctx, ApiContext)
    return ctx


def _unauthenticated(detail: str) -> Problem:
    return Problem(401, "unauthenticated", detail, headers={"WWW-Authenticate": "Bearer"})


async def authenticate(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_header)],
) -> ApiKey:
    key = bearer.credentials if bearer is not None else header_key
    if not key:
        raise _unauthenticated("an API key is required (Authorization: Bearer <key>)")
    ctx = _context(request)
    cache: KeyCache = request.app.state.key_cache
    digest = hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()
    found = cache.get(digest)
    if found is None:
        # A SQL read, off the event loop; only on a cache miss (async dependencies cost no
        # thread hop, and every request passes here).
        found = await run_in_threadpool(ctx.keys.verify, key)
        if found is None:
            raise _unauthenticated("the API key is not valid")
        cache.put(digest, found)
    request.state.api_key_id = found.key_id
    return found


def require(scope: Scope) -> Callable[..., Awaitable[ApiKey]]:
    async def check(key: Annotated[ApiKey, Depends(authenticate)]) -> ApiKey:
        if scope is Scope.admin and key.scope is not Scope.admin:
            raise Problem(403, "forbidden", "this operation needs an admin key")
        return key

    return check


service_key = require(Scope.service)
admin_key = require(Scope.admin)
