"""Who is calling: an API key from the database, the operator's single token, or no one.

Three modes, by settings: open (no token, no keys: a loopback development install), the
single token (``PIXPIPE_API_TOKEN``: one tenant), and API keys (``PIXPIPE_API_KEYS=true``:
every call carries a key made with ``pixpipe keys create``; the single token, if also set,
acts as one more tenant, the operator's). A request belongs to the key that uploaded it and
every other key is told it does not exist.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from pixpipe.db.api_keys import ApiKey, ApiKeyStore, token_digest
from pixpipe.settings import AuthSettings

BEARER = "Bearer "
# A revoked key stops working within this long on every process.
_CACHE_SECONDS = 5.0
# Lookups remembered at most: wrong tokens sent in a flood must not grow memory.
_CACHE_ENTRIES = 10_000


@dataclass(frozen=True)
class Caller:
    """An authenticated caller; ``key`` None is the single-token or open tenant."""

    key: ApiKey | None = None

    @property
    def key_id(self) -> str | None:
        return None if self.key is None else self.key.id


OPERATOR = Caller()


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The token of an ``authorization: Bearer ...`` entry; empty when there is none."""
    for name, value in metadata or ():
        if name == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            return text[len(BEARER):] if text.startswith(BEARER) else ""
    return ""


class Authenticator:
    def __init__(self, *, api_token: str | None, keys: ApiKeyStore | None) -> None:
        self._api_token = api_token
        self._keys = keys
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    @classmethod
    def open(cls) -> Authenticator:
        """Every call is the operator's: a loopback development install."""
        return cls(api_token=None, keys=None)

    @property
    def keys(self) -> ApiKeyStore | None:
        return self._keys

    @property
    def required(self) -> bool:
        """Whether calls must carry a token at all."""
        return bool(self._api_token) or self._keys is not None

    async def authenticate(self, token: str) -> Caller | None:
        """The caller a token stands for; None when it stands for no one."""
        if not self.required:
            return OPERATOR
        if self._api_token and hmac.compare_digest(token.encode(), self._api_token.encode()):
            return OPERATOR
        if self._keys is None or not token:
            return None
        key = await self._lookup(token)
        return None if key is None else Caller(key)

    async def caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        """The caller of a call the interceptor let through."""
        caller = await self.authenticate(bearer_token(context.invocation_metadata()))
        if caller is None:  # revoked between the interceptor's look and this one
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API token")
        assert caller is not None
        return caller

    async def _lookup(self, token: str) -> ApiKey | None:
        assert self._keys is not None
        digest = token_digest(token)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        key = await self._keys.find_active(token)
        if len(self._cache) >= _CACHE_ENTRIES:
            self._cache.clear()
        self._cache[digest] = (now + _CACHE_SECONDS, key)
        return key


def authenticator_for(auth: AuthSettings, engine: AsyncEngine) -> Authenticator:
    return Authenticator(api_token=auth.api_token,
                         keys=ApiKeyStore(engine) if auth.api_keys else None)
